//! thaw's model snapshots: a verified directory that a cold start maps instead of
//! downloading or converting a model.
//!
//! A snapshot is a directory holding `snapshot.json` ([`SnapshotMeta`]), the weights
//! (`model.safetensors`, or `model.gguf` for quantized LLMs) and `tokenizer.json`. Its life:
//!
//! 1. [`build::build`] makes one from a Hugging Face model folder, converting the dtype.
//! 2. [`cache::SnapshotCache::insert`] verifies every file's sha256 **once** and moves the
//!    snapshot into a content-addressed cache. Everything is written under a temporary name
//!    and renamed, so nothing half-written is ever visible.
//! 3. [`serving::Snapshots::ready`] is how `thaw serve` finds a snapshot: in the cache,
//!    or pulled from a store, and verified again **once per process** before the first
//!    instance maps it, since a file on disk can change after it entered the cache.
//! 4. [`restore::restore`] is the cold-start path: read `snapshot.json`, check file sizes,
//!    mmap the weights. It never hashes: the cache and the serving process already did.

pub mod build;
pub mod cache;
mod digest;
mod error;
mod gguf;
pub mod meta;
mod modules;
mod quantize;
pub mod recipe;
pub mod restore;
pub mod s3;
pub mod serving;
mod wordfreq;

pub use error::SnapshotError;
pub use meta::{
    Architecture, Dense, DenseActivation, FileEntry, Pooling, Role, SnapshotMeta, Source,
    WeightDtype,
};
pub use restore::{restore, RestoredSnapshot};

/// The metadata file's name inside a snapshot directory.
pub const META_FILE: &str = "snapshot.json";
/// The safetensors weights file's name.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The GGUF weights file's name.
pub const GGUF_FILE: &str = "model.gguf";
/// The word-frequency table's name.
pub const WORDS_FILE: &str = "words.tsv";
/// The tokenizer file's name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Verifies every file of the snapshot at `dir` against its recorded size and sha256.
///
/// This reads every byte; use it when a snapshot enters a cache, not on a cold start.
pub fn verify(dir: &std::path::Path) -> Result<SnapshotMeta, SnapshotError> {
    let meta = SnapshotMeta::read(dir)?;
    for file in &meta.files {
        digest::verify_file(dir, file)?;
    }
    restore::check_weights_header(dir, &meta)?;
    Ok(meta)
}
