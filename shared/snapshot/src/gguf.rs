//! Building a GGUF snapshot (`llama-gguf`, `qwen2-gguf`) from a GGUF file.
//!
//! - **Architecture:** `general.architecture` says which; llama.cpp's `llama` (Llama,
//!   Mistral, SmolLM2) and `qwen2` (Qwen2, Qwen2.5) are the ones thaw runs.
//! - **Weights:** F32, F16 and Q8_0 tensors are kept as they are. Other quantizations are
//!   dequantized and quantized again to Q8_0, which candle runs with SIMD kernels on x86
//!   (SmolLM2's shipped Q4_1 has none and runs about 3× slower). `dtype` converts every
//!   matrix to one type instead (norms and biases stay F32, as llama.cpp keeps them).
//! - **Tokenizer:** a `tokenizer.json` beside the GGUF (a Hugging Face folder) is copied.
//!   Otherwise the byte-level BPE the GGUF describes in its metadata is rebuilt, once:
//!   vocabulary and merges, the pre-tokenizer of `tokenizer.ggml.pre`, a byte-level decoder,
//!   and token types 3 (control) and 4 (user-defined) as special tokens.
//!
//! Tensors and metadata are written in name order, so the same input builds the same
//! bytes, and the same content address.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

use crate::build::{finish, invalid_input as invalid, BuildOptions};
use crate::meta::FORMAT_VERSION;
use crate::{Architecture, SnapshotError, SnapshotMeta, WeightDtype, GGUF_FILE, TOKENIZER_FILE};

/// llama.cpp architectures thaw runs, and their snapshot architecture.
const GGUF_ARCHITECTURES: [(&str, Architecture); 2] = [
    ("llama", Architecture::LlamaGguf),
    ("qwen2", Architecture::Qwen2Gguf),
];

