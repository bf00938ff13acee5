//! `thaw`: the one binary: `serve` the platform, call it (`invoke`, `status`, `logs`),
//! and manage model snapshots.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod calls;
mod client;
mod deploy;
mod serve;
mod snapshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// thaw: serverless functions with scale-to-zero and millisecond cold starts.
#[derive(Debug, Parser)]
#[command(name = "thaw", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: the functions of a manifest, scaled from zero.
    Serve(serve::ServeArgs),
    /// Call a function through the Invoke API; exits non-zero on any error.
    Invoke {
        /// The function.
        function: String,
        /// The event: inline JSON, @file, or - for stdin.
        input: String,
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Start a durable call; prints its id once it is committed.
    Spawn {
        /// The function.
        function: String,
        /// The input: inline JSON, @file, or - for stdin.
        input: String,
        /// Repeating a key returns the call it first created instead of a new one.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// A durable call's state and result; exits non-zero if it failed or was cancelled.
    Get {
        /// The call id.
        call_id: String,
        /// Wait for it to finish: for SECS at most, or as long as it takes.
        #[arg(long, num_args = 0..=1, default_missing_value = "inf", value_name = "SECS")]
        wait: Option<f64>,
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Cancel a queued durable call; it will never run.
    Cancel {
        /// The call id.
        call_id: String,
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Run a function over every input of a file, with progress; exits non-zero if any
    /// item failed.
    Map(calls::MapArgs),
    /// Functions and their instances.
    Status {
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// A function's captured output.
    Logs {
        /// The function.
        function: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// Lines to show first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Render AWS SAM, Knative and Docker infrastructure-as-code from the manifest.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Build, verify and inspect model snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

/// The snapshot cache: `--snapshots`, else `THAW_SNAPSHOTS`, else `.cache/snapshots`.
pub(crate) fn default_cache() -> PathBuf {
    std::env::var_os("THAW_SNAPSHOTS")
        .map_or_else(|| PathBuf::from(".cache/snapshots"), PathBuf::from)
}

/// The function binaries: `--bin-dir`, else the directory of this thaw binary.
pub(crate) fn bin_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(d) => Ok(std::path::absolute(d)?),
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("no binary directory"),
    }
}

/// The manifest's directory, absolute: a `command` function's `workdir` is relative to it.
pub(crate) fn manifest_dir(manifest: &std::path::Path) -> Result<PathBuf> {
    let manifest = std::path::absolute(manifest)?;
    Ok(manifest.parent().map(PathBuf::from).unwrap_or_default())
}

fn main() -> Result<()> {
    // The jail and the shim are exec'd by thaw serve and must do nothing else first (no
    // threads, no logging set-up).
    match std::env::args_os().nth(1) {
        Some(a) if a == thaw_runtime::sandbox::jail::SUBCOMMAND => {
            std::process::exit(thaw_runtime::sandbox::jail::main())
        }
        Some(a) if a == thaw_runtime::sandbox::jail::SHIM_SUBCOMMAND => {
            std::process::exit(thaw_runtime::sandbox::jail::shim_main())
        }
        _ => {}
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Invoke {
            function,
            input,
            endpoint,
        } => client::invoke(&endpoint, &function, &input),
        Command::Spawn {
            function,
            input,
            idempotency_key,
            endpoint,
        } => calls::spawn(&endpoint, &function, &input, idempotency_key.as_deref()),
        Command::Get {
            call_id,
            wait,
            endpoint,
        } => calls::get(&endpoint, &call_id, wait),
        Command::Cancel { call_id, endpoint } => calls::cancel(&endpoint, &call_id),
        Command::Map(args) => calls::map(&args),
        Command::Status { endpoint } => client::status(&endpoint),
        Command::Logs {
            function,
            follow,
            tail,
            endpoint,
        } => client::logs(&endpoint, &function, follow, tail),
        Command::Deploy(cmd) => deploy::run(cmd),
        Command::Snapshot(cmd) => snapshot::run(cmd).context("snapshot command failed"),
    }
}
