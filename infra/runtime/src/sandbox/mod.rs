//! The instance sandbox: what an instance can see, reach and use.
//!
//! Each part is independent, probed once at startup, and reported per function
//! ([`SandboxReport`]) so that `/v1/functions` and `thaw status` say what is really on:
//!
//! | part | mechanism | without it |
//! |---|---|---|
//! | PID, mount, user, IPC, UTS namespaces | bubblewrap (`bwrap`), run as an unprivileged uid | the instance is a bare process in thaw's namespaces, as thaw's user |
//! | network | a network namespace per instance made by thaw ([`netns`]); `outbound` through slirp4netns | the Runtime API listens on the host's loopback, where any local process can reach it |
//! | memory, pids, cpu | a cgroup per instance ([`cgroup`]), v2 or v1 | no limits |
//! | environment | always clean: Lambda's variables, thaw's and the manifest's `env` | (never off) |
//!
//! Why bubblewrap: it is the namespace jailer Flatpak ships, small, audited, packaged by
//! every distribution, and it does exactly this job (namespaces, a read-only root built
//! from bind mounts, a size-capped tmpfs, `--die-with-parent`) without a daemon or an
//! OCI bundle. thaw keeps what bubblewrap does not do (cgroups, the Runtime API's
//! network namespace) and runs bubblewrap as an unprivileged uid, so even the sandbox's
//! setup holds no privilege over the host.

pub mod bwrap;
pub mod cgroup;
pub mod jail;
pub mod netns;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use thaw_manifest::{FunctionPlan, Network};

use self::cgroup::CgroupRoot;

/// First uid of the unprivileged users instances run as: function `i` (in manifest
/// order) runs as `base + i`, so instances of one function share files on their volumes
/// and instances of different functions do not.
pub const DEFAULT_UID_BASE: u32 = 200_000;

/// The parts that are available on this machine, probed once at startup.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The sandbox is on at all (`--no-sandbox` turns it off).
    pub enabled: bool,
    /// bubblewrap, where it works here.
    pub bwrap: Option<PathBuf>,
    /// thaw can make network namespaces.
    pub netns: bool,
    /// Where instance cgroups go.
    pub cgroups: Option<Arc<CgroupRoot>>,
    /// slirp4netns, for `network = "outbound"`.
    pub slirp4netns: Option<PathBuf>,
    /// See [`DEFAULT_UID_BASE`].
    pub uid_base: u32,
    /// thaw's own executable, which runs [`jail`]: with it, a spare sandbox per function
    /// is made ahead of each cold start. `None` makes every sandbox on the cold start.
    pub jail_exe: Option<PathBuf>,
    /// thaw's binary by a path an unprivileged uid can read, bound into each sandbox to
    /// run the [`jail::shim_main`], so the whole sandbox is built ahead of a cold start.
    /// `None`: the spare stops at the jail, and bubblewrap runs on the cold start.
    pub shim_exe: Option<PathBuf>,
    /// One line per part that is missing, and why.
    pub warnings: Vec<String>,
}

/// What one function's instances actually get.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxReport {
    /// Any part is on.
    pub enabled: bool,
    /// Own PID namespace: stopping the instance stops everything it started.
    pub pid_namespace: bool,
    /// Own mount namespace: read-only root, private /tmp, only its own files.
    pub mount_namespace: bool,
    /// `unprivileged` (its own uid, in a user namespace), `root-mapped` (a user namespace,
    /// but thaw's uid outside: its files are not reachable by an unprivileged uid), or
    /// `host` (thaw's own user).
    pub user: String,
    /// The uid outside the sandbox, when unprivileged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// `isolated` (loopback only), `outbound` (slirp4netns), or `host` (thaw's network:
    /// the Runtime API is reachable by other local processes).
    pub network: String,
    /// The cgroup layout (`v1`/`v2`), or `none`.
    pub cgroup: String,
    /// Memory plus swap limit, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Process cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    /// Size of the private /tmp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmp_size: Option<u64>,
    /// What is off, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Names of parts a test (or an operator) can declare unavailable, as if the kernel or
/// the machine lacked them: `THAW_SANDBOX_UNAVAILABLE=namespaces,network,cgroups`.
pub const UNAVAILABLE_ENV: &str = "THAW_SANDBOX_UNAVAILABLE";

