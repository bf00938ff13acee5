//! The scheduler of one function: a bounded queue, its instances, and the rules that
//! start and stop them.
//!
//! - **Scale up:** when queued work exceeds the capacity of instances already starting,
//!   and the count is under `max_containers`, start one. `min_containers` are started at
//!   boot and replaced when they go.
//! - **Dispatch:** a queued call goes to a ready instance with fewer than `concurrency`
//!   calls in flight.
//! - **Scale down:** the reaper stops instances idle for `idle_timeout` (SIGTERM, a grace
//!   period, SIGKILL), never below `min_containers`.
//! - **Faults:** an exit with calls in flight fails them as `FunctionCrashed`; past
//!   `timeout` the instance is killed and the caller gets `Timeout`; an exit before the
//!   first `next` is an init failure, reported with the function's own stderr, and
//!   restarts back off exponentially so a crash loop cannot spin.
//!
//! State lives behind one `std::sync::Mutex`, never held across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thaw_manifest::FunctionPlan;
use tokio::sync::{oneshot, watch};

use crate::fetch::SnapshotFetcher;
use crate::launcher::{signal_group, ExecLauncher};
use crate::logs::LogRing;
use crate::metrics::Metrics;
use crate::runtime_api::{new_request_id, InstanceApi, Invocation, Lifecycle, Outcome};

/// How long a stopped instance gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a call did not produce a function outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The queue is at `max_queue`.
    #[error("queue full: {0} calls waiting")]
    QueueFull(usize),
    /// The instance exited while running the call.
    #[error("function crashed: {0}")]
    FunctionCrashed(String),
    /// The function could not initialise.
    #[error("function failed to initialise: {0}")]
    InitFailed(String),
    /// The call ran past `timeout`; the instance was killed.
    #[error("function timed out after {0:?}")]
    Timeout(Duration),
    /// thaw is shutting down.
    #[error("thaw is shutting down")]
    ShuttingDown,
}

impl CallError {
    /// The stable type on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QueueFull(_) => "QueueFull",
            Self::FunctionCrashed(_) => "FunctionCrashed",
            Self::InitFailed(_) => "InitError",
            Self::Timeout(_) => "Timeout",
            Self::ShuttingDown => "ShuttingDown",
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, CallError>>;

#[derive(Debug)]
struct Pending {
    payload: Bytes,
    reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
}

#[derive(Debug)]
struct Instance {
    phase: Phase,
    api: Option<Arc<InstanceApi>>,
    pid: Option<u32>,
    in_flight: u32,
    idle_since: Instant,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    instances: BTreeMap<u64, Instance>,
    next_id: u64,
    /// The last init failure: its message, when restarts may resume, and the next backoff.
    init_failure: Option<(String, Instant, Duration)>,
    retry_scheduled: bool,
    cold_starts: u64,
}

/// A snapshot of a function's live state, for `/v1/functions` and `thaw status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    /// Instances starting.
    pub starting: usize,
    /// Ready instances with nothing in flight.
    pub idle: usize,
    /// Ready instances with calls in flight.
    pub busy: usize,
    /// Instances being stopped.
    pub stopping: usize,
    /// Calls waiting for an instance.
    pub queue_depth: usize,
    /// Calls in flight.
    pub in_flight: u32,
    /// Cold starts since boot.
    pub cold_starts: u64,
    /// Instance ids and pids.
    pub instances: Vec<InstanceStatus>,
    /// The last init failure's message, while restarts are backing off.
    pub init_error: Option<String>,
}

/// One instance in a [`PoolStatus`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// starting, idle, busy or stopping.
    pub state: &'static str,
    /// OS process id.
    pub pid: Option<u32>,
    /// Calls in flight.
    pub in_flight: u32,
}

