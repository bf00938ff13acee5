use std::path::PathBuf;

/// Everything that can go wrong with a snapshot. Each variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file the snapshot needs does not exist.
    #[error("snapshot file missing: {path}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file's content does not match the sha256 recorded in snapshot.json.
    #[error("digest mismatch for {path}: snapshot.json records sha256 {expected}, the file has {actual}")]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The recorded digest.
        expected: String,
        /// The digest of the bytes on disk.
        actual: String,
    },
    /// The snapshot store (S3) failed or could not be reached.
    #[error("snapshot store {url}: {reason}")]
    Store {
        /// The object or store URL.
        url: String,
        /// What went wrong, after the retries.
        reason: String,
    },
    /// A file is shorter or longer than snapshot.json records.
    #[error(
        "size mismatch for {path}: snapshot.json records {expected} bytes, the file has {actual}"
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Recorded size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The safetensors file is cut short or its header is corrupt.
    #[error("truncated or corrupt safetensors file {path}: {reason}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// snapshot.json names an architecture thaw cannot build.
    #[error("unknown architecture {architecture:?} in {path}; known: {known}")]
    UnknownArchitecture {
        /// snapshot.json, or the model's config.json.
        path: PathBuf,
        /// The name found.
        architecture: String,
        /// The names thaw knows.
        known: String,
    },
    /// A JSON file could not be parsed.
    #[error("malformed JSON in {path}: {reason}")]
    MalformedJson {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// snapshot.json's format version is not one this build reads.
    #[error(
        "unsupported snapshot format version {found} in {path} (this build reads {supported})"
    )]
    UnsupportedFormat {
        /// snapshot.json.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A recipe or build option is invalid.
    #[error("invalid snapshot build: {0}")]
    InvalidBuild(String),
    /// A name is not usable as a snapshot name.
    #[error("invalid snapshot name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// The cache holds no snapshot of this name.
    #[error("no snapshot named {name:?} in cache {cache}")]
    NotInCache {
        /// The requested name.
        name: String,
        /// The cache root.
        cache: PathBuf,
    },
    /// A cached snapshot failed the check a serving process makes before first use;
    /// the source names the file.
    #[error(
        "snapshot {name:?} failed verification and is not served: {source}; remove {} and \
         build or pull the snapshot again",
        dir.display()
    )]
    FailedVerification {
        /// The snapshot's name.
        name: String,
        /// Its object directory in the cache.
        dir: PathBuf,
        /// What was wrong, naming the file.
        source: std::sync::Arc<SnapshotError>,
    },
    /// An I/O error on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return Self::MissingFile { path: path.into() };
        }
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
