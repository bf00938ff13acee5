//! `thaw deploy render`: the manifest's resolved Plan rendered as AWS SAM templates,
//! Knative Services or Dockerfiles.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use thaw_deploy::{RenderOptions, Target};
use thaw_manifest::{LookupError, Manifest, Resolver};

#[derive(Debug, Subcommand)]
pub(crate) enum DeployCommand {
    /// Write the infrastructure-as-code of a target into a directory.
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    /// aws-sam, knative, docker, or all.
    #[arg(long, default_value = "all")]
    target: String,
    /// Output directory (one subdirectory per target, one stack per region).
    #[arg(long)]
    out: PathBuf,
    /// The manifest.
    #[arg(long, default_value = "infra/functions.toml")]
    manifest: PathBuf,
    /// Snapshot cache [default: $THAW_SNAPSHOTS or .cache/snapshots].
    #[arg(long)]
    snapshots: Option<PathBuf>,
    /// Directory of the function binaries [default: the directory of this thaw binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Container registry for Knative images.
    #[arg(long, default_value = "registry.example.com/thaw")]
    registry: String,
    /// Image tag.
    #[arg(long, default_value = "latest")]
    tag: String,
}

pub(crate) fn run(cmd: DeployCommand) -> Result<()> {
    let DeployCommand::Render(args) = cmd;
    let manifest = Manifest::load(&args.manifest)?;
    let bin_dir = crate::bin_dir(args.bin_dir)?;
    let cache = thaw_snapshot::cache::SnapshotCache::open(
        args.snapshots.unwrap_or_else(crate::default_cache),
    )?;
    let lookup = |name: &str| -> Result<PathBuf, LookupError> { Ok(cache.resolve(name)?) };
    let plan = manifest.resolve(&Resolver {
        bin_dir,
        manifest_dir: crate::manifest_dir(&args.manifest)?,
        private: Vec::new(),
        snapshots: &lookup,
        allow_missing_snapshots: false,
    })?;
    thaw_deploy::renderable(&plan)?;
    let targets: Vec<Target> = if args.target == "all" {
        vec![Target::AwsSam, Target::Knative, Target::Docker]
    } else {
        vec![args.target.parse()?]
    };
    let opts = RenderOptions {
        registry: args.registry,
        tag: args.tag,
    };
    for target in targets {
        let rendered = thaw_deploy::render(&plan, target, &opts);
        rendered.write(&args.out)?;
        for w in &rendered.warnings {
            eprintln!("warning: {w}");
        }
        for f in &rendered.files {
            println!("{}", args.out.join(&f.path).display());
        }
    }
    Ok(())
}
