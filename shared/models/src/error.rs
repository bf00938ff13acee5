use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The snapshot could not be restored.
    #[error(transparent)]
    Snapshot(#[from] thaw_snapshot::SnapshotError),
    /// The snapshot holds a different kind of model than the caller needs.
    #[error("snapshot {name:?} is a {found:?} model, expected {expected}")]
    WrongArchitecture {
        /// Snapshot name.
        name: String,
        /// What it holds.
        found: thaw_snapshot::Architecture,
        /// What was needed.
        expected: &'static str,
    },
    /// snapshot.json's model_config does not describe a model this crate can build.
    #[error("invalid model config in snapshot {name:?}: {reason}")]
    InvalidConfig {
        /// Snapshot name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        reason: String,
    },
    /// Tokenising an input failed.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// An input is longer than the model takes and truncation was refused.
    #[error("input {index} has {tokens} tokens, more than the model's max_seq_length {max}; pass \"truncate\": true to cut it")]
    InputTooLong {
        /// Position of the input in the request.
        index: usize,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// candle failed while building or running the model.
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Whether the caller's input caused this (too long, untokenizable), as opposed to the
    /// model or its snapshot.
    pub fn is_input_error(&self) -> bool {
        matches!(self, Self::InputTooLong { .. } | Self::Tokenize(_))
    }
}
