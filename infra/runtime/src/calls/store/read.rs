//! The one road for reads: [`Readers::read`] queues a closure for a small, fixed set of
//! reader threads, each owning one read-only connection.
//!
//! # Why threads of our own, taking reads in batches
//!
//! A read used to be one `spawn_blocking` each. That cost showed where thaw is busiest:
//!
//! - **CPU.** When a commit wakes a thousand long-polls on one call, each poll reads the
//!   call again. A thousand blocking-pool hand-offs are a thousand thread wake-ups; here a
//!   read is a push onto a queue, and a reader that wakes takes every read waiting (up to
//!   [`BATCH_MAX`]) and runs them one after the other in one read transaction.
//! - **Memory.** SQLite's default page cache is 2 MiB per connection and fills as the
//!   database grows, so four readers could hold 8 MiB more for a 100,000-item map than for
//!   a 10,000-item one. Each reader's cache is bounded to [`CACHE_KIB`] (the kernel's page
//!   cache holds the file anyway), and no blocking-pool thread, with its own malloc arena,
//!   is ever started for a read.
//!
//! # What a read sees
//!
//! WAL lets the readers run beside the writer, so a long-poll or a page of results never
//! waits for a group commit and does not depend on the writer being alive. A write is
//! answered only after its commit, a read is queued after whatever it depends on was
//! answered, and a batch's transaction begins after every read in it was queued: every read
//! sees at least what was acknowledged before it was asked for.
//!
//! # What a caller sees when a read fails
//!
//! Never a hang and never a made-up answer:
//!
//! | failure | the caller gets | afterwards |
//! |---|---|---|
//! | a statement fails (including `SQLITE_BUSY` past [`BUSY_TIMEOUT_MS`]) | [`StoreError::Sql`] with SQLite's reason | the next batch runs on the same connection |
//! | the connection cannot be opened | [`StoreError::Unavailable`] saying so | the next batch tries again |
//! | the read's closure panics | [`StoreError::Unavailable`] with the panic's message | that reader reopens its connection |
//! | the store was dropped | [`StoreError::Unavailable`] ("closed") | — |
//!
//! `SQLITE_BUSY` is rare for a WAL reader (a wal-index being rebuilt after a crash, a
//! `RESTART`/`TRUNCATE` checkpoint); [`BUSY_TIMEOUT_MS`] waits it out rather than failing.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;

/// Reader threads, each with one read-only connection. Two: one slow read (a page of
/// 10,000 results) never holds up the rest, and more would only buy more page caches on
/// a machine whose reads take microseconds.
pub const READERS: usize = 2;
/// Most reads a reader takes at once, so one reader never hoards a burst the other could
/// share.
pub const BATCH_MAX: usize = 256;
/// Each reader's page cache, in KiB (`PRAGMA cache_size = -CACHE_KIB`).
pub const CACHE_KIB: i64 = 512;
/// How long a reader waits on a lock before answering `SQLITE_BUSY`.
pub const BUSY_TIMEOUT_MS: u32 = 5000;

/// A queued read: runs on a connection (or is told why there is none) and answers its
/// caller itself.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Ran + Send>;

/// How a job went, as its reader needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Done,
    /// The closure panicked: the connection may be mid-statement.
    Panicked,
}

/// The reads waiting, shared by the async side and the reader threads.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Batches taken, to prove reads are batched.
    #[cfg(test)]
    batches: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Every handle is gone: readers finish what is queued and exit.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next batch, waiting for one; `None` once closed and drained.
    fn take(&self) -> Option<Vec<Job>> {
        let mut st = self.lock();
        loop {
            if !st.jobs.is_empty() {
                let n = st.jobs.len().min(BATCH_MAX);
                let batch: Vec<Job> = st.jobs.drain(..n).collect();
                #[cfg(test)]
                self.batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !st.jobs.is_empty() {
                    // More than one batch waits: let another reader share it.
                    self.ready.notify_one();
                }
                return Some(batch);
            }
            if st.closed {
                return None;
            }
            st = self
                .ready
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The read side of one store.
pub(super) struct Readers {
    path: PathBuf,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("path", &self.path)
            .field("queued", &self.queue.lock().jobs.len())
            .finish()
    }
}

impl Readers {
    /// Starts [`READERS`] reader threads on `path`; they open their connections on their
    /// first batch and exit once this is dropped.
    pub(super) fn start(path: PathBuf) -> Result<Self, StoreError> {
        let queue = Arc::new(Queue::default());
        for i in 0..READERS {
            let reader = Reader {
                path: path.clone(),
                queue: Arc::clone(&queue),
                conn: None,
            };
            std::thread::Builder::new()
                .name(format!("thaw-store-read-{i}"))
                .spawn(move || reader.serve())
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start a call store reader: {e}"))
                })?;
        }
        Ok(Self { path, queue })
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a reader's connection and returns what it returned.
    pub(super) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: Result<&Connection, &str>| {
            let (result, ran) = match conn {
                Ok(conn) => match catch_unwind(AssertUnwindSafe(|| f(conn))) {
                    Ok(result) => (result, Ran::Done),
                    Err(panic) => (
                        Err(StoreError::Unavailable(format!(
                            "a call store read panicked: {}",
                            super::engine::panic_message(panic.as_ref())
                        ))),
                        Ran::Panicked,
                    ),
                },
                Err(why) => (Err(StoreError::Unavailable(why.to_owned())), Ran::Done),
            };
            // The caller may have gone (a long-poll whose client hung up): nothing to tell.
            let _ = tx.send(result);
            ran
        });
        {
            let mut st = self.queue.lock();
            if st.closed {
                return Err(closed());
            }
            st.jobs.push_back(job);
        }
        self.queue.ready.notify_one();
        rx.await.map_err(|_| closed())?
    }

    /// Reads waiting for a reader.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.lock().jobs.len()
    }

    /// Batches the readers have taken so far.
    #[cfg(test)]
    pub(super) fn batches(&self) -> u64 {
        self.queue
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the call store's readers are closed".into())
}

/// One reader thread's side.
struct Reader {
    path: PathBuf,
    queue: Arc<Queue>,
    conn: Option<Connection>,
}

impl Reader {
    fn serve(mut self) {
        while let Some(batch) = self.queue.take() {
            self.run(batch);
        }
    }

    /// Runs a batch in one read transaction (one snapshot, one lock taken), each job on
    /// its own: one that fails or panics answers only its own caller.
    fn run(&mut self, batch: Vec<Job>) {
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(why) => {
                tracing::warn!(error = %why, "call store reader cannot open its connection");
                let why = format!("cannot open a read connection to the call store: {why}");
                for job in batch {
                    job(Err(&why));
                }
                return;
            }
        };
        // Without the transaction each statement takes its own snapshot: still correct,
        // only dearer. So a failed BEGIN is no reason to fail the reads.
        let in_tx = conn.execute_batch("BEGIN").is_ok();
        let mut panicked = false;
        for job in batch {
            panicked |= job(Ok(conn)) == Ran::Panicked;
        }
        if in_tx && conn.execute_batch("COMMIT").is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        if panicked {
            // A statement the panic left half-stepped would hold the snapshot open.
            self.conn = None;
        }
    }

    fn connection(&mut self) -> Result<&Connection, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        self.conn.as_ref().ok_or_else(closed)
    }
}

/// A reader's connection.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Read-write flags, but refusing writes: a read-only open cannot create the WAL's
    // shared-memory file if it is missing.
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA query_only = 1; \
         PRAGMA cache_size = -{CACHE_KIB};"
    ))?;
    Ok(conn)
}
