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
    /// A prompt fills the model's context, leaving no room to generate.
    #[error("the prompt has {tokens} tokens; the model's context holds {context}, prompt and reply together")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The chat template refused the conversation, or the model has none.
    #[error("chat template: {0}")]
    Template(String),
    /// The model's chat template failed on its own account (a bug in the template, or it
    /// ran past its work bound).
    #[error("the model's chat template failed: {0}")]
    TemplateFailed(String),
    /// The manifest requires a GPU this instance cannot use.
    #[error("the function needs a {wanted} GPU (gpu_required = true), but {reason}")]
    NoGpu {
        /// What the manifest asked for.
        wanted: String,
        /// Why it is not available.
        reason: String,
    },
    /// candle failed while building or running the model.
    #[error("snapshot {name:?} has unusable weights: {reason}")]
    InvalidWeights {
        /// The snapshot.
        name: String,
        /// What is missing or mis-shaped.
        reason: String,
    },
    #[error("input {index} cannot be encoded: {reason}")]
    BadInput {
        /// Its position in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Whether the caller's input caused this (too long, untokenizable), as opposed to the
    /// model or its snapshot.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::InputTooLong { .. }
                | Self::Tokenize(_)
                | Self::PromptTooLong { .. }
                | Self::Template(_)
        )
    }
}

/// Refuses a snapshot of another architecture than `expected`.
pub(crate) fn expect_architecture(
    meta: &thaw_snapshot::SnapshotMeta,
    expected: thaw_snapshot::Architecture,
    expected_name: &'static str,
) -> Result<(), ModelError> {
    if meta.architecture == expected {
        return Ok(());
    }
    Err(ModelError::WrongArchitecture {
        name: meta.name.clone(),
        found: meta.architecture,
        expected: expected_name,
    })
}

/// The snapshot's `tokenizer.json`, or the error naming where it should be.
pub(crate) fn tokenizer_path(
    snapshot: &thaw_snapshot::RestoredSnapshot,
) -> Result<std::path::PathBuf, ModelError> {
    snapshot.tokenizer_path().ok_or_else(|| {
        ModelError::Snapshot(thaw_snapshot::SnapshotError::MissingFile {
            path: snapshot.dir.join(thaw_snapshot::TOKENIZER_FILE),
        })
    })
}