impl Sandbox {
    /// The sandbox turned off (`--no-sandbox`).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            bwrap: None,
            netns: false,
            cgroups: None,
            slirp4netns: None,
            uid_base: DEFAULT_UID_BASE,
            jail_exe: None,
            shim_exe: None,
            warnings: vec![
                "the sandbox is off (--no-sandbox): instances are bare processes \
                            with thaw's user, network and filesystem, and no limits"
                    .to_owned(),
            ],
        }
    }

    /// Probes every part. Never fails: what is missing becomes a warning.
    pub fn probe() -> Self {
        let unavailable = std::env::var(UNAVAILABLE_ENV).unwrap_or_default();
        let off = |part: &str| unavailable.split(',').any(|p| p.trim() == part);
        let mut warnings = Vec::new();
        let uid_base = DEFAULT_UID_BASE;

        let bwrap = if off("namespaces") {
            warnings.push(format!("namespaces off ({UNAVAILABLE_ENV}): instances share thaw's PID, mount and user namespaces"));
            None
        } else {
            match bwrap::probe(uid_base) {
                Ok(path) => Some(path),
                Err(why) => {
                    warnings.push(format!("namespaces off: {why}; instances share thaw's PID, mount and user namespaces (install bubblewrap)"));
                    None
                }
            }
        };
        let netns = if off("network") {
            warnings.push(format!("network isolation off ({UNAVAILABLE_ENV}): Runtime APIs listen on the host's loopback"));
            false
        } else {
            match netns::NetNs::with_listener() {
                Ok(_) => true,
                Err(e) => {
                    warnings.push(format!("network isolation off: cannot make a network namespace ({e}); Runtime APIs listen on the host's loopback"));
                    false
                }
            }
        };
        let cgroups = if off("cgroups") {
            warnings.push(format!(
                "resource limits off ({UNAVAILABLE_ENV}): memory, pids and cpu are not enforced"
            ));
            None
        } else {
            match CgroupRoot::detect() {
                Ok(root) => {
                    let swept = root.sweep_stale();
                    if swept > 0 {
                        tracing::warn!(swept, "killed the instances a previous thaw left behind");
                    }
                    Some(Arc::new(root))
                }
                Err(e) => {
                    warnings.push(format!(
                        "resource limits off: {e}; memory, pids and cpu are not enforced"
                    ));
                    None
                }
            }
        };
        let slirp4netns = which("slirp4netns");
        Self {
            enabled: true,
            bwrap,
            netns,
            cgroups,
            slirp4netns,
            uid_base,
            jail_exe: None,
            shim_exe: None,
            warnings,
        }
    }

    /// The uid function number `index` runs as, if it can: an unprivileged uid needs to
    /// reach the function's binary, snapshots and volumes.
    pub fn uid_for(&self, plan: &FunctionPlan, index: usize) -> Result<u32, String> {
        let paths = std::iter::once(plan.binary_path.as_path())
            .chain(plan.read_only.iter().map(PathBuf::as_path))
            .chain(plan.snapshot_dir.as_deref())
            .chain(plan.snapshot_dirs.values().map(PathBuf::as_path))
            .chain(plan.spec.volumes.values().map(Path::new));
        for p in paths {
            if let Some(blocked) = unreachable_by_others(p) {
                return Err(format!(
                    "{} is not reachable by an unprivileged user ({} is not open to others)",
                    p.display(),
                    blocked.display()
                ));
            }
        }
        // Snapshot files written by an older thaw may be private to their owner.
        let snapshot_files = plan
            .snapshot_dir
            .iter()
            .chain(plan.snapshot_dirs.values())
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path());
        for f in snapshot_files {
            if let Some(blocked) = unreachable_by_others(&f) {
                return Err(format!(
                    "{} is not readable by others (rebuild the snapshot, or chmod a+r it)",
                    blocked.display()
                ));
            }
        }
        Ok(self.uid_base + index as u32)
    }

    /// What function number `index` gets here.
    pub fn report(&self, plan: &FunctionPlan, index: usize) -> SandboxReport {
        let spec = &plan.spec;
        let mut missing = Vec::new();
        if !self.enabled {
            return SandboxReport {
                enabled: false,
                pid_namespace: false,
                mount_namespace: false,
                user: "host".into(),
                uid: None,
                network: "host".into(),
                cgroup: "none".into(),
                memory_limit: None,
                pids_limit: None,
                cpu_limit: None,
                tmp_size: None,
                missing: vec!["--no-sandbox".into()],
            };
        }
        let ns = self.bwrap.is_some();
        if !ns {
            missing.push("namespaces: bubblewrap unavailable".into());
        }
        let (user, uid) = match (ns, self.uid_for(plan, index)) {
            (true, Ok(uid)) => ("unprivileged".to_owned(), Some(uid)),
            (true, Err(why)) => {
                missing.push(format!("unprivileged uid: {why}"));
                ("root-mapped".to_owned(), None)
            }
            (false, _) => ("host".to_owned(), None),
        };
        let network = match (self.netns, spec.network) {
            (false, _) => {
                missing.push("network namespace: cannot be made here".into());
                "host"
            }
            (true, Network::None) => "isolated",
            (true, Network::Outbound) if self.slirp4netns.is_some() => "outbound",
            (true, Network::Outbound) => {
                missing.push(
                    "outbound network: slirp4netns not installed; the instance has loopback only"
                        .into(),
                );
                "isolated"
            }
        };
        let limits = self.cgroups.as_ref();
        if limits.is_none() {
            missing.push("cgroups: no writable memory and pids controllers".into());
        }
        let cpu_limit = limits.filter(|c| c.has_cpu()).and(spec.cpu);
        if spec.cpu.is_some() && cpu_limit.is_none() {
            missing.push("cpu: no cpu controller; the quota is not enforced".into());
        }
        if !ns && (!spec.volumes.is_empty() || spec.tmp.0 > 0) {
            missing.push(
                "tmp and volumes: without a mount namespace the instance uses the host's /tmp and paths"
                    .into(),
            );
        }
        SandboxReport {
            enabled: true,
            pid_namespace: ns,
            mount_namespace: ns,
            user,
            uid,
            network: network.into(),
            cgroup: limits.map_or("none", |c| c.version()).into(),
            memory_limit: limits.map(|_| spec.memory.0),
            pids_limit: limits.map(|_| spec.pids),
            cpu_limit,
            tmp_size: ns.then_some(spec.tmp.0),
            missing,
        }
    }
}

/// Whether an unprivileged user can read `path` (every directory on the way traversable).
pub fn readable_by_others(path: &Path) -> bool {
    unreachable_by_others(path).is_none()
}

/// The first directory on the way to `path` that others cannot traverse (or the file
/// itself, if others cannot read it).
fn unreachable_by_others(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut acc = PathBuf::from("/");
    for comp in path.components().skip(1) {
        let Ok(meta) = std::fs::metadata(&acc) else {
            return Some(acc);
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Some(acc);
        }
        acc.push(comp);
    }
    let meta = std::fs::metadata(&acc).ok()?;
    let need = if meta.is_dir() { 0o005 } else { 0o004 };
    (meta.permissions().mode() & need != need).then_some(acc)
}

/// `name` on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
