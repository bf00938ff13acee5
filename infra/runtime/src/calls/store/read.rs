//! The one road for reads: [`Readers::read`] runs a closure on a read-only connection.
//!
//! Up to [`READERS`] connections are open at once, each on the blocking pool (SQLite
//! blocks), and kept for the next read. WAL lets them read beside the writer, so a
//! long-poll or a page of results neither waits for a group commit nor depends on the
//! writer being alive, and every read sees exactly what has been acknowledged: a write is
//! answered only after its commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::StoreError;

/// Read-only connections open at once.
pub const READERS: usize = 4;

/// The read-only connections of one store.
#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::default(),
            permits: Arc::new(Semaphore::new(READERS)),
        }
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on an idle connection (opening one if none is), at most [`READERS`] at
    /// once.
    pub(super) async fn read<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the call store's readers are closed".into()))?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match readers.idle().pop() {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = f(&conn);
            readers.idle().push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a call store read failed: {e}")))?
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path)?;
        // Read-write flags, but refusing writes: a read-only open cannot create the WAL's
        // shared-memory file if it is missing.
        conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")?;
        Ok(conn)
    }
}
