//! The launcher seam: how an instance comes to exist, is signalled, and is known to be
//! gone.
//!
//! The pool holds a [`Launcher`] as a trait object and knows nothing of processes. A
//! launcher starts an instance that serves the given [`InstanceApi`] and returns a
//! [`Launched`]: a control handle (signals) and a future that resolves with the
//! [`InstanceExit`] once every process of the instance is gone.
//!
//! - [`ProcessLauncher`] execs the function's binary, sandboxed as
//!   [`crate::sandbox`] allows (bubblewrap, a network namespace, a cgroup), or bare with
//!   `--no-sandbox`, on GPUs lent by the machine's [`GpuPool`]. Its output is read line by line into the function's [`LogRing`],
//!   in constant memory however long a line is ([`lines`]).
//! - [`TemplateLauncher`] forks instances from a warm template of the function, which
//!   loaded its model once, and execs through a [`ProcessLauncher`] where it cannot.
//! - Tests drive the scheduler with a launcher that serves the API in-process.

mod gpus;
mod instance_env;
pub(crate) mod lines;
mod process;
mod slot;
mod template;

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use thaw_manifest::FunctionPlan;

use crate::logs::LogRing;
use crate::runtime_api::InstanceApi;

pub use self::gpus::{GpuLease, GpuPool, Lent, NoGpu, CPU_FALLBACK_AFTER};
pub use self::process::ProcessLauncher;
pub use self::template::{TemplateError, TemplateLauncher, TemplateStatus};

/// What a launcher is asked to start.
#[derive(Debug)]
pub struct LaunchRequest<'a> {
    /// The function, with every snapshot local.
    pub plan: &'a FunctionPlan,
    /// The instance's name (`embed-3`).
    pub instance: &'a str,
    /// The instance's number within its function (3).
    pub number: u64,
    /// The Runtime API the instance must be served by.
    pub api: Arc<InstanceApi>,
    /// Where its output goes.
    pub logs: &'a Arc<LogRing>,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The Runtime API listener could not be made.
    #[error("cannot bind a Runtime API port: {0}")]
    RuntimeApi(std::io::Error),
    /// The instance's cgroup could not be made.
    #[error("cannot make the instance's cgroup: {0}")]
    Cgroup(std::io::Error),
    /// The function requires a GPU and none could be lent.
    #[error(transparent)]
    NoGpu(#[from] NoGpu),
    /// The process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// What was exec'd.
        program: String,
        /// Why not.
        source: std::io::Error,
    },
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceExit {
    /// Its process exited or was killed; the status as the OS put it.
    Exited(String),
    /// The kernel killed it at its memory limit.
    OutOfMemory {
        /// The limit, bytes.
        limit: u64,
    },
}

/// Signals to a running instance.
pub trait InstanceControl: Send + Sync + fmt::Debug {
    /// The pid thaw knows it by (for status), if it is a process.
    fn pid(&self) -> Option<u32>;
    /// Asks it to stop: SIGTERM to the function's processes.
    fn terminate(&self);
    /// Stops it now, and everything it started.
    fn kill(&self);
}

/// A started instance.
pub struct Launched {
    /// Its signals.
    pub control: Arc<dyn InstanceControl>,
    /// Resolves once the instance, and every process it started, is gone.
    pub exited: BoxFuture<'static, InstanceExit>,
}

impl fmt::Debug for Launched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launched")
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// Starts instances.
pub trait Launcher: Send + Sync + fmt::Debug {
    /// Starts one instance served by `req.api`.
    fn launch<'a>(&'a self, req: LaunchRequest<'a>)
        -> BoxFuture<'a, Result<Launched, LaunchError>>;

    /// Releases what the launcher holds ahead of launches (thaw is stopping).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The function's warm template, where this launcher forks from one.
    fn template(&self) -> Option<TemplateStatus> {
        None
    }
}

/// Sends `signal` to one process.
#[allow(unsafe_code)]
pub fn signal_pid(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Sends `signal` to the process group `pid` leads.
#[allow(unsafe_code)]
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
    // process group this instance leads (process_group(0) at spawn).
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Makes `cmd`'s child drop to `uid` (and the same gid, no supplementary groups) before
/// exec, then arm `PR_SET_PDEATHSIG` (a uid change clears it) so it dies with thaw.
pub(crate) fn as_uid(cmd: &mut std::process::Command, uid: Option<u32>) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    let hook = process::ChildSetup {
        cgroup_procs: Vec::new(),
        netns: None,
        uid,
        parent,
    };
    // SAFETY: see ChildSetup::run: async-signal-safe calls only, on memory the hook owns.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || hook.run());
    }
}

/// Raises this process's soft open-file limit to its hard limit: each long-poll, map
/// stream and instance holds descriptors, and the common soft default of 1024 is too low
/// for a thousand waiting clients. Returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own; raising soft to hard is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}
