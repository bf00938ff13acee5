//! The call store: SQLite in WAL mode with `synchronous=FULL`, owned by one thread.
//!
//! Every operation is a job sent to that thread over a bounded channel. The thread takes
//! whatever jobs are waiting (up to [`GROUP_MAX`]), runs each inside its own savepoint,
//! commits them in one transaction, and only then answers each job's caller and fires its
//! [`Signals`]. So a spawn is acknowledged only once it is on disk, and a burst of
//! spawns shares one fsync. The async side never blocks: it awaits a oneshot.
//!
//! Opening the store takes an exclusive lock on the state directory, recovers calls
//! that were running when thaw last stopped (queued again, their attempt counted), and
//! closes maps whose input was cut off.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::signals::Signals;
use super::{new_id, now_ms, CallFailure, CallKind, CallStatus};

/// Most jobs committed in one transaction.
const GROUP_MAX: usize = 1024;
/// How long an expired call's tombstone (id, status, idempotency key) is kept.
const TOMBSTONE_MS: i64 = 7 * 24 * 3600 * 1000;

/// What can go wrong with the call store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or locked.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another `thaw serve` holds the state directory.
    #[error("state directory {0} is in use by another thaw serve; give each its own --state-dir")]
    Locked(PathBuf),
    /// SQLite refused an operation.
    #[error("call store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A transaction could not be committed; nothing in it was acknowledged.
    #[error("call store commit failed: {0}")]
    Commit(String),
    /// The store's thread has stopped (thaw is shutting down).
    #[error("the call store has stopped")]
    Stopped,
}

type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut Writer) -> (bool, Deliver) + Send>;

/// The connection and what the writer thread keeps beside it.
#[derive(Debug)]
pub struct Writer {
    conn: Connection,
    /// The next completion sequence number (orders a map's results by completion).
    next_done_seq: i64,
    /// `result_ttl` per function, in ms.
    ttl_ms: BTreeMap<String, i64>,
}

impl Writer {
    fn ttl(&self, function: &str) -> i64 {
        self.ttl_ms
            .get(function)
            .copied()
            .unwrap_or(24 * 3600 * 1000)
    }

    fn take_done_seq(&mut self) -> i64 {
        self.next_done_seq += 1;
        self.next_done_seq
    }
}

/// A handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallStore {
    jobs: mpsc::Sender<Job>,
    signals: Arc<Signals>,
    path: PathBuf,
}

/// A durable call as `GET /v1/calls/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// The call id.
    pub call_id: String,
    /// The function.
    pub function: String,
    /// spawn, map or event.
    pub kind: String,
    /// queued, running, succeeded, failed or cancelled.
    pub status: CallStatus,
    /// Attempts started, including one interrupted by a thaw restart.
    pub attempts: i64,
    /// The function's answer, when succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed; while a retry is pending, the last attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallFailure>,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// When its last attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// When it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// When its result is collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// The map it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_id: Option<String>,
    /// Its index in the map's input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_index: Option<i64>,
    /// Its result has been collected after `result_ttl`.
    #[serde(skip)]
    pub expired: bool,
}

/// The answer to a spawn.
#[derive(Debug, Clone)]
pub struct Spawned {
    /// The call id: new, or the original one for a repeated idempotency key.
    pub call_id: String,
    /// Whether the idempotency key had been seen before.
    pub replayed: bool,
}

/// A call claimed for an attempt.
#[derive(Debug)]
pub struct Claimed {
    /// The call id.
    pub call_id: String,
    /// Its input.
    pub input: Bytes,
    /// Attempts including this one.
    pub attempts: i64,
    /// Failed attempts before this one.
    pub failures: i64,
}

/// The outcome of an attempt.
#[derive(Debug)]
pub enum Finish {
    /// The function answered.
    Succeeded(Bytes),
    /// The call is failed for good.
    Failed(CallFailure),
}

/// Counts of a map's items by status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MapCounts {
    /// Waiting.
    pub queued: i64,
    /// In flight.
    pub running: i64,
    /// Answered.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// A map's state.
#[derive(Debug, Clone, Serialize)]
pub struct MapSummary {
    /// The map id.
    pub map_id: String,
    /// The function.
    pub function: String,
    /// Items accepted; `None` while the input is still arriving.
    pub total: Option<i64>,
    /// Why the input stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_error: Option<String>,
    /// Items by status.
    pub counts: MapCounts,
    /// When it was created.
    pub created_ms: i64,
}

