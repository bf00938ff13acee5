//! [`TemplateLauncher`]: new instances forked from a warm template of their function.
//!
//! An exec'd instance pays for its whole start on every cold start: the exec, the
//! loader, the tokenizer parse, and a private copy of its weights (candle's CPU tensors
//! own their memory). A *template* pays once. It is the function's own binary, started
//! with [`thaw_protocol::template::ENV`], in the same sandbox as an instance but serving
//! nothing: it loads its model on its main thread and waits. Each cold start then asks
//! it for a fork, which shares every page it loaded copy-on-write.
//!
//! The fork isolates itself before it runs anything of the function's (new user, mount,
//! PID, IPC, UTS and network namespaces, a fresh `/proc` and `/tmp`, no capabilities;
//! see `thaw_fn`'s template module) and reports its pid. thaw then does what it does for
//! an exec'd instance from outside: moves it into its own cgroup, binds its Runtime API
//! inside its network namespace (and starts slirp4netns for `outbound`), and sends its
//! environment. The fork's supervisor holds the instance's socket: when it closes, thaw
//! is gone and the instance is killed; when the instance ends, it says how.
//!
//! - **Lazily:** the first cold start starts the template and forks from it, so
//!   `min_containers` starts it at boot.
//! - **Until idle:** once the function has had no instance for its `idle_timeout`, the
//!   template stops too: scale to zero reaches zero processes.
//! - **Falling back:** a template that fails to start, or dies, or a fork that fails,
//!   gives an exec'd instance instead, with a warning and
//!   `thaw_template_fallbacks_total`. A template that cannot start is not tried again
//!   for that function; one that died is restarted at the next cold start.
//! - **Memory:** the template lives in its own cgroup with the function's `memory`
//!   limit; the pages it loaded are charged to it, and each fork's cgroup pays only for
//!   the pages that fork writes.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use serde::Serialize;
use thaw_manifest::FunctionPlan;
use thaw_protocol::template::{Go, TemplateConfig, ENV, EXIT_NOT_FORKABLE, READY};
use tokio::process::Command;

mod fork;

use self::fork::{prepare, read_exit, ForkControl, Prepared};
use super::instance_env::instance_env;
use super::lines::pump_lines;
use super::process::{ended, limits, serve_api, ChildSetup, ProcessLauncher};
use super::{LaunchError, LaunchRequest, Launched, Launcher};
use crate::metrics::Metrics;
use crate::sandbox::{bwrap, Sandbox};

/// How many times a template may die before its function goes back to exec for good.
const MAX_TEMPLATE_DEATHS: u64 = 3;

/// How many forks in a row may fail before the function goes back to exec for good.
const MAX_FAILED_FORKS: u64 = 3;

/// Why a fork could not be had; the launch then execs.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template did not start or did not load.
    #[error("the template did not start: {0}")]
    Start(String),
    /// The template is gone.
    #[error("the template died")]
    Died,
    /// The fork did not come up.
    #[error("the fork failed: {0}")]
    Fork(String),
    /// Making the fork's places failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// A template, as `/v1/functions` and `thaw status` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateStatus {
    /// `ready`, `stopped` or `off` (with why).
    pub state: String,
    /// The pid of the process thaw started for it (bubblewrap, where sandboxed), while
    /// it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Instances forked from it so far.
    pub forks: u64,
    /// Launches that went to exec instead.
    pub fallbacks: u64,
    /// Why templates are off for this function, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
}

/// A running template.
#[derive(Debug)]
struct Template {
    /// thaw's end of the control socket.
    control: Mutex<UnixStream>,
    pid: u32,
    dead: Arc<AtomicBool>,
}

impl Template {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.dead.store(true, Ordering::SeqCst);
        // Its end of file tells it to exit; its watcher then empties its cgroup.
        if let Ok(c) = self.control.lock() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    template: Option<Arc<Template>>,
    /// Set once templates are off for this function (it cannot be one).
    off: Option<String>,
    /// Unexpected deaths so far.
    deaths: u64,
    /// Instances forked and still running.
    live: u64,
    /// Bumped whenever `live` changes, so an idle stop knows it is still due.
    epoch: u64,
    /// Forks that failed since the last one that worked.
    failed_forks: u64,
    /// A fork made ahead of the next cold start.
    spare: Option<Prepared>,
    /// A spare is being made.
    refilling: bool,
}

