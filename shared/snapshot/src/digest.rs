//! sha256 of files, streamed so a large weights file never sits in memory twice.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{FileEntry, SnapshotError};

/// sha256 of a file's content, as lower-case hex.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), SnapshotError> {
    let mut file = std::fs::File::open(path).map_err(|e| SnapshotError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| SnapshotError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// sha256 of bytes, as lower-case hex.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks one file's size, then its digest.
pub(crate) fn verify_file(dir: &Path, entry: &FileEntry) -> Result<(), SnapshotError> {
    let path = dir.join(&entry.path);
    let size = std::fs::metadata(&path)
        .map_err(|e| SnapshotError::io(&path, e))?
        .len();
    if size != entry.bytes {
        return Err(SnapshotError::SizeMismatch {
            path,
            expected: entry.bytes,
            actual: size,
        });
    }
    let (actual, _) = sha256_file(&path)?;
    if actual != entry.sha256 {
        return Err(SnapshotError::DigestMismatch {
            path,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(())
}
