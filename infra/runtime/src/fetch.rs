//! Where a function's snapshots come from. Before a function's first cold start the pool
//! asks its [`SnapshotFetcher`] for every snapshot the function uses, once, and every
//! later instance maps the directories it returned.
//!
//! The fetcher makes each snapshot ready to serve: the local copy, pulled from a snapshot
//! store first when the cache lacks it, and verified against its recorded digests once
//! per process. A file that changed in the cache after it was verified there would
//! otherwise load and answer wrongly with HTTP 200; refused here, every call gets the
//! init failure naming the file. `thaw serve` plugs in thaw-snapshot's
//! `serving::Snapshots`; the trait keeps the runtime free of any storage SDK.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// A boxed future, for a dyn-compatible async trait method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes a snapshot ready to serve and returns its directory.
pub trait SnapshotFetcher: Send + Sync + Debug {
    /// The directory of snapshot `name`, pulled first if needed and verified once per
    /// process. It must not block the executor (hash on the blocking pool). The error is
    /// shown to callers as the function's init error, so it names the file at fault.
    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PathBuf, String>>;
}