/// Forks instances from a warm template, and execs through [`ProcessLauncher`] where it
/// cannot.
#[derive(Debug)]
pub struct TemplateLauncher {
    exec: ProcessLauncher,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
    config: TemplateConfig,
    uid: Option<u32>,
    state: Arc<Mutex<State>>,
    /// Serialises template starts.
    starting: tokio::sync::Mutex<()>,
    forks: AtomicU64,
    fallbacks: AtomicU64,
    /// Numbers the forks' cgroups.
    fork_names: AtomicU64,
}

impl TemplateLauncher {
    /// Templates for `plan`, falling back to `exec`.
    pub fn new(
        exec: ProcessLauncher,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
        plan: &FunctionPlan,
    ) -> Self {
        let report = exec.report();
        let isolate = sandbox.enabled && report.pid_namespace && report.mount_namespace;
        // A root-mapped sandbox would run the template, and the function's init, as
        // thaw's own uid; and a fork can map only its own uid, so it could not isolate.
        let off = (sandbox.enabled && report.user != "unprivileged").then(|| {
            format!(
                "the sandbox runs this function {} here; templates need an unprivileged uid",
                report.user
            )
        });
        let config = TemplateConfig {
            isolate,
            net: isolate && matches!(report.network.as_str(), "isolated" | "outbound"),
            tmp: plan.spec.tmp.0,
        };
        let uid = if isolate { report.uid } else { None };
        Self {
            exec,
            sandbox,
            metrics,
            config,
            uid,
            state: Arc::new(Mutex::new(State {
                off,
                ..State::default()
            })),
            starting: tokio::sync::Mutex::new(()),
            forks: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            fork_names: AtomicU64::new(0),
        }
    }

