//! Single calls: spawn, read, claim, record an attempt's outcome, cancel.
//!
//! Outcome records (`finish`, `retry`, `unclaim`) are retried until they commit, with a
//! backoff capped at [`OUTCOME_RETRY_MAX`]: a commit that fails once must not leave a
//! call `running` until thaw restarts. Each is idempotent (it only moves a call that is
//! still `running`), so a retry after an ambiguous failure is harmless. Only a writer
//! that was stopped for good ends the retries; `/healthz` reports it then, and the next
//! start queues the call again.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest as _, Sha256};

use super::maps::HELD;
use super::{
    failure_json, failure_of, raw_json, CallRecord, CallStore, Claimed, Finish, Spawned, StoreError,
};
use crate::calls::{new_id, now_ms, CallFailure, CallKind, CallStatus};

/// The longest wait between tries of an outcome record.
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

const RECORD_COLUMNS: &str = "id, function, kind, status, attempts, result, error, created_ms, \
     started_ms, finished_ms, expires_ms, map_id, map_index, expired";

/// A call by id: the one query behind every read of a call, on any connection.
pub(super) fn call_record(
    conn: &Connection,
    call_id: &str,
) -> Result<Option<CallRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM calls WHERE id = ?1"))?;
    let record = stmt
        .query_row([call_id], |row| {
            let status: String = row.get(3)?;
            let result: Option<Vec<u8>> = row.get(5)?;
            Ok(CallRecord {
                call_id: row.get(0)?,
                function: row.get(1)?,
                kind: row.get(2)?,
                status: CallStatus::parse(&status),
                attempts: row.get(4)?,
                result: result.map(|b| raw_json(&b)),
                error: failure_of(row.get(6)?),
                created_ms: row.get(7)?,
                started_ms: row.get(8)?,
                finished_ms: row.get(9)?,
                expires_ms: row.get(10)?,
                map_id: row.get(11)?,
                map_index: row.get(12)?,
                expired: row.get::<_, i64>(13)? != 0,
            })
        })
        .optional()?;
    Ok(record)
}

/// How many of `function`'s calls wait queued, counting no further than `limit`.
pub(super) fn backlog(conn: &Connection, function: &str, limit: u32) -> Result<u32, StoreError> {
    // The partial index on queued calls makes this at most `limit` index steps.
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM calls \
             WHERE function = ?1 AND status = 'queued' LIMIT ?2)",
        )?
        .query_row(params![function, i64::from(limit)], |r| r.get(0))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Refuses more work for `function` if its backlog is at its `max_queue`.
pub(super) fn admit(w: &super::engine::Writer, function: &str) -> Result<(), StoreError> {
    let limit = w.settings(function).max_queue;
    if limit != u32::MAX && backlog(&w.conn, function, limit)? >= limit {
        return Err(StoreError::QueueFull {
            function: function.to_owned(),
            limit,
        });
    }
    Ok(())
}

/// At open: calls that were running when thaw stopped are queued again, their attempt
/// counted.
pub(super) fn recover(conn: &Connection) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE calls SET status = 'queued', not_before_ms = 0 WHERE status = 'running'",
        [],
    )?)
}

