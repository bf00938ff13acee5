//! Dockerfiles: one per function, built from the repository root after `make build` and
//! `make snapshots`:
//!
//! ```sh
//! docker build -f deploy/docker/embed/Dockerfile -t registry/app-embed .
//! ```
//!
//! A GPU function starts from NVIDIA's CUDA runtime image of the CUDA release `make gpu`
//! builds with ([`CUDA_BASE`]: cuBLAS and cuRAND of the same major version, which the
//! binaries load at run time), and takes its function binary from the CUDA build its
//! GPU type needs ([`thaw_manifest::GpuKind::cuda_arch`]: `target/cuda-sm75` for a T4,
//! `target/cuda-sm80` for the others). Any other function starts from Debian slim.
//! A manifest `image` replaces either base.
//! The function's snapshots are baked in, content-addressed as in thaw's cache, and the
//! entrypoint is `thaw serve --single <function>` on `$PORT` (8080).
//!
//! No token is baked in: the container is run with `-e THAW_TOKEN=...` (thaw refuses to
//! listen on 0.0.0.0 without a control-plane token) and, for a function with
//! `url.auth = "token"`, `-e THAW_URL_TOKEN=...`; the Dockerfile says so.

use std::fmt::Write as _;

use thaw_manifest::{FunctionPlan, Plan};

use crate::knative::PORT;
use crate::{snapshot_names, File, RenderOptions, Rendered};

/// The default base image of GPU functions: the runtime libraries of the CUDA release
/// the Makefile's `CUDA_TOOLKIT` pin builds with (13.4; a test holds the two together).
pub const CUDA_BASE: &str = "nvidia/cuda:13.4.2-runtime-ubuntu24.04";
/// The default base image of CPU functions.
pub const SLIM_BASE: &str = "debian:bookworm-slim";

/// Renders a Dockerfile per function.
pub fn render(plan: &Plan, _opts: &RenderOptions) -> Rendered {
    let mut out = Rendered::default();
    for f in plan.functions.values() {
        // thaw serve in the container mounts the volumes, but only from directories the
        // container has: they must be bind-mounted at the same paths when it runs.
        if !f.spec.volumes.is_empty() {
            let binds: Vec<String> = f
                .spec
                .volumes
                .values()
                .map(|host| format!("-v {host}:{host}"))
                .collect();
            out.warnings.push(format!(
                "{}: volumes are mounted by thaw serve only; run the container with {}",
                f.name,
                binds.join(" ")
            ));
        }
        out.files.push(File {
            path: format!("docker/{}/Dockerfile", f.name).into(),
            text: dockerfile(plan, f),
        });
    }
    out
}

/// The snapshot object directory of a resolved snapshot path (`…/objects/<digest>`).
fn object_of(dir: Option<&std::path::PathBuf>) -> Option<String> {
    dir.and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

fn dockerfile(plan: &Plan, f: &FunctionPlan) -> String {
    let spec = &f.spec;
    let gpu = spec.gpu.kind.is_some();
    // The function binary: the CUDA build for the GPU type, else the CPU build.
    let binary_dir = spec.gpu.kind.map_or_else(
        || "target/release".to_owned(),
        |k| k.cuda_arch().release_dir(),
    );
    let base = spec
        .image
        .clone()
        .unwrap_or_else(|| if gpu { CUDA_BASE } else { SLIM_BASE }.to_owned());
    let mut d = String::new();
    let _ = writeln!(
        d,
        "# thaw function {} of app {}, rendered by `thaw deploy render --target docker`.",
        f.name, plan.app
    );
    let _ = writeln!(
        d,
        "# Build from the repository root after `make build`{} and `make snapshots`:",
        if gpu { ", `make gpu`" } else { "" }
    );
    let _ = writeln!(
        d,
        "#   docker build -f <out>/docker/{}/Dockerfile .",
        f.name
    );
    let _ = writeln!(
        d,
        "# Run with -e THAW_TOKEN=<secret>{}: thaw serve refuses to listen on 0.0.0.0 without a control-plane token.",
        if spec.url.auth == thaw_manifest::UrlAuth::Token {
            " -e THAW_URL_TOKEN=<secret> (url.auth = \"token\")"
        } else {
            ""
        }
    );
    let _ = writeln!(d, "FROM {base}");
    let _ = writeln!(d, "RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*");
    let _ = writeln!(
        d,
        "COPY target/release/thaw {binary_dir}/{} /opt/thaw/bin/",
        spec.binary.as_deref().unwrap_or_default()
    );
    let _ = writeln!(d, "COPY infra/functions.toml /opt/thaw/functions.toml");
    // In the order snapshot_names gives: the main snapshot, then the roles.
    let mut dirs: Vec<Option<&std::path::PathBuf>> = Vec::new();
    if spec.snapshot.is_some() {
        dirs.push(f.snapshot_dir.as_ref());
    }
    dirs.extend(f.snapshot_dirs.values().map(Some));
    for ((_, name), dir) in snapshot_names(f).into_iter().zip(dirs) {
        let _ = writeln!(
            d,
            "COPY .cache/snapshots/names/{name} /opt/thaw/snapshots/names/{name}"
        );
        if let Some(object) = object_of(dir) {
            let _ = writeln!(
                d,
                "COPY .cache/snapshots/objects/{object}/ /opt/thaw/snapshots/objects/{object}/"
            );
        }
    }
    if gpu {
        let _ = writeln!(
            d,
            "ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility"
        );
    }
    let _ = writeln!(
        d,
        "ENV THAW_SNAPSHOTS=/opt/thaw/snapshots THAW_STATE_DIR=/tmp/thaw-state PORT={PORT}"
    );
    let _ = writeln!(d, "EXPOSE {PORT}");
    let _ = writeln!(
        d,
        "ENTRYPOINT [\"/opt/thaw/bin/thaw\", \"serve\", \"--single\", \"{}\", \"--manifest\", \"/opt/thaw/functions.toml\", \"--bin-dir\", \"/opt/thaw/bin\"]",
        f.name
    );
    d
}
