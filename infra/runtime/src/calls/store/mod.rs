//! The call store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! Writes and reads take different roads:
//!
//! - **Writes** are jobs for one writer thread ([`engine`]). It takes whatever jobs are
//!   waiting (up to a group), runs each inside its own savepoint, commits them in one
//!   transaction, and only then answers each job's caller and fires its [`Signals`]. So a
//!   spawn is acknowledged only once it is on disk, and a burst of spawns shares one fsync.
//!   The async side never blocks: it awaits a oneshot.
//! - **Reads** go through one helper, [`CallStore::read`], on a small pool of read-only
//!   connections on the blocking pool ([`read`]). WAL lets them run beside the writer, so a long-poll
//!   or a page of results never waits behind a group commit, and a reader sees exactly
//!   what was acknowledged.
//!
//! The writer is supervised: a job that panics is answered with an error and its
//! savepoint rolled back; a panic elsewhere restarts the writer on a fresh connection;
//! a store that keeps failing is reported by [`CallStore::health`] (and so `/healthz`)
//! rather than passed off as "shutting down". See [`engine`] for the policy.
//!
//! The operations, by what they touch: [`calls`] (spawn, claim, outcomes, cancel),
//! [`maps`] (a map's items, pages, cancellation in chunks), [`gc`] (results past their
//! `result_ttl`). The layout of the file and its migrations are in [`schema`].

mod calls;
mod engine;
mod gc;
mod maps;
mod read;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use super::signals::Signals;
use super::{CallFailure, CallStatus};

#[cfg(test)]
pub(crate) use engine::Fault;
pub use engine::Health;
pub use schema::SCHEMA_VERSION;

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
    /// The database was written by a newer thaw, whose layout this one does not know.
    #[error(
        "call store {path} has schema version {found}; this thaw knows versions up to \
         {supported}: run the newer thaw, or give this one another --state-dir"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// SQLite refused an operation.
    #[error("call store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A transaction could not be committed; nothing in it was acknowledged.
    #[error("call store commit failed: {0}")]
    Commit(String),
    /// The writer could not run the operation: it could not begin a transaction, it
    /// panicked, or it failed so often that it was stopped. Not "shutting down": thaw is
    /// up, its store is not.
    #[error("call store unavailable: {0}")]
    Unavailable(String),
    /// The function's durable backlog is at its `max_queue`.
    #[error("{function} has {limit} durable calls queued (its max_queue); retry later")]
    QueueFull {
        /// The function.
        function: String,
        /// Its `max_queue`.
        limit: u32,
    },
    /// An `Idempotency-Key` already used for a different input.
    #[error(
        "Idempotency-Key {key:?} was first used with a different input; a key names one call, \
         so use a new key for a new input"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
}

/// What the store needs to know of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSettings {
    /// How long a finished call's result is kept.
    pub result_ttl: Duration,
    /// The most calls that may wait queued (not yet running) in the store; a spawn or an
    /// Event past it, or a map started at it, is refused with [`StoreError::QueueFull`].
    pub max_queue: u32,
}

impl FunctionSettings {
    /// No bound, a day's results: for a function the store was not told about.
    pub const DEFAULT: Self = Self {
        result_ttl: Duration::from_secs(24 * 3600),
        max_queue: u32::MAX,
    };
}

/// Every function's [`FunctionSettings`], from the manifest.
pub fn settings(plan: &thaw_manifest::Plan) -> BTreeMap<String, FunctionSettings> {
    plan.functions
        .iter()
        .map(|(name, f)| {
            (
                name.to_string(),
                FunctionSettings {
                    result_ttl: f.spec.result_ttl.0,
                    max_queue: f.spec.max_queue,
                },
            )
        })
        .collect()
}

/// A handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallStore {
    engine: engine::Handle,
    signals: Arc<Signals>,
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
    /// The function's answer, when succeeded, as the JSON it sent (never re-parsed into
    /// a tree: a 6 MiB answer costs 6 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
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
    pub input: bytes::Bytes,
    /// Attempts including this one.
    pub attempts: i64,
    /// Failed attempts before this one.
    pub failures: i64,
}

/// The outcome of an attempt.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The function answered.
    Succeeded(bytes::Bytes),
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
    /// The function's answer, as the JSON it sent.
    pub result: Result<Box<RawValue>, CallFailure>,
    /// Its completion sequence number.
    pub done_seq: i64,
}

/// A map item as it goes on the wire: `{"index", "ok"}` or `{"index", "error"}`.
#[derive(Debug, Serialize)]
pub struct MapLine<'a> {
    index: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a CallFailure>,
}

impl MapItem {
    /// The item in its wire shape, borrowing its result.
    pub fn line(&self) -> MapLine<'_> {
        MapLine {
            index: self.index,
            ok: self.result.as_deref().ok(),
            error: self.result.as_ref().err(),
        }
    }

    /// The NDJSON line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&self.line()).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Roughly what the item costs on the wire, to bound a page in bytes.
    fn wire_len(&self) -> usize {
        32 + match &self.result {
            Ok(raw) => raw.get().len(),
            Err(e) => e.kind.len() + e.message.len(),
        }
    }
}

impl CallStore {
    /// Opens (or creates) `<state_dir>/calls.db`, locks the directory, brings its schema
    /// up to date, recovers interrupted calls and starts the writer thread. Blocking: call
    /// it before serving.
    pub fn open(
        state_dir: &Path,
        settings: BTreeMap<String, FunctionSettings>,
        signals: Arc<Signals>,
    ) -> Result<Self, StoreError> {
        let engine = engine::Handle::open(state_dir, settings)?;
        Ok(Self { engine, signals })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.engine.path()
    }

    /// The wake-up registry the store fires after its commits.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// `Ok` while the writer commits; the reason while it cannot (its last batch failed,
    /// or it failed so often that it was stopped). `/healthz` answers with this.
    pub fn health(&self) -> Result<(), StoreError> {
        self.engine.health().check()
    }

    /// The writer's state in full.
    pub fn writer_health(&self) -> &Health {
        self.engine.health()
    }

    /// Makes the writer fail on purpose, for tests of what callers see.
    #[cfg(test)]
    pub(crate) fn inject(&self, fault: Fault, times: u32) {
        self.engine.inject(fault, times);
    }

    /// Runs `f` on the writer thread inside its own savepoint; its result is returned
    /// only after the transaction holding it has committed, and then `after` runs (to fire
    /// signals). An error from `f` rolls back what `f` did, and nothing else.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut engine::Writer) -> Result<R, StoreError> + Send + 'static,
        after: impl FnOnce(&Signals, &R) + Send + 'static,
    ) -> Result<R, StoreError> {
        self.engine.write(Arc::clone(&self.signals), f, after).await
    }

    /// Runs `f` on a read-only connection: the one road for every read.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.engine.read(f).await
    }
}

/// A function's answer as raw JSON; one that is not JSON is kept as a JSON string.
fn raw_json(bytes: &[u8]) -> Box<RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| serde_json::from_str::<Box<RawValue>>(text).ok())
        .unwrap_or_else(|| lossy_string(bytes))
}

fn lossy_string(bytes: &[u8]) -> Box<RawValue> {
    let quoted = serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap_or_default();
    RawValue::from_string(quoted).unwrap_or_default()
}

fn failure_json(f: &CallFailure) -> String {
    serde_json::to_string(f).unwrap_or_default()
}

fn failure_of(text: Option<String>) -> Option<CallFailure> {
    text.and_then(|e| serde_json::from_str(&e).ok())
}
