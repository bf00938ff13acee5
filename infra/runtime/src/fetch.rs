//! Snapshots pulled on demand: when a function's snapshot is not in the local cache and
//! a snapshot store is configured, the pool asks a [`SnapshotFetcher`] for it before the
//! function's first cold start, once, and every later instance maps the local copy.
//!
//! The trait keeps the runtime free of any storage SDK: `thaw serve` plugs in the S3
//! store from thaw-snapshot.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// A boxed future, for a dyn-compatible async trait method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Brings a snapshot into the local cache and returns its directory.
pub trait SnapshotFetcher: Send + Sync + Debug {
    /// The directory of snapshot `name`, pulling it first if needed. The error is shown
    /// to callers as the function's init error.
    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PathBuf, String>>;
}