/// One function's scheduler.
#[derive(Debug)]
pub struct FunctionPool {
    plan: FunctionPlan,
    state: Mutex<State>,
    launcher: ExecLauncher,
    /// The function's captured output.
    pub logs: Arc<LogRing>,
    metrics: Arc<Metrics>,
    closing: AtomicBool,
    me: Weak<FunctionPool>,
    /// Pulls snapshots missing from the local cache.
    fetcher: Option<Arc<dyn SnapshotFetcher>>,
    /// The plan with every snapshot local, once they have been pulled.
    local_plan: tokio::sync::Mutex<Option<FunctionPlan>>,
}

impl FunctionPool {
    /// Creates the pool, starts `min_containers` and the idle reaper.
    pub fn start(
        plan: FunctionPlan,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        fetcher: Option<Arc<dyn SnapshotFetcher>>,
    ) -> Arc<Self> {
        let pool = Arc::new_cyclic(|me| Self {
            plan,
            state: Mutex::new(State::default()),
            launcher: ExecLauncher,
            logs: Arc::new(LogRing::default()),
            metrics,
            closing: AtomicBool::new(false),
            me: me.clone(),
            fetcher,
            local_plan: tokio::sync::Mutex::new(None),
        });
        pool.pump();
        tokio::spawn(reaper(Arc::downgrade(&pool), shutdown));
        pool
    }

