//! The cold-start path: read `snapshot.json`, check sizes, map the weights.
//!
//! Digests were verified when the snapshot entered the cache, so nothing here hashes.
//! Sizes are checked (one `stat` per file), which catches a truncated file for free, and
//! the safetensors header is parsed, which catches a corrupt header before a model tries.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::meta::WeightDtype;
use crate::{
    Architecture, SnapshotError, SnapshotMeta, GGUF_FILE, SAFETENSORS_FILE, TOKENIZER_FILE,
    WORDS_FILE,
};

/// A snapshot ready to build a model from: metadata plus the weights mapped into memory.
#[derive(Debug)]
pub struct RestoredSnapshot {
    /// The parsed `snapshot.json`.
    pub meta: SnapshotMeta,
    /// The snapshot directory.
    pub dir: PathBuf,
    weights: Mmap,
    weights_file: &'static str,
}

impl RestoredSnapshot {
    /// The weights file's bytes, straight from the mapping.
    pub fn weights(&self) -> &[u8] {
        &self.weights
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(self.weights_file)
    }

    /// Path of `tokenizer.json`, if the snapshot has one.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.meta
            .file(TOKENIZER_FILE)
            .map(|f| self.dir.join(&f.path))
    }

    /// Path of any other file the snapshot records.
    pub fn file_path(&self, name: &str) -> Option<PathBuf> {
        self.meta.file(name).map(|f| self.dir.join(&f.path))
    }
}

/// The weights file an architecture uses.
pub fn weights_file(meta: &SnapshotMeta) -> &'static str {
    match (meta.architecture, meta.dtype) {
        (Architecture::WordFrequencies, _) => WORDS_FILE,
        (a, _) if a.is_gguf() => GGUF_FILE,
        (_, WeightDtype::Q8_0) => GGUF_FILE,
        _ => SAFETENSORS_FILE,
    }
}

/// Restores the snapshot at `dir`: the cheap checks, then the mapping.
pub fn restore(dir: &Path) -> Result<RestoredSnapshot, SnapshotError> {
    let meta = SnapshotMeta::read(dir)?;
    for entry in &meta.files {
        let path = dir.join(&entry.path);
        let actual = std::fs::metadata(&path)
            .map_err(|e| SnapshotError::io(&path, e))?
            .len();
        if actual != entry.bytes {
            return Err(SnapshotError::SizeMismatch {
                path,
                expected: entry.bytes,
                actual,
            });
        }
    }
    let weights_file = weights_file(&meta);
    if meta.file(weights_file).is_none() {
        return Err(SnapshotError::MissingFile {
            path: dir.join(weights_file),
        });
    }
    let weights = map_file(&dir.join(weights_file))?;
    if weights_file == SAFETENSORS_FILE {
        check_safetensors(&weights, &dir.join(weights_file))?;
    }
    Ok(RestoredSnapshot {
        meta,
        dir: dir.to_owned(),
        weights,
        weights_file,
    })
}

/// Parses the weights file's header, for [`crate::verify`].
pub(crate) fn check_weights_header(dir: &Path, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
    if weights_file(meta) != SAFETENSORS_FILE {
        return Ok(());
    }
    let path = dir.join(SAFETENSORS_FILE);
    let map = map_file(&path)?;
    check_safetensors(&map, &path)
}

fn check_safetensors(bytes: &[u8], path: &Path) -> Result<(), SnapshotError> {
    safetensors::SafeTensors::read_metadata(bytes)
        .map(|_| ())
        .map_err(|e| SnapshotError::InvalidSafetensors {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Maps a file read-only, asking the kernel to fault it in up front so that the model's
/// copy out of the mapping does not stall on one page fault per 4 KiB.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, SnapshotError> {
    let file = std::fs::File::open(path).map_err(|e| SnapshotError::io(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. Snapshot files live in
    // thaw's content-addressed cache, where they are written once under a temporary name,
    // renamed into place and never modified again; a cache entry is only ever replaced by
    // renaming a whole new directory over the name, which leaves this open inode intact.
    // So the bytes behind the mapping cannot change while it is alive.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) };
    map.map_err(|e| SnapshotError::io(path, e))
}
