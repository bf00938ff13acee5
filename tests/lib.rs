//! Helpers shared by thaw's end-to-end tests and its bench: where the built binaries and
//! snapshots are, and a harness that runs a real function binary under thaw's real
//! Runtime API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use thaw_protocol::runtime_api::env;
use thaw_runtime::runtime_api::{new_request_id, InstanceApi, Invocation, Lifecycle, Outcome};
use tokio::process::{Child, Command};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A release binary built by `make build` (which `make test` runs first).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let path = dir.join("release").join(name);
    assert!(path.exists(), "{} is missing: run `make build` (make test does) first", path.display());
    path
}

/// The snapshot cache `make snapshots` fills.
pub fn snapshot_cache() -> PathBuf {
    std::env::var_os("THAW_SNAPSHOTS").map_or_else(|| repo_root().join(".cache/snapshots"), PathBuf::from)
}

/// The directory of a built snapshot.
pub fn snapshot_dir(name: &str) -> PathBuf {
    let cache = thaw_snapshot::cache::SnapshotCache::open(snapshot_cache()).expect("open snapshot cache");
    cache.resolve(name).unwrap_or_else(|e| panic!("{e}: run `make snapshots` (make test does) first"))
}

/// A test fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// One function process driven through its own Runtime API listener: what `thaw serve`
/// does per instance, without the scheduler.
#[derive(Debug)]
pub struct Harness {
    /// The instance's Runtime API.
    pub api: InstanceApi,
    /// The function process.
    pub child: Child,
}

impl Harness {
    /// Starts `binary` with the Lambda environment and waits for its first `next`.
    pub async fn start(binary: &std::path::Path, snapshot: Option<&std::path::Path>, extra_env: &[(&str, &str)]) -> Self {
        let api = InstanceApi::bind().await.expect("bind runtime api");
        let mut cmd = Command::new(binary);
        cmd.env(env::RUNTIME_API, api.addr().to_string())
            .env(env::FUNCTION_NAME, "test")
            .env(env::MEMORY_SIZE, "1024")
            .env(env::FUNCTION_VERSION, "$LATEST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = snapshot {
            cmd.env(env::SNAPSHOT_DIR, dir);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn function");
        let mut lifecycle = api.lifecycle();
        tokio::time::timeout(Duration::from_secs(60), lifecycle.wait_for(|l| *l != Lifecycle::Initialising))
            .await
            .expect("function did not reach its first next within 60 s")
            .expect("runtime api stopped");
        Self { api, child }
    }

    /// Sends one event and waits for its outcome.
    pub async fn invoke(&self, event: &serde_json::Value) -> Outcome {
        self.invoke_bytes(Bytes::from(event.to_string())).await
    }

    /// Sends raw event bytes and waits for the outcome.
    pub async fn invoke_bytes(&self, payload: Bytes) -> Outcome {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let inv = Invocation { id: new_request_id(), payload, timeout: Duration::from_secs(60), reply };
        self.api.submit(inv).await.expect("instance accepts work");
        tokio::time::timeout(Duration::from_secs(120), rx).await.expect("invocation timed out").expect("instance died")
    }
}

/// Parses a successful outcome's payload as JSON, or panics with the error.
pub fn ok_json(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Response(b) => serde_json::from_slice(&b).expect("response is JSON"),
        Outcome::Error(d) => panic!("function error: {d:?}"),
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
