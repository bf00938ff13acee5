//! The fake launcher and the harness the scheduler tests share (see the module docs of
//! [`super`] for what a fake instance does with each payload).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use thaw_protocol::Diagnostic;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::sleep;

use super::super::{CallError, FunctionPool};
use crate::launcher::{
    InstanceControl, InstanceExit, LaunchError, LaunchRequest, Launched, Launcher,
};
use crate::logs::LogRing;
use crate::metrics::Metrics;
use crate::runtime_api::{InstanceApi, Outcome};
use crate::sandbox::Sandbox;

// ---------------------------------------------------------------------------------------
// The fake launcher.

/// What the fake saw, for tests to assert on.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) launches: AtomicUsize,
    pub(super) kills: AtomicUsize,
    pub(super) terminates: AtomicUsize,
    /// Instances started and not yet exited.
    pub(super) live: AtomicUsize,
    pub(super) max_live: AtomicUsize,
    /// Calls an instance has taken and not yet answered (or died with).
    pub(super) calls: AtomicUsize,
    pub(super) max_calls: AtomicUsize,
    /// Calls answered.
    pub(super) answered: AtomicUsize,
    /// The size of every `thaw_batch` envelope an instance took.
    pub(super) batches: Mutex<Vec<usize>>,
}

impl Counters {
    pub(super) fn get(a: &AtomicUsize) -> usize {
        a.load(Ordering::SeqCst)
    }
    pub(super) fn launches(&self) -> usize {
        Self::get(&self.launches)
    }
    pub(super) fn kills(&self) -> usize {
        Self::get(&self.kills)
    }
    pub(super) fn terminates(&self) -> usize {
        Self::get(&self.terminates)
    }
    pub(super) fn live(&self) -> usize {
        Self::get(&self.live)
    }
    pub(super) fn max_live(&self) -> usize {
        Self::get(&self.max_live)
    }
    pub(super) fn max_calls(&self) -> usize {
        Self::get(&self.max_calls)
    }
    pub(super) fn answered(&self) -> usize {
        Self::get(&self.answered)
    }
    pub(super) fn batches(&self) -> Vec<usize> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

pub(super) fn bump(cur: &AtomicUsize, max: &AtomicUsize) {
    let n = cur.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(n, Ordering::SeqCst);
}

/// Counts one call in an instance's hands for as long as it lives (a handler aborted by
/// its instance's exit drops it too).
#[derive(Debug)]
pub(super) struct CallGuard(Arc<Counters>);

impl CallGuard {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        bump(&c.calls, &c.max_calls);
        Self(Arc::clone(c))
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a failing instance fails to initialise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InitFail {
    /// Posts `/runtime/init/error`, then waits to be killed.
    Report,
    /// Writes to stderr and exits before its first `next`.
    Crash,
    /// Never polls `next`.
    Hang,
    /// Killed at its memory limit while initialising.
    Oom,
}

/// The fake's behaviour, per test.
#[derive(Debug, Clone, Copy)]
pub(super) struct Behaviour {
    /// Time from launch to the first `next` (or the init failure).
    pub(super) init_delay: Duration,
    /// The first this many launches fail to initialise...
    pub(super) fail_init: usize,
    /// ...this way.
    pub(super) init_fail: InitFail,
    /// Instances ignore SIGTERM (only SIGKILL stops them).
    pub(super) ignore_terminate: bool,
    /// Failing launches fail after this long instead of `init_delay`.
    pub(super) fail_init_delay: Option<Duration>,
    /// Takes its next call only when the last one is answered, as a runtime that polls
    /// `next` serially, whatever the concurrency.
    pub(super) serial: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            init_delay: Duration::from_millis(10),
            fail_init: 0,
            init_fail: InitFail::Report,
            ignore_terminate: false,
            fail_init_delay: None,
            serial: false,
        }
    }
}

pub(super) const INIT_ERROR: &str = "Runtime.ConfigError: MODEL_PATH is not set";
pub(super) const CRASH_LINE: &str = "thread 'main' panicked: crash requested";
pub(super) const INIT_CRASH_LINE: &str = "thread 'main' panicked: cannot open the model";

#[derive(Debug)]
pub(super) struct FakeLauncher {
    pub(super) counters: Arc<Counters>,
    pub(super) behaviour: Behaviour,
}

/// An instance's signals: they set how it ends, which its task watches.
#[derive(Debug)]
pub(super) struct FakeControl {
    pub(super) counters: Arc<Counters>,
    pub(super) signal: watch::Sender<Option<InstanceExit>>,
    pub(super) ignore_terminate: bool,
}

impl FakeControl {
    pub(super) fn end(&self, how: &str) {
        self.signal.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(InstanceExit::Exited(how.to_owned()));
                true
            } else {
                false
            }
        });
    }
}

