//! The TOML schema. Every struct denies unknown fields; [`crate::validate`] holds the
//! rules the types cannot express.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::gpu::Gpu;
use crate::lines::KeyLines;
use crate::units::{ByteSize, Duration};
use crate::ManifestError;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[app]`.
    pub app: App,
    /// `[function.<name>]`, by name.
    #[serde(default)]
    pub function: BTreeMap<FunctionName, FunctionSpec>,
    /// `[routes]`: the functions behind the OpenAI-, TEI- and Cohere-compatible routes.
    #[serde(default, skip_serializing_if = "Routes::is_empty")]
    pub routes: Routes,
    /// Where each function key was written, for errors found after parsing.
    #[serde(skip)]
    pub(crate) lines: KeyLines,
}

/// `[routes]`: which function answers each family of compatible routes. A route family
/// left out goes to the function named like it (`embed`, `rerank`, `generate`) if there is one, and
/// answers 404 otherwise. A request's `model` may still name any other function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// OpenAI `POST /v1/embeddings` (when `model` names no function or snapshot), and
    /// TEI `POST /embed` and `GET /info`: a function with `embed`'s contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<FunctionName>,
    /// TEI `POST /rerank` and Cohere/Jina `POST /v1/rerank`: a function with `rerank`'s
    /// contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<FunctionName>,
    /// OpenAI `POST /v1/chat/completions`: a function with `generate`'s contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<FunctionName>,
}

impl Routes {
    fn is_empty(&self) -> bool {
        self.embeddings.is_none() && self.rerank.is_none() && self.chat.is_none()
    }
}

/// `[app]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The application's name, used in deploy stacks.
    pub name: String,
    /// Regions to render one stack each for; functions may override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Where snapshots missing from the local cache are pulled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_store: Option<SnapshotStore>,
}

/// `[app] snapshot_store = { url = "s3://bucket/prefix", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotStore {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint; AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Path-style addressing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_path_style: bool,
    /// The region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A validated function name: lower-case letters, digits and '-', starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FunctionName(String);

impl FunctionName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, String> {
        let ok = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!("invalid function name {name:?}: use a-z, 0-9 and '-', starting with a letter, at most 64"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FunctionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// `[function.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// The cargo bin name of the function, found in the binary directory. Either this
    /// or `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Any program and its arguments, for functions in other languages:
    /// `["python3", "-m", "awslambdaric", "handler.fn"]`. The program is a name looked up
    /// on `PATH`, or a path (relative ones from `workdir`). Either this or `binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Where `command` runs, bound read-only into its sandbox; relative to the manifest's
    /// directory, which is the default. Only with `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The snapshot the function restores, by name (`THAW_SNAPSHOT_DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Further snapshots by role, for functions with several models: role `llm` reaches
    /// the function as `THAW_SNAPSHOT_DIR_LLM`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, String>,
    /// Instances kept warm; 0 scales to zero.
    #[serde(default)]
    pub min_containers: u32,
    /// Hard cap on instances.
    #[serde(default = "defaults::max_containers")]
    pub max_containers: u32,
    /// Inputs in flight per instance.
    #[serde(default = "defaults::one")]
    pub concurrency: u32,
    /// Idle this long, an instance is stopped.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Per attempt; past it the instance is killed and the caller gets 504.
    #[serde(default = "defaults::timeout")]
    pub timeout: Duration,
    /// Longest an instance may take to reach its first `next`.
    #[serde(default = "defaults::timeout")]
    pub startup_timeout: Duration,
    /// Queued calls beyond this get 429.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: u32,
    /// Retries for spawned, mapped and Event calls after a crash, timeout, init failure
    /// or retryable function error. A function's typed input error is never retried.
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry; each later retry waits twice as long (at most 5 min).
    #[serde(default = "defaults::retry_backoff")]
    pub retry_backoff: Duration,
    /// How long a spawned, mapped or Event call's result is kept; a later get says expired.
    #[serde(default = "defaults::result_ttl")]
    pub result_ttl: Duration,
    /// Memory plus swap for each instance, enforced by a cgroup; rendered for deploys.
    #[serde(default = "defaults::memory")]
    pub memory: ByteSize,
    /// CPU cores each instance may use, enforced as a cgroup CPU quota (`0.5`, `1`, `2`);
    /// unset, an instance may use every core. Rendered for Knative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// The most processes and threads each instance may have (the cgroup's `pids.max`).
    #[serde(default = "defaults::pids")]
    pub pids: u32,
    /// Size of each instance's private writable `/tmp`, a tmpfs (which counts against
    /// `memory`). Rendered as Lambda's ephemeral storage and Knative's
    /// `ephemeral-storage` limit.
    #[serde(default = "defaults::tmp")]
    pub tmp: ByteSize,
    /// What each instance may reach over the network.
    #[serde(default)]
    pub network: Network,
    /// Host directories mounted read-write into each instance, by sandbox path:
    /// `{ "/mnt/data" = "/srv/data" }`. Only `thaw serve` mounts them; deploys warn.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
    /// GPU type and count.
    #[serde(default)]
    pub gpu: Gpu,
    /// Refuse to start on a machine without the GPU, rather than fall back to the CPU.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpu_required: bool,
    /// Base image for deploy targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Per-function regions, overriding `[app] regions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Dynamic batching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// Function URL settings.
    #[serde(default)]
    pub url: UrlConfig,
    /// Warm templates (`thaw serve` only): load the model once into a template process
    /// and fork each new instance from it, sharing its weights copy-on-write. Default: on
    /// for a `binary` with a snapshot and no GPU (CUDA state cannot be forked); `true` on
    /// a GPU function is an error. Deploy targets have no templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<bool>,
    /// Extra environment for the function's processes. Names thaw sets itself
    /// (`AWS_LAMBDA_*`, `THAW_*`) and loader variables (`LD_*`, `GCONV_PATH`) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<EnvName, String>,
}

/// `network = "none" | "outbound"`: what an instance may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The instance has its own network namespace with only loopback: it can reach
    /// nothing outside itself (its Runtime API is handed to it by thaw).
    #[default]
    None,
    /// The instance may also open outbound connections (to S3, a database, an API).
    Outbound,
}

