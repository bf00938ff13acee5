//! The resolved Plan: every function with its binary, snapshots and volumes found on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::schema::{FunctionName, FunctionSpec, Manifest, Routes};
use crate::ManifestError;

/// Why a snapshot lookup failed; shown as is, after the function's name.
pub type LookupError = Box<dyn std::error::Error + Send + Sync>;

/// Finds a snapshot's local directory by name. The CLI passes the snapshot cache; any
/// `Fn(&str) -> Result<PathBuf, LookupError>` is one.
pub trait SnapshotLookup {
    /// The directory of snapshot `name`.
    fn find(&self, name: &str) -> Result<PathBuf, LookupError>;
}

impl<F: Fn(&str) -> Result<PathBuf, LookupError>> SnapshotLookup for F {
    fn find(&self, name: &str) -> Result<PathBuf, LookupError> {
        self(name)
    }
}

/// Where to find binaries and snapshots.
#[derive(Clone)]
pub struct Resolver<'a> {
    /// Directory of the function binaries (`target/release`).
    pub bin_dir: PathBuf,
    /// The manifest's directory: a `command`'s `workdir` is relative to it.
    pub manifest_dir: PathBuf,
    /// Directories no function may see: no `workdir` may hold one (thaw's call store).
    pub private: Vec<PathBuf>,
    /// Finds snapshots by name.
    pub snapshots: &'a dyn SnapshotLookup,
    /// Snapshots the lookup cannot find are left for the runtime to pull (a snapshot
    /// store is configured) rather than refused.
    pub allow_missing_snapshots: bool,
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("bin_dir", &self.bin_dir)
            .field("manifest_dir", &self.manifest_dir)
            .field("allow_missing_snapshots", &self.allow_missing_snapshots)
            .finish_non_exhaustive()
    }
}

/// What the runtime runs: the manifest, validated and resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The app's name.
    pub app: String,
    /// Regions for deploys.
    pub regions: Vec<String>,
    /// Functions by name.
    pub functions: BTreeMap<FunctionName, FunctionPlan>,
    /// The functions behind the compatible routes, defaults applied.
    pub routes: Routes,
}

/// One function, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionPlan {
    /// The function's name.
    pub name: FunctionName,
    /// Absolute path of the program an instance execs: its `binary`, or its `command`'s
    /// first item.
    pub binary_path: PathBuf,
    /// The program's arguments (a `command`'s other items).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Where the program runs (a `command`'s `workdir`); a binary runs in `/tmp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Directories the sandbox binds read-only for the program: its workdir, and the
    /// install prefix of an interpreter outside `/usr` (a Python venv).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<PathBuf>,
    /// Its snapshot's directory in the cache.
    pub snapshot_dir: Option<PathBuf>,
    /// Its further snapshots' directories, by role.
    pub snapshot_dirs: BTreeMap<String, PathBuf>,
    /// Snapshots not in the cache yet, `(role, name)` (`None` is the main `snapshot`):
    /// the runtime pulls them from the snapshot store before the first cold start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_snapshots: Vec<(Option<String>, String)>,
    /// Whether `thaw serve` forks its instances from a warm template (the `template`
    /// key, or its default).
    pub template: bool,
    /// The declared settings.
    pub spec: FunctionSpec,
}

impl Manifest {
    /// Resolves every program, snapshot and volume. Errors name the function and the path.
    pub fn resolve(&self, resolver: &Resolver<'_>) -> Result<Plan, ManifestError> {
        self.validate()?;
        let mut functions = BTreeMap::new();
        for (name, spec) in &self.function {
            let program = crate::program::resolve(
                name.as_str(),
                spec,
                &resolver.bin_dir,
                &resolver.manifest_dir,
                &resolver.private,
            )?;
            for (sandbox, host) in &spec.volumes {
                if !std::path::Path::new(host).is_dir() {
                    return Err(ManifestError::VolumeNotADirectory {
                        function: name.to_string(),
                        sandbox: sandbox.clone(),
                        host: PathBuf::from(host),
                    });
                }
            }
            let mut missing_snapshots = Vec::new();
            let mut find = |role: Option<&String>, s: &String| match resolver.snapshots.find(s) {
                Ok(dir) => Ok(Some(dir)),
                Err(_) if resolver.allow_missing_snapshots => {
                    missing_snapshots.push((role.cloned(), s.clone()));
                    Ok(None)
                }
                Err(source) => Err(ManifestError::Snapshot {
                    function: name.to_string(),
                    source,
                }),
            };
            let snapshot_dir = match &spec.snapshot {
                Some(s) => find(None, s)?,
                None => None,
            };
            let mut snapshot_dirs = BTreeMap::new();
            for (role, s) in &spec.snapshots {
                if let Some(dir) = find(Some(role), s)? {
                    snapshot_dirs.insert(role.clone(), dir);
                }
            }
            functions.insert(
                name.clone(),
                FunctionPlan {
                    name: name.clone(),
                    binary_path: program.path,
                    args: program.args,
                    workdir: program.workdir,
                    read_only: program.read_only,
                    snapshot_dir,
                    snapshot_dirs,
                    missing_snapshots,
                    template: spec.template.unwrap_or(
                        spec.binary.is_some()
                            && (spec.snapshot.is_some() || !spec.snapshots.is_empty())
                            && spec.gpu.kind.is_none(),
                    ),
                    spec: spec.clone(),
                },
            );
        }
        let by_name = |name: &str| {
            FunctionName::new(name)
                .ok()
                .filter(|n| functions.contains_key(n))
        };
        let routes = Routes {
            embeddings: self.routes.embeddings.clone().or_else(|| by_name("embed")),
            rerank: self.routes.rerank.clone().or_else(|| by_name("rerank")),
            chat: self.routes.chat.clone().or_else(|| by_name("generate")),
        };
        Ok(Plan {
            app: self.app.name.clone(),
            regions: self.app.regions.clone(),
            routes,
            functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{LookupError, Resolver};
    use crate::{Manifest, ManifestError};

    /// A fresh scratch directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "thaw-manifest-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(dir.join("bin")).expect("scratch dir");
        std::fs::write(dir.join("bin/worker"), b"").expect("stand-in binary");
        dir
    }

    fn resolve(dir: &std::path::Path, host: &std::path::Path) -> Result<(), ManifestError> {
        let text = format!(
            "[app]\nname = \"x\"\n[function.w]\nbinary = \"worker\"\nvolumes = {{ \"/mnt/data\" = {:?} }}\n",
            host.display().to_string()
        );
        let no_snapshots = |name: &str| -> Result<PathBuf, LookupError> {
            Err(format!("no snapshot {name:?}").into())
        };
        let resolver = Resolver {
            bin_dir: dir.join("bin"),
            manifest_dir: dir.to_path_buf(),
            private: Vec::new(),
            snapshots: &no_snapshots,
            allow_missing_snapshots: false,
        };
        Manifest::parse(&text)?.resolve(&resolver).map(|plan| {
            assert_eq!(plan.functions.len(), 1);
        })
    }

    #[test]
    fn volumes_need_an_existing_host_directory() {
        let dir = scratch("volumes");
        resolve(&dir, &dir.join("bin")).expect("an existing directory resolves");
        for host in [dir.join("missing"), dir.join("bin/worker")] {
            match resolve(&dir, &host) {
                Err(e @ ManifestError::VolumeNotADirectory { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("\"w\"") && msg.contains("/mnt/data"), "{msg}");
                    assert!(msg.contains(&host.display().to_string()), "{msg}");
                }
                other => panic!(
                    "{}: expected VolumeNotADirectory, got {other:?}",
                    host.display()
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