/// Writes `model.gguf`, `tokenizer.json` and `snapshot.json` into `dir`.
pub(crate) fn write_snapshot(
    src: &Path,
    folder_tokenizer: Option<&Path>,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotMeta, SnapshotError> {
    let target = match opts.dtype {
        None => None,
        Some(WeightDtype::F32) => Some(GgmlDType::F32),
        Some(WeightDtype::F16) => Some(GgmlDType::F16),
        Some(WeightDtype::Q8_0) => Some(GgmlDType::Q8_0),
        Some(other) => {
            return Err(SnapshotError::InvalidBuild(format!(
                "GGUF snapshots are f32, f16 or q8_0; dtype {other:?} is not one"
            )))
        }
    };
    let file = File::open(src).map_err(|e| SnapshotError::io(src, e))?;
    // GGUF metadata is thousands of small reads: a BufReader makes them 8 to 18× faster.
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| invalid(src, e))?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let architecture = GGUF_ARCHITECTURES
        .iter()
        .find(|(n, _)| *n == arch)
        .map(|(_, a)| *a)
        .ok_or_else(|| SnapshotError::UnknownArchitecture {
            path: src.to_owned(),
            architecture: format!("general.architecture = {arch:?}"),
            known: GGUF_ARCHITECTURES.map(|(n, _)| n).join(", "),
        })?;
    if let Some(asked) = opts.architecture.filter(|a| *a != architecture) {
        return Err(SnapshotError::InvalidBuild(format!(
            "{} is a {} GGUF, not {}",
            src.display(),
            architecture.name(),
            asked.name()
        )));
    }

    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = if let Some(given) = folder_tokenizer {
        let t = Tokenizer::from_file(given).map_err(|e| invalid(given, e))?;
        check_vocabulary(&t, md).map_err(|e| invalid(given, e))?;
        std::fs::copy(given, &tokenizer_path).map_err(|e| SnapshotError::io(given, e))?;
        t
    } else {
        let t = tokenizer_from_metadata(md).map_err(|e| invalid(src, e))?;
        t.save(&tokenizer_path, false)
            .map_err(|e| invalid(&tokenizer_path, e))?;
        t
    };

    let cpu = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let q = content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| invalid(src, e))?;
        let dims = q.shape().dims().to_vec();
        let matrix = dims.len() == 2;
        let to = match target {
            // Norms and biases stay as they are; block types need whole 32-value blocks.
            Some(GgmlDType::Q8_0) if !matrix || dims[1] % 32 != 0 => None,
            Some(t) if matrix => Some(t),
            Some(_) => None,
            None if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8_0) => None,
            None if dims.last().is_some_and(|d| d % 32 == 0) => Some(GgmlDType::Q8_0),
            None => Some(GgmlDType::F32),
        };
        let q = match to {
            Some(t) if t != q.dtype() => {
                let dense = q.dequantize(&cpu).map_err(|e| invalid(src, e))?;
                QTensor::quantize(&dense, t).map_err(|e| invalid(src, e))?
            }
            _ => q,
        };
        tensors.push((name.clone(), q));
    }
    let dtype = weights_dtype(&tensors);
    let mut keys: Vec<&String> = md.keys().collect();
    keys.sort();
    let file_type = gguf_file::Value::U32(match dtype {
        WeightDtype::F32 => 0,
        WeightDtype::F16 => 1,
        _ => 7,
    });
    let metadata: Vec<(&str, &gguf_file::Value)> = keys
        .into_iter()
        .map(|k| {
            let v = if k == "general.file_type" {
                &file_type
            } else {
                &md[k]
            };
            (k.as_str(), v)
        })
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let out_path = dir.join(GGUF_FILE);
    let out = File::create(&out_path).map_err(|e| SnapshotError::io(&out_path, e))?;
    let mut out = BufWriter::new(out);
    gguf_file::write(&mut out, &metadata, &tensor_refs).map_err(|e| invalid(&out_path, e))?;
    out.flush().map_err(|e| SnapshotError::io(&out_path, e))?;
    out.get_ref()
        .sync_all()
        .map_err(|e| SnapshotError::io(&out_path, e))?;

    let get_u32 = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let context = get_u32(&format!("{arch}.context_length")).unwrap_or(2048);
    let model_config = json!({
        "architecture": arch,
        "context_length": context,
        "embedding_length": get_u32(&format!("{arch}.embedding_length")),
        "block_count": get_u32(&format!("{arch}.block_count")),
        "vocab_size": tokenizer.get_vocab_size(true),
        "bos_token_id": get_u32("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get_u32("tokenizer.ggml.eos_token_id"),
        "has_chat_template": md.contains_key("tokenizer.chat_template"),
        "source_file": src.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        architecture,
        dtype,
        model_config,
        pooling: None,
        normalize: false,
        dense: None,
        max_seq_length: context as usize,
        source: opts.source.clone(),
        files: Vec::new(),
    };
    finish(dir, meta, &[GGUF_FILE, TOKENIZER_FILE])
}

/// The dtype most of the model's matrices are in: what the snapshot is, for its
/// metadata and `general.file_type`.
fn weights_dtype(tensors: &[(String, QTensor)]) -> WeightDtype {
    let mut counts = [0usize; 3];
    for (_, t) in tensors.iter().filter(|(_, t)| t.shape().dims().len() == 2) {
        match t.dtype() {
            GgmlDType::F32 => counts[0] += 1,
            GgmlDType::F16 => counts[1] += 1,
            _ => counts[2] += 1,
        }
    }
    let most = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map_or(2, |(i, _)| i);
    [WeightDtype::F32, WeightDtype::F16, WeightDtype::Q8_0][most]
}

/// Refuses a tokenizer.json whose vocabulary is not the GGUF's: every id it has must name
/// the token the GGUF's `tokenizer.ggml.tokens` gives that id (the GGUF may pad past it).
fn check_vocabulary(
    tokenizer: &Tokenizer,
    md: &HashMap<String, gguf_file::Value>,
) -> Result<(), String> {
    let tokens = md
        .get("tokenizer.ggml.tokens")
        .ok_or("no tokenizer.ggml.tokens in the GGUF metadata")?
        .to_vec()
        .map_err(|e| e.to_string())?;
    let size = tokenizer.get_vocab_size(true);
    if size > tokens.len() {
        return Err(format!(
            "the tokenizer has {size} tokens, the GGUF's vocabulary {}",
            tokens.len()
        ));
    }
    for (id, token) in tokens.iter().enumerate().take(size) {
        let want = token.to_string().map_err(|e| e.to_string())?;
        let got = tokenizer.id_to_token(id as u32);
        if got.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "token {id} is {got:?} in tokenizer.json and {want:?} in the GGUF: not this model's tokenizer"
            ));
        }
    }
    Ok(())
}

/// Rebuilds the byte-level BPE tokenizer a GGUF file describes in its metadata.
fn tokenizer_from_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Tokenizer, String> {
    let strings = |key: &str| -> Result<Vec<String>, String> {
        let values = md
            .get(key)
            .ok_or_else(|| format!("no {key} in the GGUF metadata"))?
            .to_vec()
            .map_err(|e| format!("{key}: {e}"))?;
        values
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| format!("{key}: {e}")))
            .collect()
    };
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
        ));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| format!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<_, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map_or("default", String::as_str);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, String> {
        let split = Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| e.to_string())?;
        Ok(PreTokenizerWrapper::Split(split))
    };
    let pre_tokenizer = match pre {
        // SmolLM2: digits one by one, then GPT-2's byte-level split.
        "smollm" | "default" => vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ],
        // Qwen2 and Llama 3 split with their own regex, then map bytes without GPT-2's.
        "qwen2" | "llama-bpe" => {
            if pre == "qwen2" {
                tokenizer
                    .with_normalizer(Some(NFC))
                    .map_err(|e| e.to_string())?;
            }
            let digits = if pre == "qwen2" { r"\p{N}" } else { r"\p{N}{1,3}" };
            vec![
                split(&format!(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ))?,
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
            ]
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.pre = {other:?} is not a pre-tokenizer thaw rebuilds (smollm, qwen2, llama-bpe); \
                 put the model's tokenizer.json beside the GGUF file"
            ))
        }
    };
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(
        pre_tokenizer,
    ))));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}
