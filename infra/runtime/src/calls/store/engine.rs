//! The engine under the store: opening and locking the state directory, the writer
//! thread and its group commit, its supervision, and the read-only connections.
//!
//! # Group commit
//!
//! Every write is an [`Op`] sent to the writer thread over a bounded channel. The thread
//! takes whatever ops are waiting (up to [`GROUP_MAX`]), begins one `IMMEDIATE`
//! transaction, runs each op inside its own savepoint (an op that errors rolls back only
//! itself), commits, and only then answers each op. Nothing is acknowledged before its
//! commit, and a burst shares one fsync.
//!
//! # Supervision: what a caller sees when the writer fails
//!
//! | failure | the ops in that batch | afterwards |
//! |---|---|---|
//! | an op panics | that op: [`StoreError::Unavailable`], its savepoint rolled back; the others commit | nothing changes |
//! | `BEGIN` fails (after one retry on a fresh connection) | [`StoreError::Unavailable`], none ran | [`Health::check`] fails until a batch commits |
//! | `COMMIT` fails | [`StoreError::Commit`], rolled back | as for `BEGIN` |
//! | the writer panics outside an op | [`StoreError::Unavailable`] (their outcome is unknown only if the panic came after the commit) | the writer restarts on a fresh connection |
//! | more than [`PANIC_BUDGET`] such panics within [`PANIC_WINDOW`] | as above | the writer is stopped: every later op is answered [`StoreError::Unavailable`] at once, and [`Health::check`] says so until thaw restarts |
//!
//! None of these is "shutting down": thaw is up and says its store is not. Outcome records
//! (`finish`, `retry`, `unclaim`) are retried by the store until they commit, so a failed
//! commit never leaves a call `running` (see `calls.rs`).
//!
//! Reads do not come here: see [`super::read`].

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::read::Readers;
use super::{schema, FunctionSettings, StoreError};
use crate::calls::signals::Signals;

/// Most ops committed in one transaction.
const GROUP_MAX: usize = 1024;
/// Panics outside an op the writer survives within [`PANIC_WINDOW`]; one more stops it.
pub const PANIC_BUDGET: usize = 5;
/// See [`PANIC_BUDGET`].
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// The connection and what the writer keeps beside it; ops get `&mut Writer`.
#[derive(Debug)]
pub struct Writer {
    /// The one read-write connection.
    pub(super) conn: Connection,
    /// The last completion sequence number handed out (orders a map's results).
    next_done_seq: i64,
    settings: BTreeMap<String, FunctionSettings>,
}

impl Writer {
    /// A function's settings, or [`FunctionSettings::DEFAULT`].
    pub(super) fn settings(&self, function: &str) -> FunctionSettings {
        self.settings
            .get(function)
            .copied()
            .unwrap_or(FunctionSettings::DEFAULT)
    }

    /// When a result of `function` finished at `now` is collected.
    pub(super) fn expires(&self, function: &str, now: i64) -> i64 {
        let ttl = i64::try_from(self.settings(function).result_ttl.as_millis()).unwrap_or(i64::MAX);
        now.saturating_add(ttl)
    }

    /// The next completion sequence number.
    pub(super) fn take_done_seq(&mut self) -> i64 {
        self.next_done_seq += 1;
        self.next_done_seq
    }
}

/// One write, as the writer thread sees it.
pub(super) trait Op: Send {
    /// Runs inside the op's savepoint; `false` rolls the savepoint back.
    fn apply(&mut self, w: &mut Writer) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn answer(self: Box<Self>, outcome: Result<(), StoreError>);
}

/// An op built from closures: `f` runs on the writer, `after` fires signals on success.
struct Pending<R, F, A> {
    f: Option<F>,
    result: Option<Result<R, StoreError>>,
    after: Option<A>,
    signals: Arc<Signals>,
    tx: Option<oneshot::Sender<Result<R, StoreError>>>,
}