    /// The exec launcher behind it.
    pub fn exec(&self) -> &ProcessLauncher {
        &self.exec
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn launch_or_exec(&self, req: LaunchRequest<'_>) -> Result<Launched, LaunchError> {
        if self.lock().off.is_none() {
            match self.fork(&req).await {
                Ok(launched) => {
                    self.lock().failed_forks = 0;
                    self.forks.fetch_add(1, Ordering::Relaxed);
                    return Ok(launched);
                }
                Err(e) => {
                    let mut st = self.lock();
                    st.failed_forks += 1;
                    if st.failed_forks >= MAX_FAILED_FORKS && st.off.is_none() {
                        st.off = Some(format!("{} forks in a row failed: {e}", st.failed_forks));
                        if let Some(t) = st.template.take() {
                            t.stop();
                        }
                        if let Some(spare) = st.spare.take() {
                            tokio::spawn(spare.discard());
                        }
                    }
                    drop(st);
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.metrics.template_fallback(req.plan.name.as_str());
                    tracing::warn!(function = %req.plan.name, instance = req.instance, error = %e, "no fork from the template: starting the instance by exec");
                }
            }
        }
        self.exec.launch(req).await
    }

    /// The running template, started if there is none.
    async fn template(&self, req: &LaunchRequest<'_>) -> Result<Arc<Template>, TemplateError> {
        {
            let mut st = self.lock();
            if let Some(t) = &st.template {
                if t.alive() {
                    return Ok(Arc::clone(t));
                }
                // It died: this launch execs, and the next cold start starts a new one.
                st.template = None;
                if let Some(spare) = st.spare.take() {
                    tokio::spawn(spare.discard());
                }
                st.deaths += 1;
                if st.deaths >= MAX_TEMPLATE_DEATHS {
                    st.off = Some(format!("the template died {} times", st.deaths));
                }
                return Err(TemplateError::Died);
            }
        }
        let _one = self.starting.lock().await;
        if let Some(t) = self.lock().template.as_ref().filter(|t| t.alive()) {
            return Ok(Arc::clone(t));
        }
        match self.start_template(req).await {
            Ok(t) => {
                let t = Arc::new(t);
                self.lock().template = Some(Arc::clone(&t));
                Ok(t)
            }
            Err(e) => {
                self.lock().off = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Starts the template and waits for it to load.
    async fn start_template(&self, req: &LaunchRequest<'_>) -> Result<Template, TemplateError> {
        let plan = req.plan;
        let name = format!("{}-template", plan.name);
        let (ours, theirs) = UnixStream::pair().map_err(|e| TemplateError::Start(e.to_string()))?;
        let cgroup = match &self.sandbox.cgroups {
            Some(root) => {
                let (root, name, lim) = (Arc::clone(root), name.clone(), limits(plan));
                Some(Arc::new(
                    tokio::task::spawn_blocking(move || root.create(&name, lim))
                        .await
                        .map_err(|e| TemplateError::Start(e.to_string()))?
                        .map_err(LaunchError::Cgroup)?,
                ))
            }
            None => None,
        };
        let (program, args) = match (&self.sandbox.bwrap, self.config.isolate) {
            (Some(bwrap_path), true) => {
                let mut args = bwrap::template_args(plan, self.config.net);
                args.push(plan.binary_path.clone().into_os_string());
                args.extend(plan.args.iter().map(Into::into));
                (bwrap_path.clone(), args)
            }
            _ => (
                plan.binary_path.clone(),
                plan.args.iter().map(Into::into).collect(),
            ),
        };
        let mut env = instance_env(plan, &name, crate::sandbox::netns::RUNTIME_API_ADDR, None);
        env.push((
            ENV.to_owned(),
            serde_json::to_string(&self.config).map_err(|e| TemplateError::Start(e.to_string()))?,
        ));
        let mut cmd = Command::new(&program);
        if let (Some(workdir), false) = (&plan.workdir, self.config.isolate) {
            cmd.current_dir(workdir);
        }
        cmd.args(&args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let setup = ChildSetup {
            cgroup_procs: match &cgroup {
                Some(cg) => cg.procs_files().map_err(LaunchError::Cgroup)?,
                None => Vec::new(),
            },
            netns: None,
            uid: self.uid,
            parent: std::process::id() as libc::pid_t,
        };
        // SAFETY: ChildSetup::run makes only async-signal-safe calls on memory it owns.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || setup.run());
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            pump_lines(out, name.clone(), "stdout", Arc::clone(req.logs));
        }
        if let Some(err) = child.stderr.take() {
            pump_lines(err, name.clone(), "stderr", Arc::clone(req.logs));
        }
        let reader = ours
            .try_clone()
            .map_err(|e| TemplateError::Start(e.to_string()))?;
        let ready = tokio::task::spawn_blocking(move || read_ready(reader));
        let loaded = tokio::select! {
            r = ready => r.map_err(|e| e.to_string()).and_then(|r| r),
            status = child.wait() => Err(match status {
                Ok(s) if s.code() == Some(EXIT_NOT_FORKABLE) => "its init starts threads, so it cannot be forked".to_owned(),
                Ok(s) => format!("it exited while loading ({s})"),
                Err(e) => e.to_string(),
            }),
            () = tokio::time::sleep(plan.spec.startup_timeout.0) => Err(format!("it did not load within {:?}", plan.spec.startup_timeout.0)),
        };
        // Whatever init started would share the template's user namespace, and so hold
        // every capability over each fork's: a template must be alone in its cgroup.
        let loaded = loaded.and_then(|()| match &cgroup {
            Some(cg) => alone(
                pid,
                &cg.pids(),
                self.sandbox.bwrap.is_some() && self.config.isolate,
            ),
            None => Ok(()),
        });
        if let Err(why) = loaded {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if let Some(cg) = cgroup {
                let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
            }
            // The template's own words, if it said any, are in the function's logs.
            let tail = req.logs.instance_tail(&name, 3);
            return Err(TemplateError::Start(if tail.is_empty() {
                why
            } else {
                format!("{why}: {tail}")
            }));
        }
        // Fork requests must never block thaw: a template that stops reading is dead.
        ours.set_nonblocking(true)
            .map_err(|e| TemplateError::Start(e.to_string()))?;
        tracing::info!(function = %plan.name, pid, "template ready");
        let dead = Arc::new(AtomicBool::new(false));
        let template = Template {
            control: Mutex::new(ours),
            pid,
            dead: Arc::clone(&dead),
        };
        // Watch it: a template that dies is noticed at the next cold start.
        let function = plan.name.to_string();
        let watched = tokio::spawn(async move {
            let status = child.wait().await;
            dead.store(true, Ordering::SeqCst);
            if let Some(cg) = cgroup {
                let _ = tokio::task::spawn_blocking(move || {
                    cg.kill_all();
                    cg.remove();
                })
                .await;
            }
            tracing::info!(function, pid, ?status, "template exited");
        });
        drop(watched);
        Ok(template)
    }

    /// One instance forked from the template: the spare fork made ahead, or a new one.
    async fn fork(&self, req: &LaunchRequest<'_>) -> Result<Launched, TemplateError> {
        let template = self.template(req).await?;
        let spare = self.lock().spare.take();
        self.refill(&template, req.plan);
        if let Some(spare) = spare {
            match self.finish(spare, req).await {
                Ok(launched) => return Ok(launched),
                // It died while it waited: fork a new one.
                Err(e) => {
                    tracing::warn!(function = %req.plan.name, error = %e, "spare fork unusable")
                }
            }
        }
        let prepared = prepare(
            template,
            self.config.net,
            self.sandbox.cgroups.clone(),
            req.plan,
            self.fork_name(req.plan),
        )
        .await?;
        self.finish(prepared, req).await
    }

    /// A cgroup name for the next fork (its instance name is not known yet).
    fn fork_name(&self, plan: &FunctionPlan) -> String {
        format!(
            "{}-fork-{}",
            plan.name,
            self.fork_names.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Makes the next spare fork in the background, unless there is one.
    fn refill(&self, template: &Arc<Template>, plan: &FunctionPlan) {
        {
            let mut st = self.lock();
            if st.spare.is_some() || st.refilling {
                return;
            }
            st.refilling = true;
        }
        let (state, template, net, cgroups, plan, name) = (
            Arc::clone(&self.state),
            Arc::clone(template),
            self.config.net,
            self.sandbox.cgroups.clone(),
            plan.clone(),
            self.fork_name(plan),
        );
        tokio::spawn(async move {
            let made = prepare(Arc::clone(&template), net, cgroups, &plan, name).await;
            let unwanted = {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.refilling = false;
                let current = st
                    .template
                    .as_ref()
                    .is_some_and(|t| Arc::ptr_eq(t, &template) && t.alive());
                match made {
                    Ok(p) if current && st.spare.is_none() => {
                        st.spare = Some(p);
                        None
                    }
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::debug!(function = %plan.name, error = %e, "no spare fork");
                        None
                    }
                }
            };
            if let Some(p) = unwanted {
                p.discard().await;
            }
        });
    }

    /// Gives a prepared fork its Runtime API and environment: it becomes `req`'s instance.
    async fn finish(
        &self,
        prepared: Prepared,
        req: &LaunchRequest<'_>,
    ) -> Result<Launched, TemplateError> {
        let (ours, pid, cgroup, netns, listener) = (
            prepared.socket,
            prepared.pid,
            prepared.cgroup,
            prepared.netns,
            prepared.listener,
        );
        for (pipe, stream) in [(prepared.out, "stdout"), (prepared.err, "stderr")] {
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)
                .map_err(|e| TemplateError::Fork(e.to_string()))?;
            pump_lines(pipe, req.instance.to_owned(), stream, Arc::clone(req.logs));
        }
        let api_addr = serve_api(req, listener)?;
        let slirp = self.exec.outbound(netns.as_ref()).await?;
        let go = Go {
            env: instance_env(req.plan, req.instance, api_addr, None),
        };
        let mut line = serde_json::to_vec(&go).map_err(|e| TemplateError::Fork(e.to_string()))?;
        line.push(b'\n');
        (&ours)
            .write_all(&line)
            .map_err(|e| TemplateError::Fork(format!("the fork is gone: {e}")))?;
        let control = Arc::new(ForkControl {
            pid,
            socket: ours
                .try_clone()
                .map_err(|e| TemplateError::Fork(e.to_string()))?,
            alive: AtomicBool::new(true),
            cgroup: cgroup.clone(),
        });
        ours.set_nonblocking(true)
            .map_err(|e| TemplateError::Fork(e.to_string()))?;
        let socket = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| TemplateError::Fork(e.to_string()))?;
        let idle = req.plan.spec.idle_timeout.0;
        {
            let mut st = self.lock();
            st.live += 1;
            st.epoch += 1;
        }
        let state = Arc::clone(&self.state);
        let reaped = Arc::clone(&control);
        let memory = req.plan.spec.memory.0;
        let exited = async move {
            let status = read_exit(socket).await;
            reaped.alive.store(false, Ordering::SeqCst);
            let exit = ended(cgroup, memory, status).await;
            drop(slirp);
            drop(netns);
            forked_instance_gone(&state, idle);
            exit
        }
        .boxed();
        Ok(Launched { control, exited })
    }

    /// The template, for status.
    pub fn status(&self) -> TemplateStatus {
        let st = self.lock();
        let running = st.template.as_ref().filter(|t| t.alive());
        TemplateStatus {
            state: match (&st.off, running) {
                (Some(_), _) => "off",
                (None, Some(_)) => "ready",
                (None, None) => "stopped",
            }
            .to_owned(),
            pid: running.map(|t| t.pid),
            forks: self.forks.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            off: st.off.clone(),
        }
    }
}

/// A forked instance ended: once the function has had none for `idle`, its template
/// stops too.
fn forked_instance_gone(state: &Arc<Mutex<State>>, idle: Duration) {
    let epoch = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.live = st.live.saturating_sub(1);
        st.epoch += 1;
        if st.live > 0 {
            return;
        }
        st.epoch
    };
    let state = Arc::clone(state);
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        tokio::time::sleep(idle).await;
        let (stopped, spare) = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.live > 0 || st.epoch != epoch {
                return;
            }
            (st.template.take(), st.spare.take())
        };
        if let Some(t) = stopped {
            tracing::info!(pid = t.pid, "template idle: stopping it");
            t.stop();
        }
        if let Some(spare) = spare {
            spare.discard().await;
        }
    });
}

