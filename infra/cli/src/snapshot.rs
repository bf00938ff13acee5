//! `thaw snapshot ...`

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use thaw_snapshot::build::BuildOptions;
use thaw_snapshot::cache::SnapshotCache;
use thaw_snapshot::recipe::Recipe;
use thaw_snapshot::{Pooling, SnapshotMeta, WeightDtype};

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Build a snapshot from a Hugging Face model folder or a recipe.
    Build(BuildArgs),
    /// Check every file's size and sha256, and the weights header.
    Verify {
        /// A snapshot directory, or a name in the cache.
        target: String,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Print a snapshot's metadata.
    Inspect {
        /// A snapshot directory, or a name in the cache.
        target: String,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// List the snapshots in the cache.
    List {
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Upload a snapshot to an S3 store (files, then snapshot.json, then the name).
    Push {
        /// A snapshot directory, or a name in the cache.
        target: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Download a snapshot from an S3 store into the cache (parallel ranged GETs, verified).
    Pull {
        /// The snapshot name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Ranged GETs in flight per file (1 = one plain GET per file).
        #[arg(long, default_value_t = thaw_snapshot::s3::PARALLEL)]
        parallel: usize,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Print the directory of a cached snapshot.
    Path {
        /// The snapshot name.
        name: String,
        #[command(flatten)]
        cache: CacheArg,
    },
}

/// Where an S3 snapshot store is.
#[derive(Debug, Args, Clone)]
pub(crate) struct StoreArgs {
    /// `s3://bucket/prefix`.
    pub(crate) url: String,
    /// An S3-compatible endpoint, such as http://127.0.0.1:9000 [default: AWS].
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub(crate) endpoint_url: Option<String>,
    /// Path-style addressing, which most S3-compatible stores need.
    #[arg(long)]
    pub(crate) force_path_style: bool,
    /// The region [default: from the AWS chain, else us-east-1].
    #[arg(long)]
    pub(crate) region: Option<String>,
}

impl StoreArgs {
    pub(crate) fn config(&self) -> thaw_snapshot::s3::S3Config {
        thaw_snapshot::s3::S3Config {
            url: self.url.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            region: self.region.clone(),
        }
    }
}

fn mb_per_s(bytes: u64, elapsed: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

#[derive(Debug, Args)]
pub(crate) struct CacheArg {
    /// Snapshot cache directory [default: $THAW_SNAPSHOTS or .cache/snapshots].
    #[arg(long = "snapshots")]
    snapshots: Option<PathBuf>,
}

impl CacheArg {
    fn open(&self) -> Result<SnapshotCache> {
        Ok(SnapshotCache::open(
            self.snapshots.clone().unwrap_or_else(crate::default_cache),
        )?)
    }
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json), or a
    /// GGUF file (a `tokenizer.json` beside it is used; else the GGUF's own is rebuilt).
    model_dir: Option<PathBuf>,
    /// A recipe (snapshots/*.toml) instead of a folder and flags.
    #[arg(long, conflicts_with = "model_dir")]
    recipe: Vec<PathBuf>,
    /// Snapshot name (required with a model folder).
    #[arg(long)]
    name: Option<String>,
    /// Weight dtype: f32, f16, bf16, or int8 (BERT encoder projections per channel, for
    /// the CPU encoder's INT8 kernels); q8_0, f16 or f32 for GGUF. Default: f32, and for a
    /// GGUF the file's own (F32, F16, Q8_0; other quantizations become Q8_0).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<WeightDtype>,
    /// Override max_seq_length.
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Override pooling: mean or cls.
    #[arg(long, value_parser = parse_pooling)]
    pooling: Option<Pooling>,
    /// Write the snapshot to this directory instead of the cache.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArg,
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown dtype {s:?}: f32, f16, bf16, int8 or q8_0"))
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown pooling {s:?}: mean or cls"))
}

pub(crate) fn run(cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Build(args) => build(args),
        SnapshotCommand::Push {
            target,
            store,
            cache,
        } => {
            let dir = locate(&target, &cache)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let t = rt.block_on(async {
                let s3 = thaw_snapshot::s3::S3Store::connect(&store.config()).await?;
                s3.push(&dir).await
            })?;
            println!(
                "pushed {} ({}) to {}: {} bytes in {:.2} s ({:.0} MB/s)",
                t.name,
                &t.digest[..12],
                store.url,
                t.bytes,
                t.elapsed.as_secs_f64(),
                mb_per_s(t.bytes, t.elapsed)
            );
            Ok(())
        }
        SnapshotCommand::Pull {
            name,
            store,
            parallel,
            cache,
        } => {
            let cache = cache.open()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let opts = thaw_snapshot::s3::PullOptions {
                parallel,
                ..Default::default()
            };
            let (entry, t) = rt.block_on(async {
                let s3 = thaw_snapshot::s3::S3Store::connect(&store.config()).await?;
                s3.pull(&name, &cache, opts).await
            })?;
            println!(
                "pulled {} ({}) into {}: {} bytes in {:.2} s ({:.0} MB/s)",
                entry.name,
                &entry.digest[..12],
                entry.dir.display(),
                t.bytes,
                t.elapsed.as_secs_f64(),
                mb_per_s(t.bytes, t.elapsed)
            );
            Ok(())
        }
        SnapshotCommand::Verify { target, cache } => {
            let dir = locate(&target, &cache)?;
            let meta = thaw_snapshot::verify(&dir)?;
            println!(
                "ok: {} ({} files verified) at {}",
                meta.name,
                meta.files.len(),
                dir.display()
            );
            Ok(())
        }
        SnapshotCommand::Inspect { target, cache } => {
            let dir = locate(&target, &cache)?;
            let meta = SnapshotMeta::read(&dir)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
        SnapshotCommand::List { cache } => {
            let cache = cache.open()?;
            for name in cache.names()? {
                let dir = cache.resolve(&name)?;
                let meta = SnapshotMeta::read(&dir)?;
                println!(
                    "{name}\t{:?}\t{:?}\t{}",
                    meta.architecture,
                    meta.dtype,
                    dir.display()
                );
            }
            Ok(())
        }
        SnapshotCommand::Path { name, cache } => {
            println!("{}", cache.open()?.resolve(&name)?.display());
            Ok(())
        }
    }
}

fn locate(target: &str, cache: &CacheArg) -> Result<PathBuf> {
    let path = PathBuf::from(target);
    if path.is_dir() {
        return Ok(path);
    }
    Ok(cache.open()?.resolve(target)?)
}

fn build(args: BuildArgs) -> Result<()> {
    let jobs: Vec<(PathBuf, BuildOptions)> = if args.recipe.is_empty() {
        let Some(model_dir) = args.model_dir else {
            bail!("give a model folder or --recipe")
        };
        let Some(name) = args.name else {
            bail!("--name is required when building from a folder")
        };
        let opts = BuildOptions {
            name,
            dtype: args.dtype,
            max_seq_length: args.max_seq_length,
            pooling: args.pooling,
            ..BuildOptions::default()
        };
        vec![(model_dir, opts)]
    } else {
        let mut jobs = Vec::new();
        for path in &args.recipe {
            let recipe = Recipe::read(path)?;
            jobs.push((recipe.model_dir.clone(), recipe.options()));
        }
        jobs
    };
    for (model_dir, opts) in jobs {
        let started = std::time::Instant::now();
        match &args.out {
            Some(out) => {
                let meta = thaw_snapshot::build::build(&model_dir, out, &opts)?;
                println!(
                    "built {} ({:?}, {:?}) at {}",
                    meta.name,
                    meta.architecture,
                    meta.dtype,
                    out.display()
                );
            }
            None => {
                let entry = args.cache.open()?.build(&model_dir, &opts)?;
                println!(
                    "built {} ({:?}, {:?}) sha256:{} at {} in {:.1}s",
                    entry.name,
                    entry.meta.architecture,
                    entry.meta.dtype,
                    &entry.digest[..12],
                    entry.dir.display(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
