//! `thaw serve`: the embedded platform.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use thaw_manifest::{LookupError, Manifest, Resolver};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The manifest.
    #[arg(long, default_value = "infra/functions.toml")]
    manifest: PathBuf,
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// Snapshot cache [default: $THAW_SNAPSHOTS or .cache/snapshots].
    #[arg(long)]
    snapshots: Option<PathBuf>,
    /// Directory of the function binaries [default: the directory of this thaw binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Serve only this function, over plain HTTP: every path is its URL, `/healthz` is
    /// the readiness probe. The container entrypoint on Knative.
    #[arg(long, value_name = "FUNCTION")]
    single: Option<String>,
    /// With --single: listen on 0.0.0.0:PORT (Knative sets $PORT).
    #[arg(long, env = "PORT")]
    port: Option<u16>,
    /// Pull snapshots missing from the cache from this store (`s3://bucket/prefix`),
    /// overriding the manifest's `[app] snapshot_store`.
    #[arg(long)]
    snapshot_store: Option<String>,
    /// The snapshot store's S3-compatible endpoint.
    #[arg(long)]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing.
    #[arg(long)]
    s3_force_path_style: bool,
    /// Where durable calls live (calls.db) [default: $THAW_STATE_DIR or .cache/state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Run instances as bare processes: no namespaces, no network isolation, no limits.
    /// For debugging and for measuring what the sandbox costs; thaw warns loudly.
    #[arg(long)]
    no_sandbox: bool,
    /// How long in-flight calls may finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    grace: Duration,
    /// The control-plane token: `Authorization: Bearer <token>` is then required on /v1,
    /// the Invoke API and /metrics, and opens every function. Prefer the environment
    /// variable: a flag is visible in the process list.
    #[arg(long, env = "THAW_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The token that opens functions with `url.auth = "token"`.
    #[arg(
        long,
        env = "THAW_URL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    url_token: Option<String>,
    /// Listen on a non-loopback address without a control-plane token: anyone who can
    /// reach it can run functions and read every call's result.
    #[arg(long)]
    insecure_no_token: bool,
    /// Serve /metrics without the control-plane token.
    #[arg(long)]
    public_metrics: bool,
    /// Longest wait for a request's head, and for the next request on an idle
    /// keep-alive connection; slower clients are disconnected.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    header_timeout: Duration,
    /// Most HTTP connections open at once [default: half the open-file limit, at most
    /// 16384].
    #[arg(long)]
    max_connections: Option<usize>,
}

/// The front's authentication, from the flags (or their environment variables).
fn auth_of(args: &ServeArgs) -> Result<thaw_runtime::front::Auth> {
    let token = |name, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| thaw_runtime::front::Token::new(name, v))
            .transpose()
    };
    Ok(thaw_runtime::front::Auth {
        control: token("THAW_TOKEN (--token)", &args.token)?,
        functions: token("THAW_URL_TOKEN (--url-token)", &args.url_token)?,
        public_metrics: args.public_metrics,
    })
}

