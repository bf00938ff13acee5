//! Maps: a map's items, its progress, its results page by page, and cancellation.
//!
//! A `spawn_map`'s items are committed **held** (`not_before_ms` = [`HELD`]): stored but
//! not due, so none runs before its whole input is accepted. [`CallStore::release_map`]
//! releases them once the map is closed; [`CallStore::discard_map`] deletes them instead, when the input is
//! refused (over a limit) or cannot be stored. A streaming map's items are due at once.
//!
//! Anything that touches every item of a map (release, discard, cancel) goes in chunks of
//! [`CHUNK`] items, one writer job each, so other spawns and outcomes are committed
//! between the chunks instead of waiting behind a whole map.

use rusqlite::{params, Connection, OptionalExtension};

use super::calls::admit;
use super::{
    failure_json, failure_of, raw_json, CallStore, MapCounts, MapItem, MapOrder, MapSummary,
    StoreError,
};
use crate::calls::{new_id, now_ms, CallFailure, CallStatus};

/// `not_before_ms` of an item that is stored but not yet due.
pub(super) const HELD: i64 = i64::MAX;
/// Items per writer job when a map is released, discarded or cancelled.
pub(super) const CHUNK: usize = 1000;

/// At open: a map whose input was cut off by a stop keeps the items it had; a
/// `spawn_map` that was never acknowledged (still held) is discarded; held items of a
/// map whose input had ended are released. Returns (released, discarded, cut off).
pub(super) fn recover(conn: &Connection) -> Result<(usize, usize, usize), StoreError> {
    let discarded = conn.execute(
        "DELETE FROM calls WHERE map_id IN (SELECT id FROM maps WHERE total IS NULL) \
         AND map_id IN (SELECT map_id FROM calls WHERE status = 'queued' AND not_before_ms = ?1)",
        [HELD],
    )?;
    let released = conn.execute(
        "UPDATE calls SET not_before_ms = 0 WHERE status = 'queued' AND not_before_ms = ?1",
        [HELD],
    )?;
    let cut_off = conn.execute(
        "UPDATE maps SET total = (SELECT COUNT(*) FROM calls WHERE map_id = maps.id), \
         input_error = 'thaw stopped while this map''s input was arriving; later items were not received' \
         WHERE total IS NULL",
        [],
    )?;
    Ok((released, discarded, cut_off))
}

fn map_item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<MapItem>> {
    let status: String = r.get(1)?;
    let status = CallStatus::parse(&status);
    if !status.is_terminal() {
        return Ok(None);
    }
    let expired = r.get::<_, i64>(5)? != 0;
    let result = match status {
        _ if expired => Err(CallFailure {
            kind: "Expired".into(),
            message: "the result was collected after result_ttl".into(),
        }),
        CallStatus::Succeeded => Ok(raw_json(
            &r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
        )),
        CallStatus::Cancelled => Err(CallFailure {
            kind: "Cancelled".into(),
            message: "cancelled before it ran".into(),
        }),
        _ => Err(failure_of(r.get(3)?).unwrap_or_else(|| CallFailure {
            kind: "Unknown".into(),
            message: "no error was recorded".into(),
        })),
    };
    Ok(Some(MapItem {
        index: r.get(0)?,
        result,
        done_seq: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
    }))
}

