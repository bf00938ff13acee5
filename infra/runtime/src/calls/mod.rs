//! Durable calls: spawn-and-poll, fan-out map and Event invocations.
//!
//! A durable call is committed to the [`store`] (SQLite in WAL mode, `synchronous=FULL`)
//! before thaw acknowledges it, and it runs through the function's pool like any other
//! call. The pieces:
//!
//! - [`store`]: the call store. One supervised thread owns the writing connection and
//!   commits whatever jobs are waiting in one transaction (group commit), so durability
//!   costs one fsync per batch rather than per call. Nothing is acknowledged before its
//!   commit. Reads run beside it on read-only connections. It bounds each function's
//!   durable backlog by `max_queue`.
//! - [`executor`]: one task per function that claims queued calls as the pool has
//!   capacity, runs them, and records the outcome: success, failure, or a retry with
//!   exponential backoff.
//! - [`signals`]: in-memory wake-ups after a commit: long-polls waiting on a call, map
//!   streams waiting on their items, executors waiting for work. They carry no data; the
//!   store is the only source of truth.
//! - [`input`]: splits a map's request body, a JSON array or NDJSON, into items as it
//!   arrives, so a 100,000-item map never sits in memory; and checks that an input is
//!   JSON as strictly as a function will read it.
//!
//! Delivery is at least once. A call that was running when thaw stopped is queued again
//! when it starts, with that attempt counted in `attempts`.

pub mod executor;
pub mod input;
pub mod signals;
pub mod store;

use serde::Serialize;

/// Where a durable call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `POST /v1/functions/{f}/spawn`.
    Spawn,
    /// An item of a map.
    Map,
    /// An Invoke API call with `X-Amz-Invocation-Type: Event`.
    Event,
}

impl CallKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::Map => "map",
            Self::Event => "event",
        }
    }
}

/// A durable call's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// Waiting for an instance (or for its retry backoff to pass).
    Queued,
    /// An attempt is in flight.
    Running,
    /// The function answered.
    Succeeded,
    /// Every attempt failed, or the function rejected its input.
    Failed,
    /// Cancelled while queued; it never ran.
    Cancelled,
}

impl CallStatus {
    /// The status on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    /// Whether the call is finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Why a call failed: a stable type and a message, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CallFailure {
    /// `InvalidInput`, `FunctionCrashed`, `Timeout`, `InitError`, or the function's own type.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// A fresh, time-ordered id with a prefix: `call_…` or `map_…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