/// Refuses an address other machines can reach while the control plane is open.
fn check_exposure(
    addr: std::net::SocketAddr,
    auth: &thaw_runtime::front::Auth,
    allow: bool,
) -> Result<()> {
    if addr.ip().is_loopback() || auth.control.is_some() {
        return Ok(());
    }
    if allow {
        tracing::warn!(%addr, "--insecure-no-token: the control plane is open to anyone who can reach this address");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} without a control-plane token: anyone who can reach it could run \
         every function and read every result and log. Set THAW_TOKEN (or --token) to a long random \
         secret and send it as `Authorization: Bearer <token>`, listen on 127.0.0.1, or pass \
         --insecure-no-token to serve without one"
    )
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let d: thaw_manifest::Duration =
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|e| e.to_string())?;
    Ok(d.0)
}

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    let auth = auth_of(&args)?;
    let fd_limit = thaw_runtime::launcher::raise_fd_limit().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
        1024
    });
    let edge = thaw_runtime::front::Edge {
        header_timeout: args.header_timeout,
        max_connections: args
            .max_connections
            .unwrap_or_else(|| thaw_runtime::front::Edge::max_connections_for(fd_limit)),
    };
    let bin_dir = crate::bin_dir(args.bin_dir)?;
    let store_config = match (&args.snapshot_store, &manifest.app.snapshot_store) {
        (Some(url), _) => Some(thaw_snapshot::s3::S3Config {
            url: url.clone(),
            endpoint_url: args.s3_endpoint_url.clone(),
            force_path_style: args.s3_force_path_style,
            region: None,
        }),
        (None, Some(s)) => Some(thaw_snapshot::s3::S3Config {
            url: s.url.clone(),
            endpoint_url: args
                .s3_endpoint_url
                .clone()
                .or_else(|| s.endpoint_url.clone()),
            force_path_style: args.s3_force_path_style || s.force_path_style,
            region: s.region.clone(),
        }),
        (None, None) => None,
    };
    // Absolute: instances run with another working directory (the sandbox's /tmp).
    let cache_dir =
        std::path::absolute(args.snapshots.clone().unwrap_or_else(crate::default_cache))?;
    let cache = thaw_snapshot::cache::SnapshotCache::open(&cache_dir)?;
    let lookup = |name: &str| -> Result<PathBuf, LookupError> { Ok(cache.resolve(name)?) };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::var_os("THAW_STATE_DIR")
            .map_or_else(|| PathBuf::from(".cache/state"), PathBuf::from)
    });
    // Made now (the store would make it), so that no function's workdir can hold it.
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let private = vec![std::path::absolute(&state_dir)?];
    let resolver = Resolver {
        bin_dir,
        manifest_dir: crate::manifest_dir(&args.manifest)?,
        private,
        snapshots: &lookup,
        allow_missing_snapshots: store_config.is_some(),
    };
    let mut plan = manifest.resolve(&resolver)?;
    let mut listen = args.listen.clone();
    if let Some(single) = &args.single {
        let name = thaw_manifest::FunctionName::new(single).map_err(anyhow::Error::msg)?;
        let mut f = plan
            .functions
            .remove(&name)
            .with_context(|| format!("--single {single}: the manifest has no such function"))?;
        // One instance from boot: readiness means the model is loaded.
        f.spec.min_containers = f.spec.min_containers.max(1);
        plan.functions = std::iter::once((name, f)).collect();
        if let Some(port) = args.port {
            listen = format!("0.0.0.0:{port}");
        }
    }
    // Opened before serving: it locks the directory and recovers interrupted calls.
    let settings = thaw_runtime::calls::store::settings(&plan);
    let calls = thaw_runtime::calls::store::CallStore::open(
        &state_dir,
        settings,
        std::sync::Arc::default(),
    )?;
    let mut sandbox = if args.no_sandbox {
        thaw_runtime::sandbox::Sandbox::disabled()
    } else {
        thaw_runtime::sandbox::Sandbox::probe()
    };
    // This binary runs the jail (`thaw __jail`) that waits in each spare sandbox; through
    // /proc/self/exe, which still works if the file is replaced while thaw runs.
    sandbox.jail_exe = Some(std::path::PathBuf::from("/proc/self/exe"));
    sandbox.shim_exe = std::env::current_exe()
        .ok()
        .filter(|exe| thaw_runtime::sandbox::readable_by_others(exe));
    let sandbox = std::sync::Arc::new(sandbox);
    for warning in &sandbox.warnings {
        tracing::warn!("sandbox: {warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = thaw_runtime::front::bind(&listen)
            .await
            .with_context(|| format!("bind {listen}"))?;
        let addr = listener.local_addr()?;
        check_exposure(addr, &auth, args.insecure_no_token)?;
        for (name, f) in &plan.functions {
            if f.spec.url.auth == thaw_manifest::UrlAuth::Token
                && auth.functions.is_none()
                && auth.control.is_none()
            {
                tracing::warn!(
                    function = %name,
                    "url.auth = \"token\" but neither THAW_URL_TOKEN nor THAW_TOKEN is set: every call to it is refused"
                );
            }
        }
        // Every snapshot is verified once by this process before its first instance;
        // missing ones are pulled from the store, if there is one.
        let store = match store_config {
            Some(config) => Some(thaw_snapshot::s3::S3Store::connect(&config).await?),
            None => None,
        };
        let fetcher: Option<std::sync::Arc<dyn thaw_runtime::fetch::SnapshotFetcher>> =
            Some(std::sync::Arc::new(ServingSnapshots(
                thaw_snapshot::serving::Snapshots::new(cache, store),
            )));
        let rt = thaw_runtime::Runtime::start(
            &plan,
            calls,
            fetcher,
            std::sync::Arc::clone(&sandbox),
        );
        // Whoever started us may stop reading stdout; that must never take thaw down.
        let mut banner = format!("thaw serve listening on http://{addr}\n");
        if !sandbox.enabled {
            banner.push_str("  WARNING: --no-sandbox: instances run unisolated, as thaw's user, with no limits\n");
        }
        for name in plan.functions.keys() {
            if args.single.is_some() {
                banner.push_str(&format!(
                    "  function {name}: http://{addr}/ (readiness: /healthz)\n"
                ));
                continue;
            }
            banner.push_str(&format!("  function {name}: http://{addr}/fn/{name}/\n"));
        }
        say(&banner);
        tracing::info!(%addr, functions = plan.functions.len(), "ready");
        match &args.single {
            Some(function) => {
                let app = thaw_runtime::front::single_router(
                    std::sync::Arc::clone(&rt),
                    function.clone(),
                    auth,
                );
                thaw_runtime::serve_app(listener, rt, app, edge, shutdown_signal(), args.grace)
                    .await?;
            }
            None => {
                thaw_runtime::serve(listener, rt, auth, edge, shutdown_signal(), args.grace)
                    .await?
            }
        }
        say("thaw serve stopped; no instance left running\n");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The runtime's snapshot source: thaw-snapshot's serving snapshots (cache, store, one
/// verification per process).
#[derive(Debug)]
struct ServingSnapshots(thaw_snapshot::serving::Snapshots);

impl thaw_runtime::fetch::SnapshotFetcher for ServingSnapshots {
    fn fetch<'a>(
        &'a self,
        name: &'a str,
    ) -> thaw_runtime::fetch::BoxFuture<'a, Result<PathBuf, String>> {
        Box::pin(async move { self.0.ready(name).await.map_err(|e| e.to_string()) })
    }
}