fn map_summary(conn: &Connection, map_id: &str) -> Result<Option<MapSummary>, StoreError> {
    let head: Option<(String, i64, Option<i64>, Option<String>)> = conn
        .prepare_cached("SELECT function, created_ms, total, input_error FROM maps WHERE id = ?1")?
        .query_row([map_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
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

/// The next chunk of a map's queued items after input index `after` (held ones only if
/// `held`): their `seq`s and the last index seen.
fn queued_chunk(
    conn: &Connection,
    map_id: &str,
    after: i64,
    held: bool,
) -> Result<(Vec<i64>, i64), StoreError> {
    let mut stmt;
    let rows = if held {
        stmt = conn.prepare_cached(
            "SELECT seq, map_index FROM calls WHERE map_id = ?1 AND map_index > ?2 \
             AND status = 'queued' AND not_before_ms = ?4 ORDER BY map_index LIMIT ?3",
        )?;
        stmt.query_map(params![map_id, after, CHUNK as i64, HELD], seq_and_index)?
    } else {
        stmt = conn.prepare_cached(
            "SELECT seq, map_index FROM calls WHERE map_id = ?1 AND map_index > ?2 \
             AND status = 'queued' ORDER BY map_index LIMIT ?3",
        )?;
        stmt.query_map(params![map_id, after, CHUNK as i64], seq_and_index)?
    };
    let mut seqs = Vec::new();
    let mut last = after;
    for row in rows {
        let (seq, index) = row?;
        seqs.push(seq);
        last = index;
    }
    Ok((seqs, last))
}

fn seq_and_index(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64)> {
    Ok((r.get(0)?, r.get(1)?))
}

impl CallStore {
    /// Creates a map; its items follow with [`Self::add_map_items`]. Refused with
    /// [`StoreError::QueueFull`] while the function's backlog is at its `max_queue`.
    pub async fn create_map(&self, function: &str) -> Result<String, StoreError> {
        let function = function.to_owned();
        self.write(
            move |w| {
                admit(w, &function)?;
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

    /// Commits a run of a map's items, indexed from `first_index`; `held` ones do not run
    /// before [`Self::release_map`]. An item that is already an error (input that is not
    /// JSON) is stored as failed and never runs.
    pub async fn add_map_items(
        &self,
        map_id: &str,
        function: &str,
        first_index: i64,
        items: Vec<Result<bytes::Bytes, CallFailure>>,
        held: bool,
    ) -> Result<(), StoreError> {
        let map_id = map_id.to_owned();
        let function = function.to_owned();
        let not_before = if held { HELD } else { 0 };
        self.write(
            move |w| {
                let now = now_ms();
                let expires = w.expires(&function, now);
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
                                     map_index, created_ms, not_before_ms) \
                                     VALUES (?1, ?2, 'map', 'queued', ?3, ?4, ?5, ?6, ?7)",
                                )?
                                .execute(params![
                                    new_id("call"),
                                    function,
                                    &input[..],
                                    map_id,
                                    index,
                                    now,
                                    not_before
                                ])?;
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
                Ok((map_id, function, bad, if held { 0 } else { runnable }))
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
        let id = map_id.to_owned();
        self.write(
            move |w| {
                w.conn.execute(
                    "UPDATE maps SET total = ?2, input_error = ?3 WHERE id = ?1",
                    params![id, total, input_error],
                )?;
                Ok(id)
            },
            |signals, id| signals.map_progressed(id, 0),
        )
        .await
        .map(|_| ())
    }

    /// Releases a closed map's held items, a chunk per commit. Should it fail part way,
    /// the next start releases the rest (the map is closed, so it was accepted).
    pub async fn release_map(&self, map_id: &str, function: &str) -> Result<(), StoreError> {
        let mut after = -1;
        loop {
            let id = map_id.to_owned();
            let function = function.to_owned();
            let (n, last) = self
                .write(
                    move |w| {
                        let (seqs, last) = queued_chunk(&w.conn, &id, after, true)?;
                        let mut release = w
                            .conn
                            .prepare_cached("UPDATE calls SET not_before_ms = 0 WHERE seq = ?1")?;
                        for seq in &seqs {
                            release.execute([seq])?;
                        }
                        Ok((seqs.len(), last))
                    },
                    move |signals, (n, _)| {
                        if *n > 0 {
                            signals.wake(&function);
                        }
                    },
                )
                .await?;
            after = last;
            if n < CHUNK {
                return Ok(());
            }
        }
    }

    /// Deletes a map that was never acknowledged and every item of it, a chunk per commit.
    pub async fn discard_map(&self, map_id: &str) -> Result<(), StoreError> {
        loop {
            let id = map_id.to_owned();
            let n = self
                .write(
                    move |w| {
                        let n = w.conn.execute(
                            "DELETE FROM calls WHERE seq IN \
                             (SELECT seq FROM calls WHERE map_id = ?1 LIMIT ?2)",
                            params![id, CHUNK as i64],
                        )?;
                        if n == 0 {
                            w.conn.execute("DELETE FROM maps WHERE id = ?1", [&id])?;
                        }
                        Ok(n)
                    },
                    |_, _| {},
                )
                .await?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// A map's state, or `None` if there is no such map.
    pub async fn map_summary(&self, map_id: &str) -> Result<Option<MapSummary>, StoreError> {
        let map_id = map_id.to_owned();
        self.read(move |conn| map_summary(conn, &map_id)).await
    }

    /// A map's total (`None` while its input is arriving) and input error, without
    /// counting its items; `None` if there is no such map.
    pub async fn map_total(
        &self,
        map_id: &str,
    ) -> Result<Option<(Option<i64>, Option<String>)>, StoreError> {
        let map_id = map_id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT total, input_error FROM maps WHERE id = ?1")?
                .query_row([&map_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })
        .await
    }

    /// Up to `limit` finished items of a map after position `from`, and no more than
    /// `max_bytes` of results (always at least one item, however large):
    /// - [`MapOrder::Index`]: input order from index `from`, stopping at the first item not
    ///   yet finished, so a reader pages through in order;
    /// - [`MapOrder::Completion`]: completion order, after completion number `from`.
    pub async fn map_items(
        &self,
        map_id: &str,
        order: MapOrder,
        from: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<MapItem>, StoreError> {
        let map_id = map_id.to_owned();
        self.read(move |conn| {
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
            let mut stmt = conn.prepare_cached(sql)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![map_id, from, limit], map_item_row)?;
            let mut items = Vec::new();
            let mut bytes = 0usize;
            for row in rows {
                let item = match (order, row?) {
                    (MapOrder::Index, Some(item)) if item.index == from + items.len() as i64 => {
                        item
                    }
                    (MapOrder::Index, _) => break,
                    (MapOrder::Completion, Some(item)) => item,
                    (MapOrder::Completion, None) => continue,
                };
                bytes = bytes.saturating_add(item.wire_len());
                if bytes > max_bytes && !items.is_empty() {
                    break;
                }
                items.push(item);
            }
            Ok(items)
        })
        .await
    }

    /// Cancels every queued item of a map, a chunk per commit; returns how many.
    pub async fn cancel_map(&self, map_id: &str) -> Result<usize, StoreError> {
        let mut cancelled = 0;
        let mut after = -1;
        loop {
            let id = map_id.to_owned();
            let (n, last) = self
                .write(
                    move |w| {
                        let function: String = w
                            .conn
                            .prepare_cached("SELECT function FROM maps WHERE id = ?1")?
                            .query_row([&id], |r| r.get(0))
                            .optional()?
                            .unwrap_or_default();
                        let now = now_ms();
                        let expires = w.expires(&function, now);
                        let (seqs, last) = queued_chunk(&w.conn, &id, after, false)?;
                        for seq in &seqs {
                            let done = w.take_done_seq();
                            w.conn
                                .prepare_cached(
                                    "UPDATE calls SET status = 'cancelled', finished_ms = ?2, \
                                     expires_ms = ?3, done_seq = ?4 WHERE seq = ?1",
                                )?
                                .execute(params![seq, now, expires, done])?;
                        }
                        Ok((id, seqs.len(), last))
                    },
                    |signals, (id, n, _)| signals.map_progressed(id, *n as u64),
                )
                .await
                .map(|(_, n, last)| (n, last))?;
            cancelled += n;
            after = last;
            if n < CHUNK {
                return Ok(cancelled);
            }
        }
    }
}