impl MapSummary {
    /// Every item accepted and finished.
    pub fn done(&self) -> bool {
        self.total.is_some() && self.counts.queued == 0 && self.counts.running == 0
    }
}

/// How a map's results are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapOrder {
    /// Input order.
    #[default]
    Index,
    /// Completion order.
    Completion,
}

/// One finished item of a map.
#[derive(Debug, Clone)]
pub struct MapItem {
    /// Its index in the input.
    pub index: i64,
    /// The function's answer.
    pub result: Result<Value, CallFailure>,
    /// Its completion sequence number.
    pub done_seq: i64,
}

impl MapItem {
    /// The NDJSON line: `{"index", "ok"}` or `{"index", "error"}`.
    pub fn to_line(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Line<'a> {
            index: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            ok: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a CallFailure>,
        }
        let line = Line {
            index: self.index,
            ok: self.result.as_ref().ok(),
            error: self.result.as_ref().err(),
        };
        let mut line = serde_json::to_vec(&line).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    function        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           BLOB,
    result          BLOB,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    map_id          TEXT,
    map_index       INTEGER,
    not_before_ms   INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    started_ms      INTEGER,
    finished_ms     INTEGER,
    expires_ms      INTEGER,
    done_seq        INTEGER,
    expired         INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS calls_idempotency ON calls(function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_queued ON calls(function, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS calls_running ON calls(function) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS calls_map ON calls(map_id, map_index) WHERE map_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_map_done ON calls(map_id, done_seq)
    WHERE map_id IS NOT NULL AND done_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_expiry ON calls(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS maps (
    id          TEXT PRIMARY KEY,
    function    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    total       INTEGER,
    input_error TEXT
);
";

const RECORD_COLUMNS: &str = "id, function, kind, status, attempts, result, error, created_ms, \
     started_ms, finished_ms, expires_ms, map_id, map_index, expired";

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallRecord> {
    let status: String = row.get(3)?;
    let result: Option<Vec<u8>> = row.get(5)?;
    let error: Option<String> = row.get(6)?;
    Ok(CallRecord {
        call_id: row.get(0)?,
        function: row.get(1)?,
        kind: row.get(2)?,
        status: CallStatus::parse(&status),
        attempts: row.get(4)?,
        result: result.map(|b| json_value(&b)),
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        created_ms: row.get(7)?,
        started_ms: row.get(8)?,
        finished_ms: row.get(9)?,
        expires_ms: row.get(10)?,
        map_id: row.get(11)?,
        map_index: row.get(12)?,
        expired: row.get::<_, i64>(13)? != 0,
    })
}

/// A function's answer as JSON; one that is not JSON is kept as a string.
fn json_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn failure_json(f: &CallFailure) -> String {
    serde_json::to_string(f).unwrap_or_default()
}

impl CallStore {
    /// Opens (or creates) `<state_dir>/calls.db`, locks the directory, recovers
    /// interrupted calls and starts the writer thread. Blocking: call it before serving.
    pub fn open(
        state_dir: &Path,
        ttl: BTreeMap<String, std::time::Duration>,
        signals: Arc<Signals>,
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
        let conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        let next_done_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(done_seq), 0) FROM calls", [], |r| {
                r.get(0)
            })?;
        let recovered = conn.execute(
            "UPDATE calls SET status = 'queued', not_before_ms = 0 WHERE status = 'running'",
            [],
        )?;
        let cut_off = conn.execute(
            "UPDATE maps SET total = (SELECT COUNT(*) FROM calls WHERE map_id = maps.id), \
             input_error = 'thaw stopped while this map''s input was arriving; later items were not received' \
             WHERE total IS NULL",
            [],
        )?;
        let queued: i64 = conn.query_row(
            "SELECT COUNT(*) FROM calls WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        tracing::info!(path = %path.display(), queued, recovered, maps_cut_off = cut_off, "call store open");
        let mut writer = Writer {
            conn,
            next_done_seq,
            ttl_ms: ttl
                .into_iter()
                .map(|(f, d)| (f, d.as_millis() as i64))
                .collect(),
        };
        let (jobs, rx) = mpsc::channel::<Job>(4 * GROUP_MAX);
        std::thread::Builder::new()
            .name("thaw-call-store".into())
            .spawn(move || {
                // The lock lives as long as the thread that writes.
                let _lock = lock;
                writer_loop(&mut writer, rx);
            })
            .map_err(dir_err)?;
        Ok(Self {
            jobs,
            signals,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wake-up registry the store fires after its commits.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// Runs `f` on the writer thread; its result is returned only after the transaction
    /// holding it has committed, and then `after` runs (to fire signals).
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<R, StoreError> + Send + 'static,
        after: impl FnOnce(&Signals, &R) + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let signals = Arc::clone(&self.signals);
        let job: Job = Box::new(move |w: &mut Writer| {
            let result = f(w);
            let ok = result.is_ok();
            let deliver: Deliver = Box::new(move |commit: Result<(), String>| {
                let result = commit.map_err(StoreError::Commit).and(result);
                if let Ok(r) = &result {
                    after(&signals, r);
                }
                let _ = tx.send(result);
            });
            (ok, deliver)
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Commits a spawned or Event call. A repeated idempotency key returns the call it
    /// first created, whatever its state.
    pub async fn spawn(
        &self,
        function: &str,
        kind: CallKind,
        input: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<Spawned, StoreError> {
        let function = function.to_owned();
        self.run(
            move |w| {
                if let Some(key) = &idempotency_key {
                    let existing: Option<String> = w
                        .conn
                        .query_row(
                            "SELECT id FROM calls WHERE function = ?1 AND idempotency_key = ?2",
                            params![function, key],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(call_id) = existing {
                        return Ok((
                            function,
                            Spawned {
                                call_id,
                                replayed: true,
                            },
                        ));
                    }
                }
                let call_id = new_id("call");
                w.conn.execute(
                    "INSERT INTO calls (id, function, kind, status, input, idempotency_key, created_ms) \
                     VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
                    params![call_id, function, kind.as_str(), &input[..], idempotency_key, now_ms()],
                )?;
                Ok((
                    function,
                    Spawned {
                        call_id,
                        replayed: false,
                    },
                ))
            },
            |signals, (function, spawned)| {
                if !spawned.replayed {
                    signals.wake(function);
                }
            },
        )
        .await
        .map(|(_, s)| s)
    }

    /// A call by id.
    pub async fn get(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let call_id = call_id.to_owned();
        self.run(
            move |w| {
                Ok(w.conn
                    .query_row(
                        &format!("SELECT {RECORD_COLUMNS} FROM calls WHERE id = ?1"),
                        [&call_id],
                        record_from_row,
                    )
                    .optional()?)
            },
            |_, _| {},
        )
        .await
    }

    /// Claims up to `limit` due calls of `function` for an attempt (status running,
    /// attempts + 1, committed before they run). Also says when the next queued call
    /// that is not yet due becomes due.
    pub async fn claim(
        &self,
        function: &str,
        limit: usize,
    ) -> Result<(Vec<Claimed>, Option<i64>), StoreError> {
        let function = function.to_owned();
        self.run(
            move |w| {
                let now = now_ms();
                let mut claimed = Vec::new();
                {
                    let mut select = w.conn.prepare_cached(
                        "SELECT seq, id, input, attempts, failures FROM calls \
                         WHERE function = ?1 AND status = 'queued' AND not_before_ms <= ?2 \
                         ORDER BY seq LIMIT ?3",
                    )?;
                    let rows = select.query_map(params![function, now, limit as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })?;
                    for row in rows {
                        let (seq, call_id, input, attempts, failures) = row?;
                        claimed.push((
                            seq,
                            Claimed {
                                call_id,
                                input: Bytes::from(input.unwrap_or_default()),
                                attempts: attempts + 1,
                                failures,
                            },
                        ));
                    }
                }
                let mut update = w.conn.prepare_cached(
                    "UPDATE calls SET status = 'running', attempts = attempts + 1, started_ms = ?2 \
                     WHERE seq = ?1",
                )?;
                for (seq, _) in &claimed {
                    update.execute(params![seq, now])?;
                }
                let next_due: Option<i64> = if claimed.len() < limit {
                    w.conn.query_row(
                        "SELECT MIN(not_before_ms) FROM calls \
                         WHERE function = ?1 AND status = 'queued' AND not_before_ms > ?2",
                        params![function, now],
                        |r| r.get(0),
                    )?
                } else {
                    None
                };
                Ok((claimed.into_iter().map(|(_, c)| c).collect(), next_due))
            },
            |_, _| {},
        )
        .await
    }

    /// Records the final outcome of a running call.
    pub async fn finish(&self, call_id: &str, outcome: Finish) -> Result<(), StoreError> {
        let call_id = call_id.to_owned();
        self.run(
            move |w| {
                let now = now_ms();
                let function: Option<String> = w
                    .conn
                    .query_row(
                        "SELECT function FROM calls WHERE id = ?1 AND status = 'running'",
                        [&call_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(function) = function else {
                    return Ok((call_id, None));
                };
                let expires = now + w.ttl(&function);
                let seq = w.take_done_seq();
                let (status, result, error) = match &outcome {
                    Finish::Succeeded(b) => ("succeeded", Some(b.to_vec()), None),
                    Finish::Failed(f) => ("failed", None, Some(failure_json(f))),
                };
                let map_id: Option<String> = w.conn.query_row(
                    "UPDATE calls SET status = ?2, result = ?3, error = ?4, finished_ms = ?5, \
                     expires_ms = ?6, done_seq = ?7 WHERE id = ?1 RETURNING map_id",
                    params![call_id, status, result, error, now, expires, seq],
                    |r| r.get(0),
                )?;
                Ok((call_id, Some(map_id)))
            },
            |signals, (call_id, map_id)| {
                signals.call_changed(call_id);
                if let Some(Some(map_id)) = map_id {
                    signals.map_progressed(map_id, 1);
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Queues a failed attempt again after `delay_ms`, keeping its error as the last one.
    pub async fn retry(
        &self,
        call_id: &str,
        failure: CallFailure,
        delay_ms: i64,
    ) -> Result<(), StoreError> {
        let call_id = call_id.to_owned();
        self.run(
            move |w| {
                let function: Option<String> = w
                    .conn
                    .query_row(
                        "UPDATE calls SET status = 'queued', failures = failures + 1, error = ?2, \
                         not_before_ms = ?3 WHERE id = ?1 AND status = 'running' RETURNING function",
                        params![call_id, failure_json(&failure), now_ms() + delay_ms],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok((call_id, function))
            },
            |signals, (call_id, function)| {
                signals.call_changed(call_id);
                if let Some(f) = function {
                    signals.wake(f);
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Puts a claimed call back without counting the attempt (it never reached an
    /// instance), due again after `delay_ms`.
    pub async fn unclaim(&self, call_id: &str, delay_ms: i64) -> Result<(), StoreError> {
        let call_id = call_id.to_owned();
        self.run(
            move |w| {
                Ok(w.conn
                    .query_row(
                        "UPDATE calls SET status = 'queued', attempts = attempts - 1, \
                         not_before_ms = ?2 WHERE id = ?1 AND status = 'running' RETURNING function",
                        params![call_id, now_ms() + delay_ms],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?)
            },
            |signals, function| {
                if let Some(f) = function {
                    signals.wake(f);
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Cancels a queued call. Returns the call as it stands afterwards (`None` if there
    /// is no such call); a call that was not queued is left as it was.
    pub async fn cancel(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let call_id = call_id.to_owned();
        self.run(
            move |w| {
                let now = now_ms();
                let row: Option<(String, Option<String>)> = w
                    .conn
                    .query_row(
                        "SELECT function, map_id FROM calls WHERE id = ?1 AND status = 'queued'",
                        [&call_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let mut map_id = None;
                if let Some((function, m)) = row {
                    let expires = now + w.ttl(&function);
                    let seq = w.take_done_seq();
                    w.conn.execute(
                        "UPDATE calls SET status = 'cancelled', finished_ms = ?2, expires_ms = ?3, \
                         done_seq = ?4 WHERE id = ?1",
                        params![call_id, now, expires, seq],
                    )?;
                    map_id = m;
                }
                let record = w
                    .conn
                    .query_row(
                        &format!("SELECT {RECORD_COLUMNS} FROM calls WHERE id = ?1"),
                        [&call_id],
                        record_from_row,
                    )
                    .optional()?;
                Ok((record, map_id))
            },
            |signals, (record, map_id)| {
                if let Some(r) = record {
                    signals.call_changed(&r.call_id);
                }
                if let Some(m) = map_id {
                    signals.map_progressed(m, 1);
                }
            },
        )
        .await
        .map(|(r, _)| r)
    }

    /// Creates a map; its items follow with [`Self::add_map_items`].
    pub async fn create_map(&self, function: &str) -> Result<String, StoreError> {
        let function = function.to_owned();
        self.run(
            move |w| {
                let map_id = new_id("map");
                w.conn.execute(
                    "INSERT INTO maps (id, function, created_ms) VALUES (?1, ?2, ?3)",
                    params![map_id, function, now_ms()],
                )?;
                Ok(map_id)
            },
            |_, _| {},
        )
        .await
    }

    /// Commits a run of a map's items, indexed from `first_index`. An item that is
    /// already an error (input that is not JSON) is stored as failed and never runs.
    pub async fn add_map_items(
        &self,
        map_id: &str,
        function: &str,
        first_index: i64,
        items: Vec<Result<Bytes, CallFailure>>,
    ) -> Result<(), StoreError> {
        let map_id = map_id.to_owned();
        let function = function.to_owned();
        self.run(
            move |w| {
                let now = now_ms();
                let expires = now + w.ttl(&function);
                let mut bad = 0u64;
                let mut runnable = 0u64;
                for (i, item) in items.into_iter().enumerate() {
                    let index = first_index + i as i64;
                    match item {
                        Ok(input) => {
                            runnable += 1;
                            w.conn
                                .prepare_cached(
                                    "INSERT INTO calls (id, function, kind, status, input, map_id, \
                                     map_index, created_ms) VALUES (?1, ?2, 'map', 'queued', ?3, ?4, ?5, ?6)",
                                )?
                                .execute(params![new_id("call"), function, &input[..], map_id, index, now])?;
                        }
                        Err(failure) => {
                            bad += 1;
                            let seq = w.take_done_seq();
                            w.conn
                                .prepare_cached(
                                    "INSERT INTO calls (id, function, kind, status, error, map_id, \
                                     map_index, created_ms, finished_ms, expires_ms, done_seq) \
                                     VALUES (?1, ?2, 'map', 'failed', ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                                )?
                                .execute(params![
                                    new_id("call"),
                                    function,
                                    failure_json(&failure),
                                    map_id,
                                    index,
                                    now,
                                    expires,
                                    seq
                                ])?;
                        }
                    }
                }
                Ok((map_id, function, bad, runnable))
            },
            |signals, (map_id, function, bad, runnable)| {
                if *runnable > 0 {
                    signals.wake(function);
                }
                if *bad > 0 {
                    signals.map_progressed(map_id, *bad);
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Records that a map's input has ended with `total` items, and why it ended early
    /// if it did.
    pub async fn close_map(
        &self,
        map_id: &str,
        total: i64,
        input_error: Option<String>,
    ) -> Result<(), StoreError> {
        let map_id = map_id.to_owned();
        self.run(
            move |w| {
                w.conn.execute(
                    "UPDATE maps SET total = ?2, input_error = ?3 WHERE id = ?1",
                    params![map_id, total, input_error],
                )?;
                Ok(map_id)
            },
            |signals, map_id| signals.map_progressed(map_id, 0),
        )
        .await
        .map(|_| ())
    }

    /// A map's state, or `None` if there is no such map.
    pub async fn map_summary(&self, map_id: &str) -> Result<Option<MapSummary>, StoreError> {
        let map_id = map_id.to_owned();
        self.run(move |w| map_summary(&w.conn, &map_id), |_, _| {})
            .await
    }

    /// A map's total (`None` while its input is arriving) and input error, without
    /// counting its items; `None` if there is no such map.
    pub async fn map_total(
        &self,
        map_id: &str,
    ) -> Result<Option<(Option<i64>, Option<String>)>, StoreError> {
        let map_id = map_id.to_owned();
        self.run(
            move |w| {
                Ok(w.conn
                    .query_row(
                        "SELECT total, input_error FROM maps WHERE id = ?1",
                        [&map_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?)
            },
            |_, _| {},
        )
        .await
    }

    /// Up to `limit` finished items of a map after position `from`:
    /// - [`MapOrder::Index`]: input order from index `from`, stopping at the first item not
    ///   yet finished, so a reader pages through in order;
    /// - [`MapOrder::Completion`]: completion order, after completion number `from`.
    pub async fn map_items(
        &self,
        map_id: &str,
        order: MapOrder,
        from: i64,
        limit: usize,
    ) -> Result<Vec<MapItem>, StoreError> {
        let map_id = map_id.to_owned();
        self.run(
            move |w| {
                let sql = match order {
                    MapOrder::Index => {
                        "SELECT map_index, status, result, error, done_seq, expired FROM calls \
                         WHERE map_id = ?1 AND map_index >= ?2 ORDER BY map_index LIMIT ?3"
                    }
                    MapOrder::Completion => {
                        "SELECT map_index, status, result, error, done_seq, expired FROM calls \
                         WHERE map_id = ?1 AND done_seq > ?2 ORDER BY done_seq LIMIT ?3"
                    }
                };
                let mut stmt = w.conn.prepare_cached(sql)?;
                let rows = stmt.query_map(params![map_id, from, limit as i64], map_item_row)?;
                let mut items = Vec::new();
                for row in rows {
                    match (order, row?) {
                        (MapOrder::Index, Some(item))
                            if item.index == from + items.len() as i64 =>
                        {
                            items.push(item)
                        }
                        (MapOrder::Index, _) => break,
                        (MapOrder::Completion, Some(item)) => items.push(item),
                        (MapOrder::Completion, None) => {}
                    }
                }
                Ok(items)
            },
            |_, _| {},
        )
        .await
    }

    /// Cancels every queued item of a map; returns how many.
    pub async fn cancel_map(&self, map_id: &str) -> Result<usize, StoreError> {
        let map_id = map_id.to_owned();
        self.run(
            move |w| {
                let now = now_ms();
                let ids: Vec<(String, String)> = {
                    let mut stmt = w.conn.prepare(
                        "SELECT id, function FROM calls WHERE map_id = ?1 AND status = 'queued'",
                    )?;
                    let rows = stmt.query_map([&map_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                for (id, function) in &ids {
                    let expires = now + w.ttl(function);
                    let seq = w.take_done_seq();
                    w.conn.execute(
                        "UPDATE calls SET status = 'cancelled', finished_ms = ?2, expires_ms = ?3, \
                         done_seq = ?4 WHERE id = ?1",
                        params![id, now, expires, seq],
                    )?;
                }
                Ok((map_id, ids.len()))
            },
            |signals, (map_id, n)| signals.map_progressed(map_id, *n as u64),
        )
        .await
        .map(|(_, n)| n)
    }

    /// Durable calls queued and running, per function.
    pub async fn active_counts(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        self.run(
            |w| {
                let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                for (status, slot) in [("queued", 0), ("running", 1)] {
                    let mut stmt = w.conn.prepare_cached(&format!(
                        "SELECT function, COUNT(*) FROM calls WHERE status = '{status}' GROUP BY function"
                    ))?;
                    let rows =
                        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                    for row in rows {
                        let (f, n) = row?;
                        let entry = counts.entry(f).or_default();
                        if slot == 0 {
                            entry.0 = n;
                        } else {
                            entry.1 = n;
                        }
                    }
                }
                Ok(counts)
            },
            |_, _| {},
        )
        .await
    }

    /// Collects results past their `result_ttl` (the call stays as a tombstone that says
    /// "expired" and keeps its idempotency key) and deletes week-old tombstones.
    pub async fn collect_expired(&self) -> Result<(usize, usize), StoreError> {
        self.run(
            |w| {
                let now = now_ms();
                let expired = w.conn.execute(
                    "UPDATE calls SET expired = 1, input = NULL, result = NULL, error = NULL \
                     WHERE expires_ms <= ?1 AND expired = 0",
                    [now],
                )?;
                let deleted = w.conn.execute(
                    "DELETE FROM calls WHERE expires_ms <= ?1 AND expired = 1",
                    [now - TOMBSTONE_MS],
                )?;
                w.conn.execute(
                    "DELETE FROM maps WHERE total IS NOT NULL AND created_ms <= ?1 \
                     AND NOT EXISTS (SELECT 1 FROM calls WHERE map_id = maps.id)",
                    [now - TOMBSTONE_MS],
                )?;
                Ok((expired, deleted))
            },
            |_, _| {},
        )
        .await
    }
}

fn map_item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<MapItem>> {
    let status: String = r.get(1)?;
    let status = CallStatus::parse(&status);
    if !status.is_terminal() {
        return Ok(None);
    }
    let index: i64 = r.get(0)?;
    let result: Option<Vec<u8>> = r.get(2)?;
    let error: Option<String> = r.get(3)?;
    let expired = r.get::<_, i64>(5)? != 0;
    let result = match status {
        _ if expired => Err(CallFailure {
            kind: "Expired".into(),
            message: "the result was collected after result_ttl".into(),
        }),
        CallStatus::Succeeded => Ok(json_value(&result.unwrap_or_default())),
        CallStatus::Cancelled => Err(CallFailure {
            kind: "Cancelled".into(),
            message: "cancelled before it ran".into(),
        }),
        _ => Err(error
            .and_then(|e| serde_json::from_str(&e).ok())
            .unwrap_or_else(|| CallFailure {
                kind: "Unknown".into(),
                message: "no error was recorded".into(),
            })),
    };
    Ok(Some(MapItem {
        index,
        result,
        done_seq: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
    }))
}

fn map_summary(conn: &Connection, map_id: &str) -> Result<Option<MapSummary>, StoreError> {
    let head: Option<(String, i64, Option<i64>, Option<String>)> = conn
        .query_row(
            "SELECT function, created_ms, total, input_error FROM maps WHERE id = ?1",
            [map_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((function, created_ms, total, input_error)) = head else {
        return Ok(None);
    };
    let mut counts = MapCounts::default();
    let mut stmt = conn
        .prepare_cached("SELECT status, COUNT(*) FROM calls WHERE map_id = ?1 GROUP BY status")?;
    let rows = stmt.query_map([map_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (status, n) = row?;
        match CallStatus::parse(&status) {
            CallStatus::Queued => counts.queued = n,
            CallStatus::Running => counts.running = n,
            CallStatus::Succeeded => counts.succeeded = n,
            CallStatus::Failed => counts.failed = n,
            CallStatus::Cancelled => counts.cancelled = n,
        }
    }
    Ok(Some(MapSummary {
        map_id: map_id.to_owned(),
        function,
        total,
        input_error,
        counts,
        created_ms,
    }))
}

/// The writer thread: take waiting jobs, run each in a savepoint, commit once, answer.
fn writer_loop(w: &mut Writer, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut delivers = Vec::with_capacity(batch.len());
        let began = w.conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = began {
            let msg = e.to_string();
            for job in batch {
                // Run nothing; tell every caller.
                drop(job);
                tracing::error!(error = %msg, "call store cannot begin a transaction");
            }
            continue;
        }
        for job in batch {
            let savepoint = w.conn.execute_batch("SAVEPOINT job");
            let (ok, deliver) = job(w);
            if savepoint.is_ok() {
                let end = if ok {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                if let Err(e) = w.conn.execute_batch(end) {
                    tracing::error!(error = %e, "call store savepoint");
                }
            }
            delivers.push(deliver);
        }
        let commit = w.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = w.conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        if let Err(e) = &commit {
            tracing::error!(error = %e, "call store commit failed");
        }
        for deliver in delivers {
            deliver(commit.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> CallStore {
        CallStore::open(dir, BTreeMap::new(), Arc::new(Signals::default())).expect("open")
    }

    #[tokio::test]
    async fn spawn_claim_finish_and_idempotency() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let a = store
            .spawn(
                "f",
                CallKind::Spawn,
                Bytes::from_static(b"{}"),
                Some("k".into()),
            )
            .await
            .expect("spawn");
        let b = store
            .spawn(
                "f",
                CallKind::Spawn,
                Bytes::from_static(b"{}"),
                Some("k".into()),
            )
            .await
            .expect("spawn again");
        assert_eq!(a.call_id, b.call_id);
        assert!(b.replayed);
        let (claimed, _) = store.claim("f", 10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        store
            .finish(
                &a.call_id,
                Finish::Succeeded(Bytes::from_static(b"{\"x\":1}")),
            )
            .await
            .expect("finish");
        let r = store.get(&a.call_id).await.expect("get").expect("exists");
        assert_eq!(r.status, CallStatus::Succeeded);
        assert_eq!(r.result, Some(serde_json::json!({"x": 1})));
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path());
        let second = CallStore::open(dir.path(), BTreeMap::new(), Arc::new(Signals::default()));
        assert!(matches!(second, Err(StoreError::Locked(_))));
    }

    #[tokio::test]
    async fn a_cancelled_call_is_never_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let s = store
            .spawn("f", CallKind::Spawn, Bytes::from_static(b"{}"), None)
            .await
            .expect("spawn");
        let r = store
            .cancel(&s.call_id)
            .await
            .expect("cancel")
            .expect("exists");
        assert_eq!(r.status, CallStatus::Cancelled);
        let (claimed, _) = store.claim("f", 10).await.expect("claim");
        assert!(claimed.is_empty());
    }
}
