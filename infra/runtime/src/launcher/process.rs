//! [`ProcessLauncher`]: an instance is the function's binary, exec'd inside whatever
//! sandbox this machine allows (see [`crate::sandbox`]).
//!
//! Order of events for one instance:
//!
//! 1. A network namespace is made with the Runtime API listening inside it (or, without
//!    one, a listener on the host's loopback), and a cgroup with the function's limits.
//! 2. A process joins both while it still has thaw's privilege. Where thaw can run its
//!    [jail](crate::sandbox::jail), steps 1 and 2 happen *before* the cold start, in a
//!    spare [slot](super::slot); otherwise the forked child joins them before exec.
//! 3. On the cold start the Runtime API starts serving, and the process drops to the
//!    function's unprivileged uid, arms `PR_SET_PDEATHSIG` so a SIGKILL of thaw takes it
//!    down, and execs bubblewrap, which builds the PID, mount, user, IPC and UTS
//!    namespaces and execs the function.
//! 4. When it exits, the cgroup says whether the OOM killer did it; anything left in the
//!    cgroup is killed and the cgroup removed, then the exit is reported.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use thaw_manifest::FunctionPlan;
use tokio::process::{Child, Command};

use super::gpus::hold_until_exit;
use super::instance_env::instance_env;
use super::lines::pump_lines;
use super::slot::{Slot, SlotConfig, Spare};
use super::{
    signal_group, signal_pid, GpuPool, InstanceControl, InstanceExit, LaunchError, LaunchRequest,
    Launched, Launcher, Lent,
};
use crate::sandbox::cgroup::{CgroupRoot, InstanceCgroup, Limits};
use crate::sandbox::jail::{JailSpec, ShimSpec, SHIM_PATH, SHIM_SUBCOMMAND};
use crate::sandbox::netns::NetNs;
use crate::sandbox::{bwrap, Sandbox, SandboxReport};

/// Execs instances of one function, sandboxed as its [`SandboxReport`] says.
#[derive(Debug)]
pub struct ProcessLauncher {
    sandbox: Arc<Sandbox>,
    gpus: Arc<GpuPool>,
    report: SandboxReport,
    /// A sandbox kept ready for the next cold start, where thaw can run its jail.
    spare: Option<Arc<Spare>>,
}

impl ProcessLauncher {
    /// A launcher for function number `index` of the manifest, lending GPUs from `gpus`
    /// (shared by every function). Inside a Tokio runtime with the sandbox on, it starts
    /// making the function's spare sandbox at once.
    pub fn new(
        sandbox: Arc<Sandbox>,
        gpus: Arc<GpuPool>,
        plan: &FunctionPlan,
        index: usize,
    ) -> Self {
        let report = sandbox.report(plan, index);
        let isolated_net = matches!(report.network.as_str(), "isolated" | "outbound");
        let mut launcher = Self {
            sandbox: Arc::clone(&sandbox),
            gpus,
            report,
            spare: None,
        };
        launcher.spare = match &sandbox.jail_exe {
            Some(exe) if sandbox.enabled && (isolated_net || sandbox.cgroups.is_some()) => {
                Some(Spare::new(SlotConfig {
                    jail_exe: exe.clone(),
                    isolated_net,
                    cgroups: sandbox.cgroups.clone(),
                    limits: limits(plan),
                    name: plan.name.to_string(),
                    prelude: launcher.prelude(plan),
                }))
            }
            _ => None,
        };
        launcher
    }

    /// bubblewrap around the shim, for a sandbox built ahead of the cold start: where
    /// thaw's binary can be bound in and the function's snapshots are all local already
    /// (a snapshot pulled from a store on the first cold start changes the mounts).
    fn prelude(&self, plan: &FunctionPlan) -> Option<JailSpec> {
        let (Some(bwrap_path), Some(shim), true, true) = (
            &self.sandbox.bwrap,
            &self.sandbox.shim_exe,
            self.jailed(),
            plan.missing_snapshots.is_empty(),
        ) else {
            return None;
        };
        let mut args = lossy(&bwrap::args(plan, Some(shim)));
        args.push(SHIM_PATH.to_owned());
        args.push(SHIM_SUBCOMMAND.to_owned());
        Some(JailSpec {
            program: bwrap_path.display().to_string(),
            args,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            uid: self.report.uid,
            cwd: None,
            parent: std::process::id() as i32,
        })
    }

    /// What this function's instances get.
    pub fn report(&self) -> &SandboxReport {
        &self.report
    }

    fn jailed(&self) -> bool {
        self.sandbox.enabled && self.sandbox.bwrap.is_some()
    }