impl InstanceControl for FakeControl {
    fn pid(&self) -> Option<u32> {
        None
    }
    fn terminate(&self) {
        self.counters.terminates.fetch_add(1, Ordering::SeqCst);
        if !self.ignore_terminate {
            self.end("signal: 15 (SIGTERM)");
        }
    }
    fn kill(&self) {
        self.counters.kills.fetch_add(1, Ordering::SeqCst);
        self.end("signal: 9 (SIGKILL)");
    }
}

impl Launcher for FakeLauncher {
    fn launch<'a>(
        &'a self,
        req: LaunchRequest<'a>,
    ) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        let n = self.counters.launches.fetch_add(1, Ordering::SeqCst) + 1;
        bump(&self.counters.live, &self.counters.max_live);
        let (signal, signalled) = watch::channel(None);
        let (done, exited) = oneshot::channel();
        let control = Arc::new(FakeControl {
            counters: Arc::clone(&self.counters),
            signal,
            ignore_terminate: self.behaviour.ignore_terminate,
        });
        let instance = FakeInstance {
            name: req.instance.to_owned(),
            api: req.api,
            logs: Arc::clone(req.logs),
            counters: Arc::clone(&self.counters),
            signalled,
            init_delay: match self.behaviour.fail_init_delay {
                Some(d) if n <= self.behaviour.fail_init => d,
                _ => self.behaviour.init_delay,
            },
            init_fail: (n <= self.behaviour.fail_init).then_some(self.behaviour.init_fail),
            serial: self.behaviour.serial,
        };
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            let exit = instance.run().await;
            counters.live.fetch_sub(1, Ordering::SeqCst);
            let _ = done.send(exit);
        });
        let launched = Launched {
            control,
            exited: Box::pin(async move {
                exited
                    .await
                    .unwrap_or_else(|_| InstanceExit::Exited("lost".into()))
            }),
        };
        Box::pin(async move { Ok(launched) })
    }
}

/// One fake instance: the task that plays the function.
#[derive(Debug)]
pub(super) struct FakeInstance {
    pub(super) name: String,
    pub(super) api: Arc<InstanceApi>,
    pub(super) logs: Arc<LogRing>,
    pub(super) counters: Arc<Counters>,
    pub(super) signalled: watch::Receiver<Option<InstanceExit>>,
    pub(super) init_delay: Duration,
    pub(super) init_fail: Option<InitFail>,
    pub(super) serial: bool,
}

/// Resolves once the instance is signalled to stop, with how it ended.
pub(super) async fn stopped(rx: &mut watch::Receiver<Option<InstanceExit>>) -> InstanceExit {
    let how = rx.wait_for(Option::is_some).await.map(|exit| exit.clone());
    match how {
        Ok(exit) => exit.unwrap_or_else(|| InstanceExit::Exited("?".into())),
        // The control is gone without a signal: nothing can stop us any more.
        Err(_) => std::future::pending().await,
    }
}