/// Whether the processes in a template's cgroup are the template alone: `root` (the
/// process thaw started) and, under bubblewrap, the one child it runs.
fn alone(root: u32, pids: &[u32], bwrap: bool) -> Result<(), String> {
    let allowed = if bwrap { 2 } else { 1 };
    let ours = |p: &u32| *p == root || (bwrap && parent_of(*p) == Some(root));
    if pids.len() <= allowed && pids.iter().all(ours) {
        Ok(())
    } else {
        Err(format!(
            "its init left other processes running ({} in its cgroup); a template must be alone to fork safely",
            pids.len()
        ))
    }
}

/// The parent of `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits for the template's [`READY`]. Blocking.
fn read_ready(mut socket: UnixStream) -> Result<(), String> {
    let mut got = [0u8; READY.len()];
    socket
        .read_exact(&mut got)
        .map_err(|e| format!("it closed its control socket while loading ({e})"))?;
    if got == READY {
        Ok(())
    } else {
        Err("it wrote something other than ready".into())
    }
}

impl Launcher for TemplateLauncher {
    fn launch<'a>(
        &'a self,
        req: LaunchRequest<'a>,
    ) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        self.launch_or_exec(req).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (template, spare) = {
                let mut st = self.lock();
                (st.template.take(), st.spare.take())
            };
            if let Some(t) = template {
                t.stop();
            }
            if let Some(spare) = spare {
                spare.discard().await;
            }
            self.exec.close().await;
        }
        .boxed()
    }

    fn template(&self) -> Option<TemplateStatus> {
        Some(self.status())
    }
}
