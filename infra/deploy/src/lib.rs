//! thaw-deploy: the resolved [`Plan`] rendered for engines that already run at scale.
//!
//! Pure functions from a Plan to files; nothing here talks to a cloud. Each target gets
//! one stack per region (`[app] regions`, or a function's own `regions`):
//!
//! - [`sam`]: an AWS SAM template per region. CPU functions become
//!   `AWS::Serverless::Function`s on `provided.al2023` whose `bootstrap` is the function
//!   binary, with a Function URL, reserved and provisioned concurrency and the async
//!   invoke config. GPU functions are left out (Lambda has no GPUs), with a warning.
//! - [`knative`]: a `serving.knative.dev/v1` Service per function, scaling to zero after
//!   `idle_timeout`, with GPU limits and a node selector by GPU type, plus the namespace.
//! - [`docker`]: a Dockerfile per function whose entrypoint is `thaw serve --single`.
//!
//! Everything is rendered as JSON (which CloudFormation and Kubernetes both accept), in a
//! stable order, so the golden files in `golden/` pin every field.

pub mod docker;
pub mod knative;
pub mod sam;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thaw_manifest::{FunctionPlan, Plan};

/// What a render could not do as asked.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The target name is not known.
    #[error("unknown deploy target {0:?}: aws-sam, knative, docker or all")]
    UnknownTarget(String),
    /// A function runs a `command`: its program and workdir are paths on this machine,
    /// which no image or Lambda package built from this repository holds.
    #[error(
        "function {0:?} runs a command, which deploys cannot package yet: render only the \
         binary functions (a manifest without it), and deploy it with its own image"
    )]
    CommandFunction(String),
}

/// A deploy target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// AWS SAM templates.
    AwsSam,
    /// Knative Services.
    Knative,
    /// Dockerfiles.
    Docker,
}

impl std::str::FromStr for Target {
    type Err = DeployError;
    fn from_str(s: &str) -> Result<Self, DeployError> {
        match s {
            "aws-sam" => Ok(Self::AwsSam),
            "knative" => Ok(Self::Knative),
            "docker" => Ok(Self::Docker),
            other => Err(DeployError::UnknownTarget(other.to_owned())),
        }
    }
}

/// Settings a render needs beyond the Plan.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Where container images are pushed: images are `<registry>/<app>-<function>:<tag>`.
    pub registry: String,
    /// The image tag.
    pub tag: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            registry: "registry.example.com/thaw".into(),
            tag: "latest".into(),
        }
    }
}

/// A rendered file: where it goes under the output directory, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative path.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
}

/// The files of a render, and what it left out and why.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// Files to write.
    pub files: Vec<File>,
    /// Functions or settings the target cannot express.
    pub warnings: Vec<String>,
}

impl Rendered {
    /// Writes every file under `out`.
    pub fn write(&self, out: &Path) -> Result<(), DeployError> {
        for f in &self.files {
            let path = out.join(&f.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| DeployError::Write {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            std::fs::write(&path, &f.text).map_err(|source| DeployError::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Whether every function of `plan` can be rendered: deploys package cargo binaries
/// only, so a `command` function is refused here rather than rendered wrong.
pub fn renderable(plan: &Plan) -> Result<(), DeployError> {
    match plan.functions.values().find(|f| f.spec.command.is_some()) {
        Some(f) => Err(DeployError::CommandFunction(f.name.to_string())),
        None => Ok(()),
    }
}

/// Renders `plan` for `target` (after [`renderable`]).
pub fn render(plan: &Plan, target: Target, opts: &RenderOptions) -> Rendered {
    match target {
        Target::AwsSam => sam::render(plan),
        Target::Knative => knative::render(plan, opts),
        Target::Docker => docker::render(plan, opts),
    }
}

/// The functions of each region's stack: the app's regions (or one `default` stack),
/// each holding the functions that do not name other regions.
pub fn stacks(plan: &Plan) -> BTreeMap<String, Vec<&FunctionPlan>> {
    let mut regions: Vec<String> = plan.regions.clone();
    for f in plan.functions.values() {
        for r in f.spec.regions.iter().flatten() {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
    }
    if regions.is_empty() {
        regions.push("default".into());
    }
    let mut out: BTreeMap<String, Vec<&FunctionPlan>> = BTreeMap::new();
    for region in regions {
        let members: Vec<&FunctionPlan> = plan
            .functions
            .values()
            .filter(|f| match &f.spec.regions {
                Some(own) => own.contains(&region),
                None => plan.regions.is_empty() || plan.regions.contains(&region),
            })
            .collect();
        if !members.is_empty() {
            out.insert(region, members);
        }
    }
    out
}

/// `embed-fast` -> `EmbedFast`: a CloudFormation logical id.
pub fn pascal(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The snapshot name a function restores (its `snapshot`, else none).
pub fn snapshot_names(f: &FunctionPlan) -> Vec<(Option<String>, String)> {
    let mut names: Vec<(Option<String>, String)> =
        f.spec.snapshot.iter().map(|s| (None, s.clone())).collect();
    names.extend(
        f.spec
            .snapshots
            .iter()
            .map(|(role, s)| (Some(role.clone()), s.clone())),
    );
    names
}

/// The environment variable a snapshot reaches its function by.
pub fn snapshot_env(role: Option<&str>) -> String {
    match role {
        None => "THAW_SNAPSHOT_DIR".into(),
        Some(r) => format!("THAW_SNAPSHOT_DIR_{}", r.to_ascii_uppercase()),
    }
}

/// One warning per function with `volumes`, which no deploy target can mount: host
/// directories are mounted into instances by `thaw serve` only.
pub(crate) fn volume_warnings<'a>(
    functions: impl IntoIterator<Item = &'a FunctionPlan>,
    warnings: &mut Vec<String>,
) {
    for f in functions {
        if !f.spec.volumes.is_empty() {
            let paths: Vec<&str> = f.spec.volumes.keys().map(String::as_str).collect();
            warnings.push(format!(
                "{}: volumes are mounted by thaw serve only; {} left out",
                f.name,
                paths.join(", ")
            ));
        }
    }
}

/// Pretty JSON with a trailing newline.
pub(crate) fn json_text(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod golden;