    /// The program and arguments that run the function: bubblewrap around its program, or
    /// the program alone (in its workdir, which bubblewrap otherwise enters).
    fn command(&self, plan: &FunctionPlan) -> (PathBuf, Vec<OsString>) {
        let own_args = plan.args.iter().map(OsString::from);
        match (&self.sandbox.bwrap, self.jailed()) {
            (Some(bwrap_path), true) => {
                let mut args = bwrap::args(plan, None);
                args.push(plan.binary_path.clone().into_os_string());
                args.extend(own_args);
                (bwrap_path.clone(), args)
            }
            _ => (plan.binary_path.clone(), own_args.collect()),
        }
    }

    /// Lends the instance its GPU, starts it, and hands the lease to its exit future,
    /// so the device comes back when the instance is gone (or at once if it never
    /// started).
    async fn start(&self, req: LaunchRequest<'_>) -> Result<Launched, LaunchError> {
        let spec = &req.plan.spec;
        let lent = match spec.gpu.kind {
            Some(_) => {
                self.gpus
                    .lend(spec.gpu_required, spec.startup_timeout.0)
                    .await?
            }
            None => Lent::Unknown,
        };
        let devices = match &lent {
            Lent::Unknown => None,
            Lent::Device(lease) => Some(lease.device().to_owned()),
            Lent::Cpu => Some(String::new()),
        };
        let launched = self.start_on(req, devices.as_deref()).await?;
        Ok(hold_until_exit(lent, launched))
    }

    async fn start_on(
        &self,
        req: LaunchRequest<'_>,
        devices: Option<&str>,
    ) -> Result<Launched, LaunchError> {
        if let Some(spare) = &self.spare {
            if let Some(slot) = spare.take() {
                match self.start_in(slot, &req, devices).await {
                    Ok(launched) => return Ok(launched),
                    // The spare's jail died while it waited: make one now.
                    Err(e) => {
                        tracing::warn!(instance = req.instance, error = %e, "spare sandbox unusable")
                    }
                }
            }
            let slot = spare.make_now().await?;
            return self.start_in(slot, &req, devices).await;
        }
        let name = req.instance.to_owned();
        let (isolated, cgroups, lim) = (
            matches!(self.report.network.as_str(), "isolated" | "outbound"),
            self.sandbox.cgroups.clone(),
            limits(req.plan),
        );
        let (netns, listener, cgroup) = tokio::task::spawn_blocking(move || {
            make_places(isolated, cgroups.as_deref(), &name, lim)
        })
        .await
        .map_err(|e| LaunchError::RuntimeApi(std::io::Error::other(e)))??;
        let api_addr = serve_api(&req, listener)?;
        let slirp = self.outbound(netns.as_ref()).await?;
        let (program, args) = self.command(req.plan);
        let mut cmd = Command::new(&program);
        if let Some(workdir) = &req.plan.workdir {
            cmd.current_dir(workdir);
        }
        cmd.args(args)
            .env_clear()
            .envs(instance_env(req.plan, req.instance, api_addr, devices))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let setup = ChildSetup {
            cgroup_procs: match &cgroup {
                Some(cg) => cg.procs_files().map_err(LaunchError::Cgroup)?,
                None => Vec::new(),
            },
            netns: netns.as_ref().map(NetNs::raw_fd),
            uid: if self.jailed() { self.report.uid } else { None },
            parent: std::process::id() as libc::pid_t,
        };
        // SAFETY: ChildSetup::run makes only async-signal-safe calls on memory it owns
        // (moved into the closure), as required between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || setup.run());
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        Ok(self.watch(child, cgroup, netns, slirp, &req))
    }

    /// Starts the function in a ready slot: its jail execs the command.
    async fn start_in(
        &self,
        mut slot: Slot,
        req: &LaunchRequest<'_>,
        devices: Option<&str>,
    ) -> Result<Launched, LaunchError> {
        let listener = slot.listener.try_clone().map_err(LaunchError::RuntimeApi)?;
        let api_addr = serve_api(req, listener)?;
        let slirp = self.outbound(slot.netns.as_ref()).await?;
        let env = instance_env(req.plan, req.instance, api_addr, devices);
        let (program, sent) = if slot.shim {
            // The sandbox is built: only the function and its environment are left.
            let program = req.plan.binary_path.clone();
            let spec = ShimSpec {
                program: program.display().to_string(),
                args: req.plan.args.clone(),
                cwd: req.plan.workdir.as_ref().map(|w| w.display().to_string()),
                env,
            };
            (program, slot.send(&spec, true).await)
        } else {
            let (program, args) = self.command(req.plan);
            let spec = JailSpec {
                program: program.display().to_string(),
                args: lossy(&args),
                env,
                uid: if self.jailed() { self.report.uid } else { None },
                cwd: req.plan.workdir.as_ref().map(|w| w.display().to_string()),
                parent: std::process::id() as i32,
            };
            (program, slot.send(&spec, true).await)
        };
        if let Err(source) = sent {
            slot.discard().await;
            return Err(LaunchError::Spawn {
                program: program.display().to_string(),
                source,
            });
        }
        let Slot {
            netns,
            cgroup,
            jail,
            ..
        } = slot;
        Ok(self.watch(jail, cgroup, netns, slirp, req))
    }

