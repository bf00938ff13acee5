//! The database's layout and how it is brought up to date.
//!
//! The version lives in SQLite's `PRAGMA user_version`. [`MIGRATIONS`]`[n]` takes a
//! database from version `n` to `n + 1`; each step runs in its own transaction together
//! with the version bump, so a crash mid-migration leaves the previous version intact. A
//! database newer than this build ([`SCHEMA_VERSION`]) is refused with
//! [`StoreError::SchemaTooNew`] rather than read by guesswork.
//!
//! Version 0 is both a new file and a store written before versioning existed; the first
//! step uses `IF NOT EXISTS` so it is right for both.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Step `n` takes version `n` to `n + 1`. Append only; never edit a released step.
pub(super) const MIGRATIONS: [&str; 2] = [
    // 1: calls and maps.
    "
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
",
    // 2: the SHA-256 of a call's input, so a reused Idempotency-Key with another input is
    // refused. Calls from before have none, and their keys replay as they always did.
    "ALTER TABLE calls ADD COLUMN input_digest BLOB;",
];

/// Brings `conn`'s database up to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = from + 1, "call store schema migrated");
    }
    Ok(())
}