impl CallStore {
    /// Commits a spawned or Event call. A repeated idempotency key returns the call it
    /// first created, whatever its state, if the input is the same;
    /// [`StoreError::IdempotencyKeyReused`] if it is not. Past the function's `max_queue`
    /// queued calls, [`StoreError::QueueFull`].
    pub async fn spawn(
        &self,
        function: &str,
        kind: CallKind,
        input: Bytes,
        idempotency_key: Option<String>,
    ) -> Result<Spawned, StoreError> {
        let function = function.to_owned();
        // Only a keyed call needs its digest.
        let digest = idempotency_key
            .as_ref()
            .map(|_| Sha256::digest(&input).to_vec());
        self.write(
            move |w| {
                if let Some(key) = &idempotency_key {
                    let existing: Option<(String, Option<Vec<u8>>)> = w
                        .conn
                        .prepare_cached(
                            "SELECT id, input_digest FROM calls \
                             WHERE function = ?1 AND idempotency_key = ?2",
                        )?
                        .query_row(params![function, key], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    if let Some((call_id, stored)) = existing {
                        if stored.is_some_and(|d| Some(d) != digest) {
                            return Err(StoreError::IdempotencyKeyReused { key: key.clone() });
                        }
                        let replayed = Spawned {
                            call_id,
                            replayed: true,
                        };
                        return Ok((function, replayed));
                    }
                }
                admit(w, &function)?;
                let call_id = new_id("call");
                w.conn
                    .prepare_cached(
                        "INSERT INTO calls (id, function, kind, status, input, idempotency_key, \
                         input_digest, created_ms) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        call_id,
                        function,
                        kind.as_str(),
                        &input[..],
                        idempotency_key,
                        digest,
                        now_ms()
                    ])?;
                let spawned = Spawned {
                    call_id,
                    replayed: false,
                };
                Ok((function, spawned))
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
        self.read(move |conn| call_record(conn, &call_id)).await
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
        self.write(
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
                            Claimed {
                                call_id: r.get(1)?,
                                input: Bytes::from(
                                    r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                                ),
                                attempts: r.get::<_, i64>(3)? + 1,
                                failures: r.get(4)?,
                            },
                        ))
                    })?;
                    for row in rows {
                        claimed.push(row?);
                    }
                }
                let mut update = w.conn.prepare_cached(
                    "UPDATE calls SET status = 'running', attempts = attempts + 1, started_ms = ?2 \
                     WHERE seq = ?1",
                )?;
                for (seq, _) in &claimed {
                    update.execute(params![seq, now])?;
                }
                // Items of a map still being read are held, not due.
                let next_due: Option<i64> = if claimed.len() < limit {
                    w.conn.query_row(
                        "SELECT MIN(not_before_ms) FROM calls WHERE function = ?1 \
                         AND status = 'queued' AND not_before_ms > ?2 AND not_before_ms < ?3",
                        params![function, now, HELD],
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

    /// Retries `op` until it commits or the writer is stopped for good.
    async fn until_recorded<R, F: Future<Output = Result<R, StoreError>>>(
        &self,
        call_id: &str,
        what: &str,
        mut op: impl FnMut() -> F,
    ) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match op().await {
                Ok(_) => return Ok(()),
                Err(e) if self.engine.stopped() => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        call = call_id, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot record a call's {what}; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(OUTCOME_RETRY_MAX);
                }
            }
        }
    }

    /// Records the final outcome of a running call, retrying until it commits.
    pub async fn finish(&self, call_id: &str, outcome: Finish) -> Result<(), StoreError> {
        self.until_recorded(call_id, "outcome", || {
            self.finish_once(call_id, outcome.clone())
        })
        .await
    }

    async fn finish_once(&self, call_id: &str, outcome: Finish) -> Result<(), StoreError> {
        let call_id = call_id.to_owned();
        self.write(
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
                let expires = w.expires(&function, now);
                let seq = w.take_done_seq();
                let (status, result, error) = match &outcome {
                    Finish::Succeeded(b) => ("succeeded", Some(&b[..]), None),
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

    /// Queues a failed attempt again after `delay_ms`, keeping its error as the last one;
    /// retried until it commits.
    pub async fn retry(
        &self,
        call_id: &str,
        failure: CallFailure,
        delay_ms: i64,
    ) -> Result<(), StoreError> {
        self.until_recorded(call_id, "retry", || {
            let call_id = call_id.to_owned();
            let failure = failure_json(&failure);
            self.write(
                move |w| {
                    let function: Option<String> = w
                        .conn
                        .query_row(
                            "UPDATE calls SET status = 'queued', failures = failures + 1, error = ?2, \
                             not_before_ms = ?3 WHERE id = ?1 AND status = 'running' RETURNING function",
                            params![call_id, failure, now_ms() + delay_ms],
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
        })
        .await
    }

    /// Puts a claimed call back without counting the attempt (it never reached an
    /// instance), due again after `delay_ms`; retried until it commits.
    pub async fn unclaim(&self, call_id: &str, delay_ms: i64) -> Result<(), StoreError> {
        self.until_recorded(call_id, "release", || {
            let call_id = call_id.to_owned();
            self.write(
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
        })
        .await
    }

    /// Cancels a queued call. Returns the call as it stands afterwards (`None` if there
    /// is no such call); a call that was not queued is left as it was.
    pub async fn cancel(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let call_id = call_id.to_owned();
        self.write(
            move |w| {
                let now = now_ms();
                let row: Option<(String, Option<String>)> = w
                    .conn
                    .query_row(
                        "SELECT function, map_id FROM calls WHERE id = ?1 AND status = 'queued' \
                         AND not_before_ms < ?2",
                        params![call_id, HELD],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let mut map_id = None;
                if let Some((function, m)) = row {
                    let expires = w.expires(&function, now);
                    let seq = w.take_done_seq();
                    w.conn.execute(
                        "UPDATE calls SET status = 'cancelled', finished_ms = ?2, expires_ms = ?3, \
                         done_seq = ?4 WHERE id = ?1",
                        params![call_id, now, expires, seq],
                    )?;
                    map_id = m;
                }
                Ok((call_record(&w.conn, &call_id)?, map_id))
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

    /// Durable calls queued and running, per function.
    pub async fn active_counts(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        self.read(|conn| {
            let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
            // One query per status, so each uses its partial index.
            for (queued, sql) in [
                (true, "SELECT function, COUNT(*) FROM calls WHERE status = 'queued' GROUP BY function"),
                (false, "SELECT function, COUNT(*) FROM calls WHERE status = 'running' GROUP BY function"),
            ] {
                let mut stmt = conn.prepare_cached(sql)?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                for row in rows {
                    let (f, n) = row?;
                    let entry = counts.entry(f).or_default();
                    if queued {
                        entry.0 = n;
                    } else {
                        entry.1 = n;
                    }
                }
            }
            Ok(counts)
        })
        .await
    }
}
