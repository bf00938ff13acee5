//! Building a `llama-gguf` snapshot from a GGUF file.
//!
//! - **Re-quantization:** every quantized tensor is dequantized and quantized again to
//!   Q8_0, which candle runs with SIMD kernels on x86 (SmolLM2's shipped Q4_1 has none and
//!   runs about 3× slower). Float tensors (norms) are kept.
//! - **Tokenizer:** GGUF carries its tokenizer as metadata; it is rebuilt here, once, as a
//!   `tokenizer.json`: byte-level BPE from `tokenizer.ggml.tokens` and `.merges`, digits
//!   split one by one before the byte-level split, a byte-level decoder, and token types 3
//!   (control) and 4 (user-defined) as special tokens.
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
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::build::{finish, invalid_input as invalid, BuildOptions};
use crate::meta::FORMAT_VERSION;
use crate::{Architecture, SnapshotError, SnapshotMeta, WeightDtype, GGUF_FILE, TOKENIZER_FILE};

/// `general.file_type` for "mostly Q8_0".
const FILE_TYPE_Q8_0: u32 = 7;

/// Writes `model.gguf`, `tokenizer.json` and `snapshot.json` into `dir`.
pub(crate) fn write_snapshot(
    src: &Path,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotMeta, SnapshotError> {
    if opts.dtype != WeightDtype::Q8_0 {
        return Err(SnapshotError::InvalidBuild(format!(
            "llama-gguf snapshots are re-quantized to q8_0; dtype {:?} is not supported",
            opts.dtype
        )));
    }
    let file = File::open(src).map_err(|e| SnapshotError::io(src, e))?;
    // GGUF metadata is thousands of small reads: a BufReader makes them 8 to 18× faster.
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| invalid(src, e))?;
    let md = &content.metadata;

    let tokenizer = tokenizer_from_metadata(md).map_err(|e| invalid(src, e))?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| invalid(&tokenizer_path, e))?;

    let cpu = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let q = content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| invalid(src, e))?;
        let requantize = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8_0)
            && q.shape().dims().last().is_some_and(|d| d % 32 == 0);
        let q = if requantize {
            let dense = q.dequantize(&cpu).map_err(|e| invalid(src, e))?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(|e| invalid(src, e))?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let mut keys: Vec<&String> = md.keys().collect();
    keys.sort();
    let file_type = gguf_file::Value::U32(FILE_TYPE_Q8_0);
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

    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "llama".into());
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
        "source_file": src.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        architecture: Architecture::LlamaGguf,
        dtype: WeightDtype::Q8_0,
        model_config,
        pooling: None,
        normalize: false,
        max_seq_length: context as usize,
        source: opts.source.clone(),
        files: Vec::new(),
    };
    finish(dir, meta, &[GGUF_FILE, TOKENIZER_FILE])
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
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]))));
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
