//! Tokenizer loading with the padding and truncation thaw needs.

use std::path::Path;

use tokenizers::{PaddingParams, Tokenizer, TruncationParams, TruncationStrategy};

use crate::ModelError;

/// Loads `tokenizer.json` and overrides its padding and truncation; returns the tokenizer
/// and the id of its padding token.
///
/// The tokenizer itself does not pad: the encoder sorts a request's texts by length and
/// pads each forward-pass chunk to its own longest member (BatchLongest per chunk), so a
/// short text never pays for a long neighbour. Truncation is at `max_seq_length`: MiniLM's tokenizer.json says 128, but the model was
/// trained to 256, and keeping the file's value would silently drop tokens 129 to 256.
pub fn load_tokenizer(path: &Path, max_seq_length: usize) -> Result<(Tokenizer, u32), ModelError> {
    load_tokenizer_truncating(path, max_seq_length, TruncationStrategy::LongestFirst)
}

/// As [`load_tokenizer`], with a truncation strategy: a cross-encoder cuts only the
/// passage of a (query, passage) pair (`OnlySecond`).
pub fn load_tokenizer_truncating(
    path: &Path,
    max_seq_length: usize,
    strategy: TruncationStrategy,
) -> Result<(Tokenizer, u32), ModelError> {
    let err = |reason: String| ModelError::Tokenizer {
        path: path.to_owned(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    let pad = tokenizer.get_padding().cloned().unwrap_or_else(|| {
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        PaddingParams {
            pad_id,
            pad_token: "[PAD]".into(),
            ..PaddingParams::default()
        }
    });
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_seq_length,
            strategy,
            stride: 0,
            ..TruncationParams::default()
        }))
        .map_err(|e| err(e.to_string()))?;
    Ok((tokenizer, pad.pad_id))
}
