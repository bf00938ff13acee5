//! A content-addressed local snapshot cache.
//!
//! ```text
//! <root>/objects/<sha256 of snapshot.json>/   a verified snapshot, never modified
//! <root>/names/<name>                          the digest the name points at
//! <root>/objects/.tmp-*                        staging; swept on open
//! ```
//!
//! Digests are verified exactly once, as a snapshot enters the cache: the copy in the
//! staging directory is hashed, and only then renamed into place. Restoring from the cache
//! therefore never hashes, which keeps the cold start to a `stat` per file and an mmap.

use std::path::{Path, PathBuf};

use crate::build::write_file_atomic;
use crate::digest::sha256_bytes;
use crate::meta::validate_name;
use crate::{verify, SnapshotError, SnapshotMeta, META_FILE};

/// A snapshot cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    root: PathBuf,
}

/// What [`SnapshotCache::insert`] stored.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The snapshot's name.
    pub name: String,
    /// sha256 of its snapshot.json: the cache key.
    pub digest: String,
    /// The directory to restore from.
    pub dir: PathBuf,
    /// The verified metadata.
    pub meta: SnapshotMeta,
}

impl SnapshotCache {
    /// Opens (creating if needed) a cache, and removes staging left by a killed process.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, SnapshotError> {
        let root = root.into();
        for sub in ["objects", "names"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io(&dir, e))?;
        }
        let cache = Self { root };
        cache.sweep_staging();
        Ok(cache)
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn name_file(&self, name: &str) -> PathBuf {
        self.root.join("names").join(name)
    }

    fn sweep_staging(&self) {
        let Ok(entries) = std::fs::read_dir(self.objects()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Copies the snapshot at `src` into the cache, verifying every digest on the copy,
    /// and points its name at it. Idempotent: the same content lands on the same key.
    pub fn insert(&self, src: &Path) -> Result<CacheEntry, SnapshotError> {
        let meta_path = src.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| SnapshotError::io(&meta_path, e))?;
        let meta = SnapshotMeta::parse(&meta_bytes, &meta_path)?;
        validate_name(&meta.name)?;
        let digest = sha256_bytes(&meta_bytes);
        let dir = self.objects().join(&digest);
        if !dir.exists() {
            let staging = tempfile::Builder::new()
                .prefix(".tmp-insert-")
                .tempdir_in(self.objects())
                .map_err(|e| SnapshotError::io(self.objects(), e))?;
            std::fs::write(staging.path().join(META_FILE), &meta_bytes)
                .map_err(|e| SnapshotError::io(staging.path(), e))?;
            for file in &meta.files {
                let from = src.join(&file.path);
                let to = staging.path().join(&file.path);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
                }
                std::fs::copy(&from, &to).map_err(|e| SnapshotError::io(&from, e))?;
            }
            // Verify what will be used, not what was copied from; errors name the source.
            verify(staging.path()).map_err(|e| rename_path(e, staging.path(), src))?;
            return self.install(staging, digest, meta);
        }
        self.install_name(digest, dir, meta)
    }

    /// Renames a verified staging directory to `objects/<digest>` and points the name at
    /// it. Another process may have installed the same content first; that is fine.
    fn install(
        &self,
        staging: tempfile::TempDir,
        digest: String,
        meta: SnapshotMeta,
    ) -> Result<CacheEntry, SnapshotError> {
        let dir = self.objects().join(&digest);
        if !dir.exists() {
            let staged = staging.keep();
            // Snapshots are read by sandboxed instances running as unprivileged users:
            // every file readable, every directory traversable (the content is public
            // model data, and the cache's own directory decides who may write).
            open_to_readers(&staged).map_err(|e| SnapshotError::io(&staged, e))?;
            if let Err(e) = std::fs::rename(&staged, &dir) {
                let _ = std::fs::remove_dir_all(&staged);
                if !dir.exists() {
                    return Err(SnapshotError::io(&dir, e));
                }
            }
        }
        self.install_name(digest, dir, meta)
    }

    fn install_name(
        &self,
        digest: String,
        dir: PathBuf,
        meta: SnapshotMeta,
    ) -> Result<CacheEntry, SnapshotError> {
        write_file_atomic(
            &self.name_file(&meta.name),
            format!("{digest}\n").as_bytes(),
        )?;
        Ok(CacheEntry {
            name: meta.name.clone(),
            digest,
            dir,
            meta,
        })
    }

    /// A fresh staging directory inside the cache (`.tmp-…`, swept if this process dies),
    /// for writing a snapshot in place before [`Self::adopt`].
    pub fn staging(&self, prefix: &str) -> Result<tempfile::TempDir, SnapshotError> {
        tempfile::Builder::new()
            .prefix(&format!(".tmp-{prefix}-"))
            .tempdir_in(self.objects())
            .map_err(|e| SnapshotError::io(self.objects(), e))
    }

    /// Verifies a staged snapshot in place (every size and sha256) and renames it into
    /// the cache under the sha256 of its snapshot.json, then points its name at it.
    /// On any error the staging directory is removed: nothing partial stays behind.
    pub fn adopt(&self, staged: tempfile::TempDir) -> Result<CacheEntry, SnapshotError> {
        let meta_path = staged.path().join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| SnapshotError::io(&meta_path, e))?;
        let meta = SnapshotMeta::parse(&meta_bytes, &meta_path)?;
        validate_name(&meta.name)?;
        verify(staged.path())?;
        let digest = sha256_bytes(&meta_bytes);
        self.install(staged, digest, meta)
    }

    /// The directory of the snapshot a name points at.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, SnapshotError> {
        validate_name(name)?;
        let path = self.name_file(name);
        let digest = match std::fs::read_to_string(&path) {
            Ok(d) => d.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotInCache {
                    name: name.to_owned(),
                    cache: self.root.clone(),
                })
            }
            Err(e) => return Err(SnapshotError::io(&path, e)),
        };
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotError::MalformedJson {
                path,
                reason: "name file does not hold a sha256".into(),
            });
        }
        let dir = self.objects().join(digest);
        if !dir.is_dir() {
            return Err(SnapshotError::MissingFile { path: dir });
        }
        Ok(dir)
    }

    /// Verifies an object directory of this cache in full: its snapshot.json still
    /// hashes to the directory's name (its address), and every file matches the size
    /// and sha256 snapshot.json records. Reads every byte; see [`crate::serving`].
    pub fn verify_object(dir: &Path) -> Result<SnapshotMeta, SnapshotError> {
        let meta_path = dir.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| SnapshotError::io(&meta_path, e))?;
        let address = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let actual = sha256_bytes(&meta_bytes);
        if actual != address {
            return Err(SnapshotError::DigestMismatch {
                path: meta_path,
                expected: address,
                actual,
            });
        }
        verify(dir)
    }

    /// Names currently in the cache, sorted.
    pub fn names(&self) -> Result<Vec<String>, SnapshotError> {
        let dir = self.root.join("names");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| SnapshotError::io(&dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Rewrites a staging path inside an error to the source path the user knows.
fn rename_path(err: SnapshotError, staging: &Path, src: &Path) -> SnapshotError {
    let fix = |p: PathBuf| {
        p.strip_prefix(staging)
            .map(|rel| src.join(rel))
            .unwrap_or(p)
    };
    match err {
        SnapshotError::DigestMismatch {
            path,
            expected,
            actual,
        } => SnapshotError::DigestMismatch {
            path: fix(path),
            expected,
            actual,
        },
        SnapshotError::SizeMismatch {
            path,
            expected,
            actual,
        } => SnapshotError::SizeMismatch {
            path: fix(path),
            expected,
            actual,
        },
        SnapshotError::InvalidSafetensors { path, reason } => SnapshotError::InvalidSafetensors {
            path: fix(path),
            reason,
        },
        SnapshotError::MissingFile { path } => SnapshotError::MissingFile { path: fix(path) },
        other => other,
    }
}

impl SnapshotCache {
    /// Builds a snapshot straight into the cache: staged beside the objects (swept if this
    /// process dies), verified on entry like any other, then the staging is removed.
    pub fn build(
        &self,
        model_dir: &Path,
        opts: &crate::build::BuildOptions,
    ) -> Result<CacheEntry, SnapshotError> {
        let staging = tempfile::Builder::new()
            .prefix(".tmp-build-")
            .tempdir_in(self.objects())
            .map_err(|e| SnapshotError::io(self.objects(), e))?;
        let out = staging.path().join("snapshot");
        crate::build::build(model_dir, &out, opts)?;
        self.insert(&out)
    }
}

/// `chmod -R a+rX` of a staged snapshot: files 0644, directories 0755.
fn open_to_readers(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            open_to_readers(&path)?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}