    /// `network = "outbound"`: slirp4netns on the instance's namespace.
    pub(super) async fn outbound(
        &self,
        netns: Option<&NetNs>,
    ) -> Result<Option<Child>, LaunchError> {
        match (
            netns,
            self.report.network.as_str(),
            &self.sandbox.slirp4netns,
        ) {
            (Some(ns), "outbound", Some(slirp)) => Ok(Some(outbound::start(slirp, ns).await?)),
            _ => Ok(None),
        }
    }

    /// Reads the instance's output into the logs and builds its control and exit future.
    fn watch(
        &self,
        mut child: Child,
        cgroup: Option<Arc<InstanceCgroup>>,
        netns: Option<NetNs>,
        slirp: Option<Child>,
        req: &LaunchRequest<'_>,
    ) -> Launched {
        let pid = child.id().unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            pump_lines(out, req.instance.to_owned(), "stdout", Arc::clone(req.logs));
        }
        if let Some(err) = child.stderr.take() {
            pump_lines(err, req.instance.to_owned(), "stderr", Arc::clone(req.logs));
        }
        let control = Arc::new(ProcessControl {
            pid,
            alive: std::sync::atomic::AtomicBool::new(true),
            cgroup: cgroup.clone(),
            jailed: self.jailed(),
        });
        let memory = req.plan.spec.memory.0;
        let reaped = Arc::clone(&control);
        let exited = async move {
            let status = child.wait().await;
            reaped
                .alive
                .store(false, std::sync::atomic::Ordering::SeqCst);
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            let exit = ended(cgroup, memory, status).await;
            drop(slirp);
            drop(netns);
            exit
        }
        .boxed();
        Launched { control, exited }
    }
}

/// How an instance ended, once its main process is gone: its cgroup says whether the
/// kernel killed it at its memory limit; anything left in the cgroup is killed and the
/// cgroup removed.
pub(super) async fn ended(
    cgroup: Option<Arc<InstanceCgroup>>,
    memory: u64,
    status: String,
) -> InstanceExit {
    let oom = match cgroup {
        Some(cg) => tokio::task::spawn_blocking(move || {
            let oom = cg.oom_kills() > 0;
            cg.remove();
            oom
        })
        .await
        .unwrap_or(false),
        None => false,
    };
    if oom {
        InstanceExit::OutOfMemory { limit: memory }
    } else {
        InstanceExit::Exited(status)
    }
}

/// SIGKILLs everything in `cgroup`. That may take a few rounds, so it runs off the
/// caller's thread (which may hold the pool's lock) where there is a runtime.
pub(super) fn kill_cgroup(cgroup: Option<Arc<InstanceCgroup>>) {
    let Some(cg) = cgroup else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || cg.kill_all());
        }
        Err(_) => cg.kill_all(),
    }
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

pub(super) fn limits(plan: &FunctionPlan) -> Limits {
    Limits {
        memory: plan.spec.memory.0,
        pids: plan.spec.pids,
        cpu: plan.spec.cpu,
    }
}

/// Where an instance lives: its network namespace (if isolated), its Runtime API's
/// listener, its cgroup (if limits are on).
pub(super) type Places = (
    Option<NetNs>,
    std::net::TcpListener,
    Option<Arc<InstanceCgroup>>,
);

/// The Runtime API's place and the instance's limits: a network namespace with the
/// listener inside (or a listener on the host's loopback), and a cgroup. Blocking.
pub(super) fn make_places(
    isolated_net: bool,
    cgroups: Option<&CgroupRoot>,
    name: &str,
    limits: Limits,
) -> Result<Places, LaunchError> {
    let (netns, listener) = if isolated_net {
        let (ns, l) = NetNs::with_listener().map_err(LaunchError::RuntimeApi)?;
        (Some(ns), l)
    } else {
        (None, host_listener()?)
    };
    let cgroup = match cgroups {
        Some(root) => Some(Arc::new(
            root.create(name, limits).map_err(LaunchError::Cgroup)?,
        )),
        None => None,
    };
    Ok((netns, listener, cgroup))
}

/// A Runtime API listener on the host's loopback, for instances without a network
/// namespace.
pub(super) fn host_listener() -> Result<std::net::TcpListener, LaunchError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(LaunchError::RuntimeApi)
}

