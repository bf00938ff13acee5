//! The scheduler of one function: a bounded queue, its instances, and the rules that
//! start and stop them.
//!
//! - **Scale up:** when queued work exceeds the capacity of instances already starting,
//!   and the count is under `max_containers`, start one. `min_containers` are started at
//!   boot and replaced when they go.
//! - **Dispatch:** queued calls go to a ready instance with fewer than `concurrency`
//!   dispatches in flight; one whose caller has gone away is dropped, never dispatched.
//!   With `batch`, a dispatch takes up to `max_size` queued calls at once, as one
//!   `thaw_batch` envelope ([`dispatch`] has the rules, [`batch`] the wire format).
//! - **Scale down:** the reaper stops instances idle for `idle_timeout` (SIGTERM, a grace
//!   period, SIGKILL), never below `min_containers`.
//! - **Faults:** an exit with calls in flight fails them as `FunctionCrashed`; past
//!   `timeout` the instance is killed and the caller gets `Timeout`; an exit before the
//!   first `next` is an init failure, reported with the function's own stderr, and
//!   restarts back off exponentially so a crash loop cannot spin. Queued calls fail with
//!   it only when no sibling is up or still starting: a sibling keeps the queue.
//!
//! State lives behind one `std::sync::Mutex`, never held across an `.await`. This file is
//! the policy; [`supervise`] is the life of one instance (launch, readiness, exit, signals)
//! through the [`Launcher`] the pool is given, so the policy is unit-tested with a
//! launcher that serves the Runtime API in-process, on paused time.

mod batch;
mod dispatch;
mod supervise;

use self::dispatch::Take;
use self::supervise::reaper;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use thaw_manifest::FunctionPlan;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::fetch::SnapshotFetcher;
use crate::launcher::{InstanceControl, InstanceExit, Launcher};
use crate::logs::{LogLine, LogRing};
use crate::metrics::Metrics;
use crate::runtime_api::{InstanceApi, Outcome, StreamSink};
use crate::sandbox::SandboxReport;

/// How long a stopped instance gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a call's log is given to arrive after its answer: the instance's output comes
/// through a pipe, its answer over HTTP (see `invoke_with_log`).
const LOG_SETTLE: Duration = Duration::from_millis(20);
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
    /// The kernel killed the instance at its memory limit while it ran the call.
    #[error("the instance ran out of memory: it was killed at its limit of {} MiB", .limit >> 20)]
    OutOfMemory {
        /// The limit, bytes.
        limit: u64,
    },
    /// The function's response was over the Runtime API's limit (6 MiB, as on AWS).
    #[error("the function's response is larger than the limit of {} MiB", .limit >> 20)]
    ResponseTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The function's reply to a batch of calls could not be split into one answer per
    /// call (it was not a `thaw_batch` reply of the batch's length).
    #[error("the function's reply to a batch is not a batch reply: {0}")]
    BadBatchReply(String),
    /// The instance streamed a response that broke its framing (its metadata prelude).
    #[error("the function's response stream is malformed: {0}")]
    BadResponseStream(String),
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
            Self::OutOfMemory { .. } => "OutOfMemory",
            Self::ResponseTooLarge { .. } => "ResponseTooLarge",
            Self::BadBatchReply(_) => "BadBatchReply",
            Self::BadResponseStream(_) => "BadResponseStream",
            Self::ShuttingDown => "ShuttingDown",
        }
    }
}

pub(super) type Reply = oneshot::Sender<Result<Outcome, CallError>>;

#[derive(Debug)]
struct Pending {
    payload: Bytes,
    reply: Reply,
    /// When it was queued: its queue wait, and how long a partial batch may be held.
    queued_at: Instant,
    /// Never batched with others: a retry of a call whose batch failed (so one poison
    /// item cannot fail its neighbours twice), or a payload that is not JSON.
    alone: bool,
    /// Given the lines its instance wrote while running it, for a caller that wants
    /// its log (sent before the reply).
    log: Option<oneshot::Sender<Vec<LogLine>>>,
    /// Where a streamed response goes as the instance produces it.
    stream: Option<StreamSink>,
}

