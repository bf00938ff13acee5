//! Sandboxes made ahead of the cold start that takes them.
//!
//! A [`Slot`] is everything about an instance that does not depend on which instance it
//! will be: a network namespace holding the Runtime API's listener, a cgroup with the
//! function's limits, and the [`jail`](crate::sandbox::jail) process already inside both,
//! waiting for its command. Making one costs a few milliseconds of namespace set-up and a
//! kernel RCU grace period to join the cgroup; [`Spare`] keeps one per function ready, so
//! that a cold start only writes a line to the jail, and makes the next one in the
//! background.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};

use super::process::ChildSetup;
use super::LaunchError;
use crate::sandbox::cgroup::{CgroupRoot, InstanceCgroup, Limits};
use crate::sandbox::jail::{JailSpec, SUBCOMMAND};
use crate::sandbox::netns::NetNs;

/// What a slot is made with.
#[derive(Debug, Clone)]
pub(super) struct SlotConfig {
    /// thaw's own executable, which runs the jail.
    pub jail_exe: PathBuf,
    /// A network namespace per instance.
    pub isolated_net: bool,
    /// Where cgroups go.
    pub cgroups: Option<Arc<CgroupRoot>>,
    /// The function's limits.
    pub limits: Limits,
    /// Prefix of the slots' cgroup names.
    pub name: String,
    /// Handed to the jail as soon as it is in the cgroup: bubblewrap around the shim, so
    /// the whole sandbox is built ahead. `None`: the jail waits for the cold start.
    pub prelude: Option<JailSpec>,
}

/// A sandbox with its jail waiting inside.
#[derive(Debug)]
pub(super) struct Slot {
    pub netns: Option<NetNs>,
    pub listener: std::net::TcpListener,
    pub cgroup: Option<Arc<InstanceCgroup>>,
    pub jail: Child,
    /// A shim waits inside a built sandbox (the prelude was sent): it takes a
    /// [`ShimSpec`](crate::sandbox::jail::ShimSpec), not a [`JailSpec`].
    pub shim: bool,
}

impl Slot {
    /// Makes a slot: namespace, listener and cgroup, then the jail, then moves the jail
    /// into the cgroup (the slow part, on a blocking thread).
    pub(super) async fn make(config: &SlotConfig, n: u64) -> Result<Self, LaunchError> {
        let (isolated, cgroups, limits) =
            (config.isolated_net, config.cgroups.clone(), config.limits);
        let name = format!("{}-slot{n}", config.name);
        let (netns, listener, cgroup) = tokio::task::spawn_blocking(move || {
            super::process::make_places(isolated, cgroups.as_deref(), &name, limits)
        })
        .await
        .map_err(|e| LaunchError::RuntimeApi(std::io::Error::other(e)))??;
        let mut cmd = Command::new(&config.jail_exe);
        cmd.arg(SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let setup = ChildSetup {
            cgroup_procs: Vec::new(),
            netns: netns.as_ref().map(NetNs::raw_fd),
            uid: None,
            parent: std::process::id() as libc::pid_t,
        };
        // SAFETY: ChildSetup::run makes only async-signal-safe calls on memory it owns.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || setup.run());
        }
        let jail = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: config.jail_exe.display().to_string(),
            source,
        })?;
        if let (Some(cg), Some(pid)) = (cgroup.clone(), jail.id()) {
            tokio::task::spawn_blocking(move || cg.add(pid))
                .await
                .map_err(|e| LaunchError::Cgroup(std::io::Error::other(e)))?
                .map_err(LaunchError::Cgroup)?;
        }
        let mut slot = Self {
            netns,
            listener,
            cgroup,
            jail,
            shim: false,
        };
        if let Some(prelude) = &config.prelude {
            slot.send(prelude, false)
                .await
                .map_err(LaunchError::RuntimeApi)?;
            slot.shim = true;
        }
        Ok(slot)
    }

    /// Writes one JSON line to the jail (or the shim it became); `last` closes the pipe,
    /// the cue that nothing more comes. Fails if the process is gone.
    pub(super) async fn send(
        &mut self,
        spec: &impl serde::Serialize,
        last: bool,
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(spec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let stdin = self
            .jail
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the jail's stdin is gone"))?;
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        if last {
            drop(self.jail.stdin.take());
        }
        Ok(())
    }

    /// Kills the jail and removes the cgroup (a spare that will not be used).
    pub(super) async fn discard(mut self) {
        let _ = self.jail.kill().await;
        if let Some(cg) = self.cgroup.take() {
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
    }
}

/// How long a refill waits after a take: making a sandbox costs a few milliseconds of CPU,
/// which on a small machine would be taken from the cold start that just began.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(150);

/// One spare slot per function, refilled in the background after each take.
#[derive(Debug)]
pub(super) struct Spare {
    config: SlotConfig,
    slot: Mutex<Option<Slot>>,
    made: AtomicU64,
    closed: AtomicBool,
}

impl Spare {
    pub(super) fn new(config: SlotConfig) -> Arc<Self> {
        let spare = Arc::new(Self {
            config,
            slot: Mutex::new(None),
            made: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            Arc::clone(&spare).refill();
        }
        spare
    }

    /// Takes the ready slot, if there is one, and starts making the next once the
    /// instance taking it has had [`REFILL_DELAY`] to initialise.
    pub(super) fn take(self: &Arc<Self>) -> Option<Slot> {
        let slot = self.slot.lock().ok().and_then(|mut s| s.take());
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_DELAY).await;
            me.refill();
        });
        slot
    }

    /// Makes a slot now (no spare was ready).
    pub(super) async fn make_now(&self) -> Result<Slot, LaunchError> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        Slot::make(&self.config, n).await
    }

    fn refill(self: Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            let n = self.made.fetch_add(1, Ordering::Relaxed);
            match Slot::make(&self.config, n).await {
                Ok(slot) => {
                    let stale = match self.slot.lock() {
                        Ok(mut s) if !self.closed.load(Ordering::SeqCst) => s.replace(slot),
                        _ => Some(slot),
                    };
                    if let Some(old) = stale {
                        old.discard().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(function = %self.config.name, error = %e, "cannot make a spare sandbox")
                }
            }
        });
    }

    /// Stops refilling and discards the spare (thaw is stopping).
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let slot = self.slot.lock().ok().and_then(|mut s| s.take());
        if let Some(slot) = slot {
            slot.discard().await;
        }
    }
}