/// Serves the instance's Runtime API on `listener`; returns the address the instance
/// is told (`AWS_LAMBDA_RUNTIME_API`).
pub(super) fn serve_api(
    req: &LaunchRequest<'_>,
    listener: std::net::TcpListener,
) -> Result<std::net::SocketAddr, LaunchError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(LaunchError::RuntimeApi)?;
    let addr = listener.local_addr().map_err(LaunchError::RuntimeApi)?;
    req.api.serve(listener);
    Ok(addr)
}

impl Launcher for ProcessLauncher {
    fn launch<'a>(
        &'a self,
        req: LaunchRequest<'a>,
    ) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        self.start(req).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(spare) = &self.spare {
                spare.close().await;
            }
        }
        .boxed()
    }
}

/// What the forked child does before exec, in this order: join the cgroup and the
/// network namespace (while it still has thaw's privilege), drop to `uid`, arm
/// `PR_SET_PDEATHSIG` (a uid change would clear it), and check that thaw did not die
/// before it was armed.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    pub(crate) cgroup_procs: Vec<File>,
    pub(crate) netns: Option<i32>,
    pub(crate) uid: Option<u32>,
    pub(crate) parent: libc::pid_t,
}

impl ChildSetup {
    /// Runs in the child between fork and exec: only async-signal-safe calls.
    #[allow(unsafe_code)]
    pub(crate) fn run(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        for f in &self.cgroup_procs {
            // SAFETY: write(2) on a descriptor this struct owns, from a static buffer.
            if unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return fail();
            }
        }
        if let Some(fd) = self.netns {
            // SAFETY: setns(2) on a namespace descriptor kept open by the parent.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return fail();
            }
        }
        crate::sandbox::jail::drop_to(self.uid, self.parent)
    }
}

/// Signals for a process instance.
#[derive(Debug)]
struct ProcessControl {
    pid: u32,
    /// False once the process has been reaped: its pid may then belong to someone else.
    alive: std::sync::atomic::AtomicBool,
    cgroup: Option<Arc<InstanceCgroup>>,
    /// Inside bubblewrap: `pid` is bubblewrap's monitor, which dies at once on SIGTERM
    /// and takes the PID namespace down with it.
    jailed: bool,
}

impl InstanceControl for ProcessControl {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn terminate(&self) {
        if !self.alive.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match (&self.cgroup, self.jailed) {
            // SIGTERM the function's processes, not bubblewrap's monitor, so the function
            // gets its grace period; `kill` ends the namespace after it.
            (Some(cg), true) => {
                for p in cg.pids() {
                    if p != self.pid {
                        signal_pid(p, libc::SIGTERM);
                    }
                }
            }
            _ => signal_group(self.pid, libc::SIGTERM),
        }
    }

    fn kill(&self) {
        if self.alive.load(std::sync::atomic::Ordering::SeqCst) {
            signal_group(self.pid, libc::SIGKILL);
        }
        // Stragglers in the cgroup (modes without a PID namespace).
        kill_cgroup(self.cgroup.clone());
    }
}

/// `network = "outbound"`: slirp4netns gives the namespace a tap device routed through
/// a user-space TCP/IP stack to the host's network; the host's loopback is reachable at
/// 10.0.2.2.
mod outbound {
    use std::os::fd::{AsRawFd as _, OwnedFd};
    use std::path::Path;
    use std::process::Stdio;

    use tokio::io::AsyncReadExt as _;
    use tokio::process::{Child, Command};

    use super::{ChildSetup, LaunchError};
    use crate::sandbox::netns::NetNs;

    /// Starts slirp4netns on `ns` and waits until it says the interface is configured.
    pub(super) async fn start(slirp: &Path, ns: &NetNs) -> Result<Child, LaunchError> {
        let spawn_err = |source| LaunchError::Spawn {
            program: slirp.display().to_string(),
            source,
        };
        let (read_end, write_end) = pipe().map_err(spawn_err)?;
        let mut cmd = Command::new(slirp);
        // Its own sandbox and seccomp filter: it parses packets the function controls.
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg("--netns-type=path")
        .arg(format!("--ready-fd={}", write_end.as_raw_fd()))
        .arg(ns.path())
        .arg("tap0")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let setup = ChildSetup {
            cgroup_procs: Vec::new(),
            netns: None,
            uid: None,
            parent: std::process::id() as libc::pid_t,
        };
        let ready_fd = write_end.as_raw_fd();
        // SAFETY: fcntl and the ChildSetup calls are async-signal-safe; the descriptor is
        // the pipe's write end, open in the child until exec, which it must survive.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(ready_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                setup.run()
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(write_end);
        let mut ready = tokio::fs::File::from_std(std::fs::File::from(read_end));
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), ready.read(&mut byte)).await;
        match read {
            Ok(Ok(1)) => Ok(child),
            _ => Err(spawn_err(std::io::Error::other(
                "slirp4netns did not configure the network",
            ))),
        }
    }

    /// A pipe whose ends close on exec.
    fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
    }
}
