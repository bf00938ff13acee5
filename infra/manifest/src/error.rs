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
    /// A numeric setting is outside the range thaw accepts (see [`crate::limits`]).
    #[error("function {function:?}: {key} = {value} is {limit}{}", at_line(*.line))]
    OutOfRange {
        /// The function.
        function: String,
        /// The key, such as `max_containers` or `batch.max_size`.
        key: &'static str,
        /// The value, as the manifest writes it.
        value: String,
        /// The bound it breaks.
        limit: Limit,
        /// The line the key is on, when the manifest was parsed from text.
        line: Option<usize>,
    },
    /// `min_containers` is greater than `max_containers`.
    #[error(
        "function {function:?}: min_containers ({min}) is greater than max_containers ({max}){}",
        at_line(*.line)
    )]
    MinOverMax {
        /// The function.
        function: String,
        /// `min_containers`.
        min: u32,
        /// `max_containers`.
        max: u32,
        /// The line of `min_containers`, when the manifest was parsed from text.
        line: Option<usize>,
    },
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
    /// `[routes]` names a function the manifest does not declare.
    #[error("[routes] {route} = {function:?}: the manifest declares no such function")]
    UnknownRouteTarget {
        /// The route family.
        route: &'static str,
        /// The function it names.
        function: String,
    },
    /// A `command`'s program was not found, or cannot be executed.
    #[error("function {function:?}: command program {program:?} not found: {looked}")]
    ProgramNotFound {
        /// The function.
        function: String,
        /// The program, as the manifest writes it.
        program: String,
        /// Where it was looked for, and why it did not do.
        looked: String,
    },
    /// A `command`'s working directory does not exist.
    #[error("function {function:?}: workdir {path} is not a directory")]
    WorkdirNotFound {
        /// The function.
        function: String,
        /// The directory, as resolved from the manifest's.
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
    /// A function's snapshot could not be found (the [`crate::SnapshotLookup`] said why).
    #[error("function {function:?}: {source}")]
    Snapshot {
        /// The function.
        function: String,
        /// The lookup's error.
        source: crate::plan::LookupError,
    },
}

/// The bound a setting breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// Under this minimum.
    Minimum(String),
    /// Over this maximum.
    Maximum(String),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Minimum(min) => write!(f, "under the minimum of {min}"),
            Self::Maximum(max) => write!(f, "over the maximum of {max}"),
        }
    }
}

/// `" (line N)"`, or nothing for a manifest built in code.
fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}