    /// The function's resolved plan.
    pub fn plan(&self) -> &FunctionPlan {
        &self.plan
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a thaw bug; keep serving regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn name(&self) -> &str {
        self.plan.name.as_str()
    }

    /// Runs one call: queue it, wait for an instance, wait for its outcome.
    pub async fn invoke(&self, payload: Bytes) -> Result<Outcome, CallError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            if self.closing.load(Ordering::SeqCst) {
                return Err(CallError::ShuttingDown);
            }
            let any_ready = st.instances.values().any(|i| i.phase == Phase::Ready);
            if let Some((msg, until, _)) = &st.init_failure {
                if !any_ready && Instant::now() < *until {
                    self.metrics.error(self.name(), "InitError");
                    return Err(CallError::InitFailed(msg.clone()));
                }
            }
            if st.queue.len() >= self.plan.spec.max_queue as usize {
                self.metrics.error(self.name(), "QueueFull");
                return Err(CallError::QueueFull(st.queue.len()));
            }
            st.queue.push_back(Pending { payload, reply });
        }
        self.pump();
        let result = rx
            .await
            .unwrap_or_else(|_| Err(CallError::FunctionCrashed("call was dropped".into())));
        match &result {
            Ok(Outcome::Error(d)) => self.metrics.error(self.name(), &d.error_type),
            Ok(Outcome::Response(_)) => {}
            Err(e) => self.metrics.error(self.name(), e.kind()),
        }
        self.metrics.invocation(self.name(), started.elapsed());
        result
    }

    /// Dispatches queued calls to free instances and starts instances as the rules say.
    fn pump(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let concurrency = self.plan.spec.concurrency;
        let mut st = self.lock();
        // Dispatch.
        while !st.queue.is_empty() {
            let free = st
                .instances
                .iter()
                .filter(|(_, i)| i.phase == Phase::Ready && i.in_flight < concurrency)
                .min_by_key(|(_, i)| i.in_flight)
                .map(|(id, _)| *id);
            let Some(id) = free else { break };
            let Some(pending) = st.queue.pop_front() else {
                break;
            };
            let Some(inst) = st.instances.get_mut(&id) else {
                break;
            };
            inst.in_flight += 1;
            let Some(api) = inst.api.clone() else { break };
            tokio::spawn(Arc::clone(&me).run_call(id, api, pending));
        }
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        // Scale up.
        let now = Instant::now();
        let backing_off = st
            .init_failure
            .as_ref()
            .is_some_and(|(_, until, _)| now < *until);
        loop {
            let live = st
                .instances
                .values()
                .filter(|i| i.phase != Phase::Stopping)
                .count();
            let starting = st
                .instances
                .values()
                .filter(|i| i.phase == Phase::Starting)
                .count();
            let below_min = live < self.plan.spec.min_containers as usize;
            let demand = st.queue.len() > starting * concurrency as usize;
            if live >= self.plan.spec.max_containers as usize
                || !(below_min || demand)
                || backing_off
            {
                break;
            }
            st.next_id += 1;
            let id = st.next_id;
            st.instances.insert(
                id,
                Instance {
                    phase: Phase::Starting,
                    api: None,
                    pid: None,
                    in_flight: 0,
                    idle_since: now,
                    started: now,
                },
            );
            tokio::spawn(Arc::clone(&me).run_instance(id));
        }
        // While backing off, come back when restarts may resume.
        if backing_off
            && !st.retry_scheduled
            && (!st.queue.is_empty() || self.plan.spec.min_containers > 0)
        {
            st.retry_scheduled = true;
            let until = st.init_failure.as_ref().map_or(now, |f| f.1);
            let me = Arc::clone(&me);
            tokio::spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                me.lock().retry_scheduled = false;
                me.pump();
            });
        }
    }

    fn instance_name(&self, id: u64) -> String {
        format!("{}-{id}", self.name())
    }

    /// One call on one instance.
    async fn run_call(self: Arc<Self>, id: u64, api: Arc<InstanceApi>, pending: Pending) {
        let timeout = self.plan.spec.timeout.0;
        let (reply, rx) = oneshot::channel();
        let invocation = Invocation {
            id: new_request_id(),
            payload: pending.payload,
            timeout,
            reply,
        };
        let result = if api.submit(invocation).await.is_err() {
            Err(CallError::FunctionCrashed(
                "instance stopped before the call was delivered".into(),
            ))
        } else {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_)) => {
                    // The instance's exit dropped our reply; give its last stderr a moment
                    // to be read so the caller sees why.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let tail = self.logs.instance_tail(&self.instance_name(id), 5);
                    let why = if tail.is_empty() {
                        "the instance exited".to_owned()
                    } else {
                        tail
                    };
                    Err(CallError::FunctionCrashed(why))
                }
                Err(_) => {
                    self.kill(id);
                    Err(CallError::Timeout(timeout))
                }
            }
        };
        let _ = pending.reply.send(result);
        {
            let mut st = self.lock();
            if let Some(inst) = st.instances.get_mut(&id) {
                inst.in_flight = inst.in_flight.saturating_sub(1);
                inst.idle_since = Instant::now();
            }
        }
        self.pump();
    }

    /// The plan to launch with: every snapshot in the local cache. Snapshots the cache
    /// lacked at boot are pulled from the snapshot store here, once, by the first cold
    /// start; later starts reuse the result.
    async fn launch_plan(&self) -> Result<FunctionPlan, String> {
        if self.plan.missing_snapshots.is_empty() {
            return Ok(self.plan.clone());
        }
        let mut local = self.local_plan.lock().await;
        if let Some(p) = local.as_ref() {
            return Ok(p.clone());
        }
        let Some(fetcher) = &self.fetcher else {
            return Err(format!(
                "snapshots {:?} are not in the local cache and no snapshot store is configured",
                self.plan.missing_snapshots
            ));
        };
        let mut plan = self.plan.clone();
        for (role, snapshot) in &self.plan.missing_snapshots {
            let t = Instant::now();
            let dir = fetcher.fetch(snapshot).await?;
            tracing::info!(function = self.name(), snapshot, pull_ms = t.elapsed().as_millis() as u64, dir = %dir.display(), "snapshot pulled from the store");
            match role {
                None => plan.snapshot_dir = Some(dir),
                Some(r) => {
                    plan.snapshot_dirs.insert(r.clone(), dir);
                }
            }
        }
        plan.missing_snapshots.clear();
        *local = Some(plan.clone());
        Ok(plan)
    }

    /// Starts instance `id`, waits for it to be ready, then watches it until it exits.
    async fn run_instance(self: Arc<Self>, id: u64) {
        let name = self.instance_name(id);
        let started = Instant::now();
        let plan = match self.launch_plan().await {
            Ok(p) => p,
            Err(msg) => return self.init_failed(id, msg),
        };
        let api = match InstanceApi::bind().await {
            Ok(api) => Arc::new(api),
            Err(e) => return self.init_failed(id, format!("cannot bind a Runtime API port: {e}")),
        };
        let mut child = match self.launcher.spawn(&plan, api.addr(), &name, &self.logs) {
            Ok(child) => child,
            Err(e) => {
                return self.init_failed(
                    id,
                    format!("cannot start {}: {e}", self.plan.binary_path.display()),
                )
            }
        };
        let pid = child.id();
        {
            let mut st = self.lock();
            match st.instances.get_mut(&id) {
                Some(inst) => {
                    inst.pid = pid;
                    inst.api = Some(Arc::clone(&api));
                }
                None => return,
            }
        }
        tracing::info!(function = self.name(), instance = %name, pid, "instance starting");
        let mut lifecycle = api.lifecycle();
        let ready = tokio::select! {
            r = async { lifecycle.wait_for(|l| *l != Lifecycle::Initialising).await.map(|l| l.clone()) } => match r {
                Ok(Lifecycle::InitFailed(d)) => Err(format!("{}: {}", d.error_type, d.error_message)),
                Ok(_) => Ok(()),
                Err(_) => Err("runtime api stopped".to_owned()),
            },
            status = child.wait() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = self.logs.instance_tail(&name, 10);
                let code = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(if tail.is_empty() { format!("exited before its first next ({code})") } else { tail })
            }
            () = tokio::time::sleep(self.plan.spec.startup_timeout.0) => {
                Err(format!("did not reach its first next within {:?}", self.plan.spec.startup_timeout.0))
            }
        };
        if let Err(msg) = ready {
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            let _ = child.wait().await;
            return self.init_failed(id, msg);
        }
        let cold = started.elapsed();
        {
            let mut st = self.lock();
            st.init_failure = None;
            st.cold_starts += 1;
            if let Some(inst) = st.instances.get_mut(&id) {
                inst.phase = if inst.phase == Phase::Stopping {
                    Phase::Stopping
                } else {
                    Phase::Ready
                };
                inst.idle_since = Instant::now();
            }
        }
        self.metrics.cold_start(self.name(), cold);
        tracing::info!(function = self.name(), instance = %name, cold_start_ms = cold.as_millis() as u64, "instance ready");
        self.pump();

        let status = child.wait().await;
        api.abandon_in_flight();
        let removed = self.lock().instances.remove(&id);
        if let Some(inst) = removed {
            self.metrics.billed(self.name(), inst.started.elapsed());
            if inst.phase != Phase::Stopping {
                tracing::warn!(function = self.name(), instance = %name, ?status, "instance exited");
            }
        }
        self.pump();
    }

    fn init_failed(&self, id: u64, msg: String) {
        tracing::warn!(function = self.name(), instance = %self.instance_name(id), error = %msg, "init failed");
        let failed: Vec<Pending> = {
            let mut st = self.lock();
            if let Some(inst) = st.instances.remove(&id) {
                self.metrics.billed(self.name(), inst.started.elapsed());
            }
            let backoff = st
                .init_failure
                .as_ref()
                .map_or(BACKOFF_START, |f| (f.2 * 2).min(BACKOFF_MAX));
            st.init_failure = Some((msg.clone(), Instant::now() + backoff, backoff));
            // Nothing can serve the queue now; tell its callers why rather than let them wait.
            if st.instances.values().any(|i| i.phase == Phase::Ready) {
                Vec::new()
            } else {
                st.queue.drain(..).collect()
            }
        };
        for p in failed {
            let _ = p.reply.send(Err(CallError::InitFailed(msg.clone())));
        }
        self.pump();
    }

    /// Kills an instance now (timeout): SIGKILL to its group.
    fn kill(&self, id: u64) {
        let mut st = self.lock();
        if let Some(inst) = st.instances.get_mut(&id) {
            inst.phase = Phase::Stopping;
            if let Some(pid) = inst.pid {
                signal_group(pid, libc::SIGKILL);
            }
        }
    }

    /// Stops an instance gracefully: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    fn stop(&self, st: &mut State, id: u64) {
        if let Some(inst) = st.instances.get_mut(&id) {
            inst.phase = Phase::Stopping;
            if let Some(pid) = inst.pid {
                signal_group(pid, libc::SIGTERM);
                let me = self.me.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(STOP_GRACE).await;
                    if let Some(me) = me.upgrade() {
                        if me.lock().instances.contains_key(&id) {
                            signal_group(pid, libc::SIGKILL);
                        }
                    }
                });
            }
        }
    }

    /// Stops instances idle past `idle_timeout`, keeping `min_containers`.
    fn reap_idle(&self) {
        let idle_timeout = self.plan.spec.idle_timeout.0;
        let min = self.plan.spec.min_containers as usize;
        let mut st = self.lock();
        let mut live = st
            .instances
            .values()
            .filter(|i| i.phase != Phase::Stopping)
            .count();
        let idle: Vec<u64> = st
            .instances
            .iter()
            .filter(|(_, i)| {
                i.phase == Phase::Ready
                    && i.in_flight == 0
                    && i.idle_since.elapsed() >= idle_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if live <= min {
                break;
            }
            tracing::info!(function = self.name(), instance = %self.instance_name(id), "stopping idle instance");
            self.stop(&mut st, id);
            live -= 1;
        }
    }

    /// Live state.
    pub fn status(&self) -> PoolStatus {
        let st = self.lock();
        let mut s = PoolStatus {
            starting: 0,
            idle: 0,
            busy: 0,
            stopping: 0,
            queue_depth: st.queue.len(),
            in_flight: 0,
            cold_starts: st.cold_starts,
            instances: Vec::new(),
            init_error: st.init_failure.as_ref().map(|f| f.0.clone()),
        };
        for (id, i) in &st.instances {
            let state = match (i.phase, i.in_flight) {
                (Phase::Starting, _) => "starting",
                (Phase::Stopping, _) => "stopping",
                (Phase::Ready, 0) => "idle",
                (Phase::Ready, _) => "busy",
            };
            match state {
                "starting" => s.starting += 1,
                "stopping" => s.stopping += 1,
                "idle" => s.idle += 1,
                _ => s.busy += 1,
            }
            s.in_flight += i.in_flight;
            s.instances.push(InstanceStatus {
                id: self.instance_name(*id),
                state,
                pid: i.pid,
                in_flight: i.in_flight,
            });
        }
        s
    }

    /// Refuses new calls and fails queued ones; in-flight calls continue.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let queued: Vec<Pending> = self.lock().queue.drain(..).collect();
        for p in queued {
            let _ = p.reply.send(Err(CallError::ShuttingDown));
        }
    }

    /// Calls still in flight.
    pub fn in_flight(&self) -> u32 {
        self.lock().instances.values().map(|i| i.in_flight).sum()
    }

    /// SIGTERM every instance, then SIGKILL whatever is left after `grace`, and wait until
    /// every child has been reaped.
    pub async fn stop_all(&self, grace: Duration) {
        let pids: Vec<u32> = {
            let mut st = self.lock();
            let ids: Vec<u64> = st.instances.keys().copied().collect();
            for id in &ids {
                if let Some(inst) = st.instances.get_mut(id) {
                    inst.phase = Phase::Stopping;
                }
            }
            st.instances.values().filter_map(|i| i.pid).collect()
        };
        for pid in &pids {
            signal_group(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !self.lock().instances.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left: Vec<u32> = self
            .lock()
            .instances
            .values()
            .filter_map(|i| i.pid)
            .collect();
        for pid in &left {
            signal_group(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.lock().instances.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The idle reaper: a background task that stops when thaw shuts down.
async fn reaper(pool: Weak<FunctionPool>, mut shutdown: watch::Receiver<bool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.plan.spec.idle_timeout.0 / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        match pool.upgrade() {
            Some(p) => p.reap_idle(),
            None => return,
        }
    }
}