/// A validated `env` key: not empty, no `=` or NUL, and not one thaw reserves
/// (`AWS_LAMBDA_*`, `THAW_*`, `LD_*`, `GCONV_PATH`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvName(String);

impl EnvName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "env key {name:?} is not a valid variable name: it may not be empty or contain '=' or NUL"
            ));
        }
        // LD_* (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...) and GCONV_PATH make the
        // dynamic loader or libc load code of the caller's choosing.
        let reserved = name.starts_with("LD_")
            || name == "GCONV_PATH"
            || name.starts_with("AWS_LAMBDA_")
            || name.starts_with("THAW_");
        if reserved {
            return Err(format!(
                "env key {name:?} is reserved: thaw sets AWS_LAMBDA_* and THAW_* itself, \
                 and LD_* or GCONV_PATH could change what the sandbox runs"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EnvName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<OsStr> for EnvName {
    fn as_ref(&self) -> &OsStr {
        OsStr::new(&self.0)
    }
}

impl std::borrow::Borrow<str> for EnvName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Top-level directories a volume may not be mounted over or under: the sandbox's own
/// mounts and the system it runs.
const RESERVED_MOUNTS: [&str; 12] = [
    "proc", "dev", "sys", "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "tmp",
];

/// Why a volume's paths are refused, if they are.
pub(crate) fn volume_error(sandbox: &str, host: &str) -> Option<String> {
    let clean = |p: &str| {
        Path::new(p).is_absolute()
            && !p.contains('\0')
            && !Path::new(p).components().any(|c| c == Component::ParentDir)
    };
    if !clean(sandbox) {
        return Some(format!(
            "volume {sandbox:?}: the sandbox path must be absolute, without '..'"
        ));
    }
    if !clean(host) {
        return Some(format!(
            "volume {sandbox:?}: the host path {host:?} must be absolute, without '..'"
        ));
    }
    let first = Path::new(sandbox).components().find_map(|c| match c {
        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    });
    match first {
        None => Some(format!(
            "volume {sandbox:?}: cannot mount over the sandbox's /; use a path such as /mnt/data"
        )),
        Some(top) if RESERVED_MOUNTS.contains(&top.as_str()) => Some(format!(
            "volume {sandbox:?}: the sandbox path may not be, nor lie under, /{top} (reserved: \
             /proc, /dev, /sys, /usr, /etc, /bin, /sbin, /lib, /lib32, /lib64, /libx32, /tmp); use /mnt/... instead"
        )),
        Some(_) => None,
    }
}

/// `batch = { max_size, wait }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Most events per batch.
    pub max_size: u32,
    /// Longest a partial batch is held for company (default 0: never).
    #[serde(default)]
    pub wait: Duration,
}

/// `url = { auth = "none" | "token" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    /// Who may call the function URL.
    #[serde(default)]
    pub auth: UrlAuth,
}

/// Function URL authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UrlAuth {
    /// Anyone.
    #[default]
    None,
    /// A bearer token (`THAW_URL_TOKEN`).
    Token,
}

mod defaults {
    use crate::units::{ByteSize, Duration};
    pub(super) fn max_containers() -> u32 {
        4
    }
    pub(super) fn one() -> u32 {
        1
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn max_queue() -> u32 {
        1000
    }
    pub(super) fn memory() -> ByteSize {
        ByteSize(1 << 30)
    }
    pub(super) fn tmp() -> ByteSize {
        ByteSize(512 << 20)
    }
    pub(super) fn pids() -> u32 {
        1024
    }
    pub(super) fn retry_backoff() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn result_ttl() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

impl Manifest {
    /// Reads and parses a manifest file, then validates it.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let manifest = Self::parse(&text).map_err(|e| match e {
            ManifestError::Parse(msg) => ManifestError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses TOML text. Errors name the key, the line and the column; the lines of
    /// the function keys are kept for [`Manifest::validate`]'s errors.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let mut manifest: Self = toml::from_str(text)
            .map_err(|e| ManifestError::Parse(e.to_string().trim_end().to_owned()))?;
        manifest.lines = KeyLines::scan(text);
        Ok(manifest)
    }
}
