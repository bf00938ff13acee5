use std::path::PathBuf;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or schema error; the message names the key, line and column.
    #[error("{0}")]
    Parse(String),
    /// A semantic rule failed.
    #[error("function {function:?}: {message}")]
    Invalid {
        /// The function.
        function: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest declares no function.
    #[error("the manifest declares no [function.*]")]
    NoFunctions,
    /// A function's binary was not found.
    #[error(
        "function {function:?}: binary {binary:?} not found at {path} (build it with `make build`)"
    )]
    BinaryNotFound {
        /// The function.
        function: String,
        /// The binary name.
        binary: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A volume's host directory does not exist or is not a directory.
    #[error(
        "function {function:?}: volume {sandbox:?}: host path {} does not exist or is not a directory",
        host.display()
    )]
    VolumeNotADirectory {
        /// The function.
        function: String,
        /// The path inside the sandbox.
        sandbox: String,
        /// The host path.
        host: PathBuf,
    },
    /// A function's snapshot is not in the cache.
    #[error("function {function:?}: {source}")]
    Snapshot {
        /// The function.
        function: String,
        /// The snapshot error.
        source: thaw_snapshot::SnapshotError,
    },
}
