//! Collecting what has outlived its keep.
//!
//! A finished call keeps its result for its function's `result_ttl`. Then the result,
//! input and error are dropped, and the call stays as a tombstone (id, status, idempotency
//! key and input digest) that answers "expired" and still deduplicates its key, for
//! [`TOMBSTONE_MS`]. A finished map's row goes when its last item has.

use super::{CallStore, StoreError};
use crate::calls::now_ms;

/// How long an expired call's tombstone is kept.
const TOMBSTONE_MS: i64 = 7 * 24 * 3600 * 1000;

impl CallStore {
    /// Collects results past their `result_ttl` and deletes week-old tombstones; returns
    /// how many of each.
    pub async fn collect_expired(&self) -> Result<(usize, usize), StoreError> {
        self.write(
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
