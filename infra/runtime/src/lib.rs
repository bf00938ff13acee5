//! thaw's control plane.
//!
//! - [`runtime_api`]: the AWS Lambda Runtime API, one listener per instance on
//!   127.0.0.1:0. `lambda_runtime` polls fixed paths, so the port is how thaw knows which
//!   instance is asking for work.
//! - [`launcher`]: the seam through which an instance comes to exist and is stopped;
//!   [`launcher::ProcessLauncher`] execs the function inside the [`sandbox`].
//! - [`sandbox`]: namespaces (bubblewrap), the Runtime API's network namespace, cgroup
//!   limits; each part probed at startup and reported per function.
//! - [`pool`]: one function's scheduler: queue, scale-up, dispatch, idle reaper, faults.
//! - [`front`]: the HTTP front: function URLs, the AWS Invoke API, `/v1`, health, metrics.
//! - [`calls`]: durable calls: the SQLite call store, the per-function executor that
//!   runs spawned, mapped and Event calls with retries, and map input splitting.
//! - [`fetch`]: snapshots missing from the local cache, pulled on the first cold start.
//! - [`metrics`], the Prometheus registry.
//!
//! [`serve`] ties them together as `run(listener, shutdown)`.

pub mod calls;
pub mod fetch;
pub mod front;
pub mod launcher;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod runtime_api;
pub mod sandbox;
#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thaw_manifest::Plan;
use tokio::sync::watch;

use crate::calls::store::CallStore;
use crate::launcher::{ProcessLauncher, TemplateLauncher};
use crate::metrics::Metrics;
use crate::pool::FunctionPool;
use crate::sandbox::Sandbox;

/// Every function's pool, and what the front needs to serve them.
#[derive(Debug)]
pub struct Runtime {
    /// Pools by function name.
    pub pools: BTreeMap<String, Arc<FunctionPool>>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Durable calls.
    pub store: CallStore,
    /// The sandbox parts this machine has.
    pub sandbox: Arc<Sandbox>,
    /// The functions behind the compatible routes (`[routes]`).
    pub routes: thaw_manifest::Routes,
    accepting: AtomicBool,
    /// Turns true when thaw stops accepting work: executors stop claiming calls.
    closing: watch::Sender<bool>,
    /// Turns true when instances are being stopped: background tasks end.
    stop_background: watch::Sender<bool>,
}

impl Runtime {
    /// Creates a pool per function, starts their `min_containers`, and starts running
    /// the durable calls `store` holds (those recovered from a previous run included).
    pub fn start(
        plan: &Plan,
        store: CallStore,
        fetcher: Option<Arc<dyn fetch::SnapshotFetcher>>,
        sandbox: Arc<Sandbox>,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let (stop_background, stopped) = watch::channel(false);
        let (closing, closing_rx) = watch::channel(false);
        let gpus = launcher::GpuPool::from_env();
        let pools: BTreeMap<String, Arc<FunctionPool>> = plan
            .functions
            .iter()
            .enumerate()
            .map(|(index, (name, f))| {
                let exec = ProcessLauncher::new(Arc::clone(&sandbox), Arc::clone(&gpus), f, index);
                let report = exec.report().clone();
                let launcher: Arc<dyn launcher::Launcher> = if f.template {
                    Arc::new(TemplateLauncher::new(
                        exec,
                        Arc::clone(&sandbox),
                        Arc::clone(&metrics),
                        f,
                    ))
                } else {
                    Arc::new(exec)
                };
                (
                    name.to_string(),
                    FunctionPool::start(
                        f.clone(),
                        launcher,
                        report,
                        Arc::clone(&metrics),
                        stopped.clone(),
                        fetcher.clone(),
                    ),
                )
            })
            .collect();
        for pool in pools.values() {
            tokio::spawn(calls::executor::run(
                Arc::clone(pool),
                store.clone(),
                closing_rx.clone(),
            ));
        }
        let gc_period = plan
            .functions
            .values()
            .map(|f| f.spec.result_ttl.0 / 2)
            .min()
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(collect_expired(store.clone(), gc_period, stopped));
        Arc::new(Self {
            pools,
            metrics,
            store,
            sandbox,
            routes: plan.routes.clone(),
            accepting: AtomicBool::new(true),
            closing,
            stop_background,
        })
    }

    /// Turns true when thaw stops accepting work; long-polls answer at once then.
    pub fn closing_signal(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Whether new calls are accepted.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stops accepting calls; queued calls fail with `ShuttingDown`.
    pub fn close(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.closing.send(true);
        for pool in self.pools.values() {
            pool.close();
        }
    }

    /// Calls in flight across every function.
    pub fn in_flight(&self) -> u32 {
        self.pools.values().map(|p| p.in_flight()).sum()
    }

    /// Stops every instance (SIGTERM, then SIGKILL after `grace`) and the background tasks.
    pub async fn stop_instances(&self, grace: Duration) {
        let _ = self.stop_background.send(true);
        for pool in self.pools.values() {
            pool.stop_all(grace).await;
        }
        if let Some(cgroups) = &self.sandbox.cgroups {
            cgroups.remove();
        }
    }
}

/// Collects expired results every `period` until thaw stops.
async fn collect_expired(store: CallStore, period: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match store.collect_expired().await {
            Ok((0, 0)) => {}
            Ok((expired, deleted)) => tracing::info!(expired, deleted, "collected expired results"),
            Err(e) => tracing::warn!(error = %e, "cannot collect expired results"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Serves `runtime` on `listener` until `shutdown` resolves, then shuts down gracefully:
/// stop accepting calls (new ones get 503 while in-flight ones finish, for up to `grace`),
/// stop every instance, stop accepting connections, and return only when no child
/// process is left.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    auth: front::Auth,
    edge: front::Edge,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = front::router(Arc::clone(&runtime), auth);
    serve_app(listener, runtime, app, edge, shutdown, grace).await
}

/// [`serve`] with other routes: `thaw serve --single` serves [`front::single_router`].
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    app: axum::Router,
    edge: front::Edge,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Connections still open once instances are stopped get this long to finish.
    let linger = Duration::from_secs(5);
    let mut server = tokio::spawn(front::serve(listener, app, edge, stop_rx, linger));
    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            runtime.stop_instances(pool::STOP_GRACE).await;
            return result.unwrap_or_else(|join| Err(std::io::Error::other(join)));
        }
    }
    tracing::info!("shutting down: no new calls, waiting for in-flight ones");
    runtime.close();
    let deadline = tokio::time::Instant::now() + grace;
    while runtime.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.stop_instances(pool::STOP_GRACE).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(linger + Duration::from_secs(1), server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => Ok(()),
    }
}