impl FakeInstance {
    pub(super) async fn run(mut self) -> InstanceExit {
        tokio::select! {
            () = sleep(self.init_delay) => {}
            exit = stopped(&mut self.signalled) => return exit,
        }
        match self.init_fail {
            None => {}
            Some(InitFail::Report) => {
                self.api.init_failed(Diagnostic::new(
                    "Runtime.ConfigError",
                    "MODEL_PATH is not set",
                ));
                return stopped(&mut self.signalled).await;
            }
            Some(InitFail::Crash) => {
                self.logs.push(&self.name, "stderr", INIT_CRASH_LINE.into());
                return InstanceExit::Exited("exit status: 101".into());
            }
            Some(InitFail::Hang) => return stopped(&mut self.signalled).await,
            Some(InitFail::Oom) => return InstanceExit::OutOfMemory { limit: 64 << 20 },
        }
        // Handlers of calls in progress: aborted when the instance exits.
        let mut handlers = JoinSet::new();
        loop {
            let (id, payload) = tokio::select! {
                exit = stopped(&mut self.signalled) => return exit,
                next = self.api.next_invocation() => match next {
                    Some(next) => next,
                    None => return InstanceExit::Exited("runtime api gone".into()),
                },
            };
            let guard = CallGuard::new(&self.counters);
            let doc: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            let batch = doc[thaw_protocol::batch::BATCH_KEY].as_array().cloned();
            if let (Some(items), Ok(mut sizes)) = (&batch, self.counters.batches.lock()) {
                sizes.push(items.len());
            }
            let in_batch = |key: &str| batch.iter().flatten().any(|d| d[key] == true);
            if doc["crash"] == true || in_batch("crash") {
                self.logs.push(&self.name, "stderr", CRASH_LINE.into());
                return InstanceExit::Exited("exit status: 101".into());
            }
            if let Some(limit) = doc["oom"].as_u64() {
                return InstanceExit::OutOfMemory { limit };
            }
            if let Some(ms) = doc["stall_then_crash_ms"].as_u64() {
                tokio::select! {
                    () = sleep(Duration::from_millis(ms)) => {}
                    exit = stopped(&mut self.signalled) => return exit,
                }
                self.logs.push(&self.name, "stderr", CRASH_LINE.into());
                return InstanceExit::Exited("exit status: 101".into());
            }
            if doc["unusable"] == true {
                self.api
                    .mark_unusable("a worker's connection was dropped".into());
            }
            if doc["stop_polling"] == true {
                // Answers, then never polls `next` again, alive until it is killed.
                self.answer(&id, Outcome::Response(payload));
                return stopped(&mut self.signalled).await;
            }
            if doc["crash_after_reply"] == true {
                self.answer(&id, Outcome::Response(payload));
                return InstanceExit::Exited("exit status: 0".into());
            }
            let api = Arc::clone(&self.api);
            let counters = Arc::clone(&self.counters);
            handlers.spawn(async move {
                let _guard = guard;
                if doc["hang"] == true {
                    std::future::pending::<()>().await;
                }
                if let Some(items) = batch {
                    let ms = items.iter().filter_map(|d| d["sleep_ms"].as_u64()).max();
                    sleep(Duration::from_millis(ms.unwrap_or(0))).await;
                    if api.complete(&id, batch_reply(&items)) {
                        counters.answered.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                sleep(Duration::from_millis(doc["sleep_ms"].as_u64().unwrap_or(0))).await;
                let outcome = match doc["error"].as_str() {
                    Some(msg) => Outcome::Error(Diagnostic::new("Handled", msg)),
                    None => Outcome::Response(payload),
                };
                if api.complete(&id, outcome) {
                    counters.answered.fetch_add(1, Ordering::SeqCst);
                }
            });
            if self.serial {
                tokio::select! {
                    _ = handlers.join_next() => {}
                    exit = stopped(&mut self.signalled) => return exit,
                }
            }
        }
    }

    pub(super) fn answer(&self, id: &str, outcome: Outcome) {
        if self.api.complete(id, outcome) {
            self.counters.answered.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A batch's reply: each item echoed, or its `error` as that item's error.
fn batch_reply(items: &[serde_json::Value]) -> Outcome {
    let replies: Vec<serde_json::Value> = items
        .iter()
        .map(|d| match d["error"].as_str() {
            Some(msg) => {
                serde_json::json!({"error": {"errorType": "Handled", "errorMessage": msg}})
            }
            None => serde_json::json!({ "ok": d }),
        })
        .collect();
    let reply = serde_json::json!({ "thaw_batch": replies });
    Outcome::Response(Bytes::from(reply.to_string()))
}

// ---------------------------------------------------------------------------------------
// Harness.

#[derive(Debug)]
pub(super) struct Harness {
    pub(super) pool: Arc<FunctionPool>,
    pub(super) fake: Arc<Counters>,
    pub(super) _shutdown: watch::Sender<bool>,
}

pub(super) fn start(manifest: &str, behaviour: Behaviour) -> Harness {
    start_full(manifest, behaviour, None)
}

/// The pool of `manifest` on a fake launcher that behaves as `behaviour` says, with an
/// optional snapshot fetcher.
pub(super) fn start_full(
    manifest: &str,
    behaviour: Behaviour,
    fetcher: Option<Arc<dyn crate::fetch::SnapshotFetcher>>,
) -> Harness {
    let plan = crate::test_support::plan(manifest);
    let sandbox = Sandbox::disabled().report(&plan, 0);
    let fake = Arc::new(Counters::default());
    let launcher = Arc::new(FakeLauncher {
        counters: Arc::clone(&fake),
        behaviour,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let pool = FunctionPool::start(
        plan,
        launcher,
        sandbox,
        Arc::new(Metrics::default()),
        shutdown_rx,
        fetcher,
    );
    Harness {
        pool,
        fake,
        _shutdown: shutdown,
    }
}

impl Harness {
    /// Starts a call in the background.
    pub(super) fn call(&self, payload: &str) -> JoinHandle<Result<Outcome, CallError>> {
        let pool = Arc::clone(&self.pool);
        let payload = Bytes::from(payload.to_owned());
        tokio::spawn(async move { pool.invoke(payload).await })
    }

    /// Runs a call to its end.
    pub(super) async fn invoke(&self, payload: &str) -> Result<Outcome, CallError> {
        // Bounded, so a scheduler bug fails the test instead of looping on paused time.
        tokio::time::timeout(
            Duration::from_secs(600),
            self.pool.invoke(payload.to_owned().into()),
        )
        .await
        .expect("call did not finish within 600s")
    }
}

pub(super) async fn outcome(
    call: JoinHandle<Result<Outcome, CallError>>,
) -> Result<Outcome, CallError> {
    tokio::time::timeout(Duration::from_secs(600), call)
        .await
        .expect("call did not finish within 600s")
        .expect("call task")
}

pub(super) fn echoed(r: &Result<Outcome, CallError>, payload: &str) -> bool {
    matches!(r, Ok(Outcome::Response(b)) if b == payload.as_bytes())
}

/// Lets every runnable task run; moves the clock by 1 ms at most.
pub(super) async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

// ---------------------------------------------------------------------------------------
// Scale up and the caps.