impl<R, F, A> Op for Pending<R, F, A>
where
    R: Send,
    F: FnOnce(&mut Writer) -> Result<R, StoreError> + Send,
    A: FnOnce(&Signals, &R) + Send,
{
    fn apply(&mut self, w: &mut Writer) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = f(w);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(mut self: Box<Self>, outcome: Result<(), StoreError>) {
        let result = outcome.and_then(|()| {
            self.result
                .take()
                .unwrap_or_else(|| Err(StoreError::Unavailable("the operation did not run".into())))
        });
        if let (Ok(r), Some(after)) = (&result, self.after.take()) {
            after(&self.signals, r);
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

/// The writer's state as the rest of thaw sees it.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// The last batch failed, and why; cleared by the next commit.
    failing: Option<String>,
    /// The writer was stopped, and why.
    stopped: Option<String>,
    /// Panics outside an op, recent ones first to go.
    panics: VecDeque<Instant>,
    /// Restarts since thaw started.
    restarts: u64,
    /// Transactions committed, to prove what goes in chunks.
    #[cfg(test)]
    commits: u64,
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, HealthState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` while the writer commits; [`StoreError::Unavailable`] with the reason if its
    /// last batch failed or it was stopped.
    pub fn check(&self) -> Result<(), StoreError> {
        let st = self.lock();
        if let Some(why) = &st.stopped {
            return Err(StoreError::Unavailable(format!(
                "the writer was stopped after {} restarts: {why}; restart thaw",
                st.restarts
            )));
        }
        match &st.failing {
            Some(why) => Err(StoreError::Unavailable(format!(
                "the last commit failed: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// How often the writer has been restarted.
    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    fn committed(&self) {
        let mut st = self.lock();
        st.failing = None;
        #[cfg(test)]
        {
            st.commits += 1;
        }
    }

    /// Transactions committed so far.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.lock().commits
    }

    fn failed(&self, why: &str) {
        self.lock().failing = Some(why.to_owned());
    }

    /// Counts a panic; `true` if the budget is spent and the writer must stop.
    fn panicked(&self, why: &str) -> bool {
        let mut st = self.lock();
        let now = Instant::now();
        while st
            .panics
            .front()
            .is_some_and(|t| now.duration_since(*t) > PANIC_WINDOW)
        {
            st.panics.pop_front();
        }
        st.panics.push_back(now);
        st.failing = Some(format!("the writer panicked: {why}"));
        if st.panics.len() > PANIC_BUDGET {
            st.stopped = Some(why.to_owned());
            true
        } else {
            st.restarts += 1;
            false
        }
    }
}

/// Test-only faults: the next N of each make the writer fail.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `BEGIN` fails.
    Begin,
    /// `COMMIT` fails (and the transaction is rolled back).
    Commit,
    /// The writer panics between `BEGIN` and the first op.
    Panic,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    pending: Mutex<Vec<Fault>>,
}

#[cfg(test)]
impl Faults {
    fn take(&self, fault: Fault) -> bool {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pending.iter().position(|f| *f == fault) {
            Some(i) => {
                pending.remove(i);
                true
            }
            None => false,
        }
    }
}

/// The async side of the engine; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Handle {
    jobs: mpsc::Sender<Box<dyn Op>>,
    readers: Arc<Readers>,
    health: Arc<Health>,
    #[cfg(test)]
    faults: Arc<Faults>,
}

impl Handle {
    /// Creates and locks the state directory, opens and migrates the database, recovers
    /// what a previous run left, and starts the writer thread.
    pub(super) fn open(
        state_dir: &Path,
        settings: BTreeMap<String, FunctionSettings>,
    ) -> Result<Self, StoreError> {
        let dir_err = |source| StoreError::StateDir {
            path: state_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(dir_err)?;
        let lock = File::create(state_dir.join("lock")).map_err(dir_err)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(state_dir.to_owned()));
        }
        let path = state_dir.join("calls.db");
        let mut conn = open_connection(&path)?;
        schema::migrate(&mut conn, &path)?;
        let recovered = super::calls::recover(&conn)?;
        let (released, discarded, cut_off) = super::maps::recover(&conn)?;
        let next_done_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(done_seq), 0) FROM calls", [], |r| {
                r.get(0)
            })?;
        let queued: i64 = conn.query_row(
            "SELECT COUNT(*) FROM calls WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        tracing::info!(
            path = %path.display(), queued, recovered, maps_cut_off = cut_off,
            map_items_released = released, map_items_discarded = discarded, "call store open"
        );
        let health = Arc::new(Health::default());
        #[cfg(test)]
        let faults = Arc::new(Faults::default());
        let engine = Engine {
            writer: Writer {
                conn,
                next_done_seq,
                settings,
            },
            path: path.clone(),
            health: Arc::clone(&health),
            #[cfg(test)]
            faults: Arc::clone(&faults),
        };
        let (jobs, rx) = mpsc::channel::<Box<dyn Op>>(4 * GROUP_MAX);
        std::thread::Builder::new()
            .name("thaw-call-store".into())
            .spawn(move || {
                // The lock lives as long as the thread that writes.
                let _lock = lock;
                engine.supervise(rx);
            })
            .map_err(dir_err)?;
        Ok(Self {
            jobs,
            readers: Arc::new(Readers::new(path)),
            health,
            #[cfg(test)]
            faults,
        })
    }

    pub(super) fn path(&self) -> &Path {
        self.readers.path()
    }

    pub(super) fn health(&self) -> &Health {
        &self.health
    }

    #[cfg(test)]
    pub(super) fn inject(&self, fault: Fault, times: u32) {
        let mut pending = self
            .faults
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.extend(std::iter::repeat_n(fault, times as usize));
    }

    /// Whether the writer was stopped for good (retrying is pointless).
    pub(super) fn stopped(&self) -> bool {
        self.health.lock().stopped.is_some()
    }

    pub(super) async fn write<R, F, A>(
        &self,
        signals: Arc<Signals>,
        f: F,
        after: A,
    ) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R, StoreError> + Send + 'static,
        A: FnOnce(&Signals, &R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op = Box::new(Pending {
            f: Some(f),
            result: None,
            after: Some(after),
            signals,
            tx: Some(tx),
        });
        self.jobs.send(op).await.map_err(|_| {
            StoreError::Unavailable("the call store's writer thread is gone".into())
        })?;
        rx.await.map_err(|_| {
            StoreError::Unavailable(
                "the call store's writer failed while running this operation".into(),
            )
        })?
    }

    pub(super) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

/// The writer's connection, in WAL mode with `synchronous=FULL`.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

/// The writer thread's side.
struct Engine {
    writer: Writer,
    path: PathBuf,
    health: Arc<Health>,
    #[cfg(test)]
    faults: Arc<Faults>,
}

impl Engine {
    /// Serves ops until every handle is gone, restarting after a panic while the budget
    /// lasts; past it, answers every op with the reason, so no caller ever hangs.
    fn supervise(mut self, mut rx: mpsc::Receiver<Box<dyn Op>>) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve(&mut rx))) {
                Ok(()) => return,
                Err(panic) => {
                    let why = panic_message(panic.as_ref());
                    if self.health.panicked(&why) {
                        tracing::error!(error = %why, "call store writer panicked too often; stopped");
                        break;
                    }
                    tracing::error!(error = %why, "call store writer panicked; restarting it");
                    self.restart();
                }
            }
        }
        while let Some(op) = rx.blocking_recv() {
            let why = self
                .health
                .check()
                .err()
                .map_or_else(String::new, |e| e.to_string());
            op.answer(Err(StoreError::Unavailable(why)));
        }
    }

    /// A fresh connection, whatever state the old one was left in.
    fn restart(&mut self) {
        let _ = self.writer.conn.execute_batch("ROLLBACK");
        match open_connection(&self.path) {
            Ok(conn) => self.writer.conn = conn,
            Err(e) => {
                tracing::error!(error = %e, "call store: cannot reopen; keeping the old connection")
            }
        }
    }

    fn serve(&mut self, rx: &mut mpsc::Receiver<Box<dyn Op>>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// One group commit.
    fn commit(&mut self, mut batch: Vec<Box<dyn Op>>) {
        if let Err(why) = self.begin() {
            tracing::error!(error = %why, ops = batch.len(), "call store cannot begin a transaction");
            self.health.failed(&why);
            for op in batch {
                op.answer(Err(StoreError::Unavailable(format!(
                    "cannot begin a transaction: {why}"
                ))));
            }
            return;
        }
        #[cfg(test)]
        if self.faults.take(Fault::Panic) {
            panic!("injected writer panic");
        }
        // Per op: `Some(why)` if it panicked and was rolled back.
        let mut panicked: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut broken: Option<String> = None;
        for op in &mut batch {
            if broken.is_some() {
                panicked.push(None);
                continue;
            }
            match self.apply(op.as_mut()) {
                Ok(p) => panicked.push(p),
                Err(why) => {
                    broken = Some(why);
                    panicked.push(None);
                }
            }
        }
        let committed = match broken {
            // A savepoint that cannot be closed leaves the transaction in an unknown
            // state: none of it is committed.
            Some(why) => {
                let _ = self.writer.conn.execute_batch("ROLLBACK");
                Err(format!("a savepoint failed: {why}"))
            }
            None => self.end(),
        };
        match &committed {
            Ok(()) => self.health.committed(),
            Err(why) => {
                tracing::error!(error = %why, "call store commit failed");
                self.health.failed(why);
            }
        }
        for (op, panicked) in batch.into_iter().zip(panicked) {
            let outcome = match (&committed, panicked) {
                (Err(why), _) => Err(StoreError::Commit(why.clone())),
                (Ok(()), Some(why)) => Err(StoreError::Unavailable(format!(
                    "the operation panicked and was rolled back: {why}"
                ))),
                (Ok(()), None) => Ok(()),
            };
            op.answer(outcome);
        }
    }

    /// Runs one op in its own savepoint. `Ok(Some(why))`: it panicked and was rolled
    /// back; `Err`: the savepoint itself failed.
    fn apply(&mut self, op: &mut dyn Op) -> Result<Option<String>, String> {
        self.writer
            .conn
            .execute_batch("SAVEPOINT job")
            .map_err(|e| e.to_string())?;
        let writer = &mut self.writer;
        let (end, panicked) = match catch_unwind(AssertUnwindSafe(|| op.apply(writer))) {
            Ok(true) => ("RELEASE job", None),
            Ok(false) => ("ROLLBACK TO job; RELEASE job", None),
            Err(panic) => {
                let why = panic_message(panic.as_ref());
                tracing::error!(error = %why, "a call store operation panicked; rolled back");
                ("ROLLBACK TO job; RELEASE job", Some(why))
            }
        };
        self.writer
            .conn
            .execute_batch(end)
            .map_err(|e| e.to_string())?;
        Ok(panicked)
    }

    /// `BEGIN IMMEDIATE`, once more on a fresh connection if the first fails (a
    /// transaction left open, a connection gone bad).
    fn begin(&mut self) -> Result<(), String> {
        #[cfg(test)]
        if self.faults.take(Fault::Begin) {
            return Err("injected BEGIN failure".into());
        }
        let Err(first) = self.writer.conn.execute_batch("BEGIN IMMEDIATE") else {
            return Ok(());
        };
        self.restart();
        self.writer
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| format!("{first}; again on a fresh connection: {e}"))
    }

    /// `COMMIT`, or a rollback if it fails.
    fn end(&mut self) -> Result<(), String> {
        #[cfg(test)]
        if self.faults.take(Fault::Commit) {
            let _ = self.writer.conn.execute_batch("ROLLBACK");
            return Err("injected commit failure".into());
        }
        self.writer.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = self.writer.conn.execute_batch("ROLLBACK");
            e.to_string()
        })
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
