//! `thaw`: the one binary. Today it manages snapshots; `serve`, `invoke` and `deploy`
//! arrive with the runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
    /// Build, verify and inspect model snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

/// The snapshot cache: `--snapshots`, else `THAW_SNAPSHOTS`, else `.cache/snapshots`.
pub(crate) fn default_cache() -> PathBuf {
    std::env::var_os("THAW_SNAPSHOTS").map_or_else(|| PathBuf::from(".cache/snapshots"), PathBuf::from)
}

fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Snapshot(cmd) => snapshot::run(cmd).context("snapshot command failed"),
    }
}