/// Whether a call may share a dispatch with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Company {
    /// Batched with other calls when the function has `batch`.
    Batchable,
    /// Always dispatched alone.
    Alone,
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
    control: Option<Arc<dyn InstanceControl>>,
    /// How it ended, set before its in-flight calls are abandoned so they can say why,
    /// and watched by its calls: one dispatched as it exits is not left waiting.
    exit: watch::Receiver<Option<InstanceExit>>,
    in_flight: u32,
    idle_since: Instant,
    started: Instant,
    /// Taking no new calls, and stopped once those in flight are done.
    retiring: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    instances: BTreeMap<u64, Instance>,
    next_id: u64,
    /// The last init failure: its message, when restarts may resume, and the next backoff.
    init_failure: Option<(String, Instant, Duration)>,
    retry_scheduled: bool,
    /// When a held partial batch is due, if a wake-up is scheduled.
    wake_at: Option<Instant>,
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
    /// The warm template its instances are forked from, for a function with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::launcher::TemplateStatus>,
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
    launcher: Arc<dyn Launcher>,
    sandbox: SandboxReport,
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
    /// Creates the pool, starts `min_containers` and the idle reaper. `sandbox` is what
    /// `launcher` gives this function's instances, for status.
    pub fn start(
        plan: FunctionPlan,
        launcher: Arc<dyn Launcher>,
        sandbox: SandboxReport,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        fetcher: Option<Arc<dyn SnapshotFetcher>>,
    ) -> Arc<Self> {
        let pool = Arc::new_cyclic(|me| Self {
            plan,
            state: Mutex::new(State::default()),
            launcher,
            sandbox,
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

    /// What the sandbox gives this function's instances.
    pub fn sandbox(&self) -> &SandboxReport {
        &self.sandbox
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
        self.invoke_with(payload, Company::Batchable).await
    }

    /// Runs one call, alone (never in a batch), and returns with its outcome the lines
    /// its instance wrote while it ran the call, as `LogType=Tail` on the Invoke API gives
    /// them. The instance takes no other call until they are collected; on an instance
    /// with `concurrency` > 1 the calls it runs alongside write into the same window.
    pub async fn invoke_with_log(
        &self,
        payload: Bytes,
    ) -> (Result<Outcome, CallError>, Vec<LogLine>) {
        let (tx, rx) = oneshot::channel();
        let result = self.enqueue(payload, Company::Alone, Some(tx), None).await;
        (result, rx.await.unwrap_or_default())
    }

    /// Runs one call whose response the instance may stream: its parts go to `sink` as
    /// they arrive, and the call then ends as [`Outcome::Streamed`] (or the function's
    /// error, or thaw's). A function that answers in one piece ends it as
    /// [`Outcome::Response`], with nothing sent to `sink`; so does a call dispatched in a
    /// batch (a function with `batch` still batches its URL calls; a batch's reply is one
    /// document). The instance's slot is held until the stream ends.
    pub async fn invoke_streaming(
        &self,
        payload: Bytes,
        sink: StreamSink,
    ) -> Result<Outcome, CallError> {
        self.enqueue(payload, Company::Batchable, None, Some(sink))
            .await
    }

    /// Runs one call that may or may not share a batch with others.
    pub async fn invoke_with(
        &self,
        payload: Bytes,
        company: Company,
    ) -> Result<Outcome, CallError> {
        self.enqueue(payload, company, None, None).await
    }

    async fn enqueue(
        &self,
        payload: Bytes,
        company: Company,
        log: Option<oneshot::Sender<Vec<LogLine>>>,
        stream: Option<StreamSink>,
    ) -> Result<Outcome, CallError> {
        let started = Instant::now();
        let alone = company == Company::Alone
            || (self.plan.spec.batch.is_some() && !batch::is_json(&payload));
        let (reply, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            if self.closing.load(Ordering::SeqCst) {
                return Err(CallError::ShuttingDown);
            }
            // Fail fast while backing off, unless an instance is up or still starting:
            // a sibling about to be ready serves the call.
            let any_live = st.instances.values().any(|i| i.phase != Phase::Stopping);
            if let Some((msg, until, _)) = &st.init_failure {
                if !any_live && Instant::now() < *until {
                    let e = CallError::InitFailed(msg.clone());
                    self.metrics.call_error(self.name(), &e);
                    return Err(e);
                }
            }
            if st.queue.len() >= self.plan.spec.max_queue as usize {
                let e = CallError::QueueFull(st.queue.len());
                self.metrics.call_error(self.name(), &e);
                return Err(e);
            }
            st.queue.push_back(Pending {
                payload,
                reply,
                queued_at: started,
                alone,
                log,
                stream,
            });
        }
        self.pump();
        let result = rx
            .await
            .unwrap_or_else(|_| Err(CallError::FunctionCrashed("call was dropped".into())));
        match &result {
            Ok(Outcome::Error(d)) => self.metrics.function_error(self.name(), &d.error_type),
            Ok(Outcome::Response(_) | Outcome::Streamed { .. }) => {}
            Err(e) => self.metrics.call_error(self.name(), e),
        }
        self.metrics.invocation(self.name(), started.elapsed());
        result
    }

    /// Dispatches queued calls to free instances and starts instances as the rules say.
    fn pump(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let concurrency = self.plan.spec.concurrency;
        let mut st = self.lock();
        // A caller that went away (an HTTP client that disconnected drops the future that
        // holds the receiver) is neither dispatched nor counted as demand.
        st.queue.retain(|p| !p.reply.is_closed());
        // Dispatch.
        let now = Instant::now();
        while !st.queue.is_empty() {
            let free = st
                .instances
                .iter()
                .filter(|(_, i)| i.phase == Phase::Ready && i.in_flight < concurrency)
                .min_by_key(|(_, i)| i.in_flight)
                .map(|(id, _)| *id);
            let Some(id) = free else { break };
            let calls = match self.take(&mut st, now) {
                Take::Calls(calls) => calls,
                Take::Hold(until) => {
                    self.wake_at(&mut st, until);
                    break;
                }
            };
            let Some(inst) = st.instances.get_mut(&id) else {
                break;
            };
            inst.in_flight += 1;
            let Some(api) = inst.api.clone() else { break };
            let exit = inst.exit.clone();
            self.metrics
                .dispatched(self.name(), calls.iter().map(|c| now - c.queued_at));
            tokio::spawn(Arc::clone(&me).run_dispatch(id, api, exit, calls));
        }
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        // Scale up: when the queue is more than the instances starting, and any slot a
        // held partial batch leaves free, will take.
        let per_slot = self
            .plan
            .spec
            .batch
            .as_ref()
            .map_or(1, |b| b.max_size as usize);
        let free_slots: usize = st
            .instances
            .values()
            .filter(|i| i.phase == Phase::Ready)
            .map(|i| concurrency.saturating_sub(i.in_flight) as usize)
            .sum();
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
            let capacity = (starting * concurrency as usize + free_slots) * per_slot;
            let demand = st.queue.len() > capacity;
            if live >= self.plan.spec.max_containers as usize
                || !(below_min || demand)
                || backing_off
            {
                break;
            }
            st.next_id += 1;
            let id = st.next_id;
            let (exit_tx, exit) = watch::channel(None);
            st.instances.insert(
                id,
                Instance {
                    phase: Phase::Starting,
                    api: None,
                    control: None,
                    exit,
                    in_flight: 0,
                    idle_since: now,
                    started: now,
                    retiring: false,
                },
            );
            tokio::spawn(Arc::clone(&me).run_instance(id, exit_tx));
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
                tokio::time::sleep_until(until).await;
                me.lock().retry_scheduled = false;
                me.pump();
            });
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
            template: self.launcher.template(),
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
                pid: i.control.as_ref().and_then(|c| c.pid()),
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
}
