//! Snapshots as a serving process uses them: found in the cache (or pulled from a
//! store), and verified **once per process**, before the first instance maps them.
//!
//! The cache verifies every digest when a snapshot enters it, and a cold start only
//! checks sizes and maps the weights: hashing ~90 MB on every cold start would cost
//! ~0.3 s each time. But a cache lives on disk for months, and a file can change after it
//! was verified (a flipped bit, a stray editor, a half-restored backup). The model then
//! still loads and still answers, wrongly: one flipped byte in MiniLM's weights gave
//! embeddings at cosine 0.995 to the right ones, with HTTP 200. So [`Snapshots::ready`]
//! hashes each snapshot the first time this process asks for it, and remembers the
//! verdict, good or bad, for the life of the process: the cost is paid once per process
//! and snapshot, never per cold start, and a corrupt snapshot is refused with the file
//! named ([`SnapshotError::FailedVerification`]) instead of served.
//!
//! Verdicts are kept per object directory (`objects/<sha256>`), which never changes
//! content legitimately: a rebuilt snapshot has a new digest, a new directory and a
//! fresh verdict. Hashing runs on tokio's blocking pool, never on the executor, and
//! callers asking for the same snapshot at once wait for one hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::cache::SnapshotCache;
use crate::s3::{PullOptions, S3Store};
use crate::SnapshotError;

/// A verdict on one object directory: `Ok`, or why it must not be served.
type Verdict = Result<(), Arc<SnapshotError>>;

/// The snapshots of one serving process: its cache, an optional store to pull missing
/// snapshots from, and the verdicts reached so far.
#[derive(Debug)]
pub struct Snapshots {
    cache: SnapshotCache,
    store: Option<S3Store>,
    verdicts: Mutex<HashMap<PathBuf, Arc<OnceCell<Verdict>>>>,
}

impl Snapshots {
    /// Snapshots from `cache`, pulling those it lacks from `store` if there is one.
    pub fn new(cache: SnapshotCache, store: Option<S3Store>) -> Self {
        Self {
            cache,
            store,
            verdicts: Mutex::default(),
        }
    }

    /// The directory of snapshot `name`, safe to serve: in the cache (pulled first if it
    /// is missing and a store is configured), and every file matching its recorded size
    /// and sha256, checked the first time this process asks.
    pub async fn ready(&self, name: &str) -> Result<PathBuf, SnapshotError> {
        let dir = match (self.cache.resolve(name), &self.store) {
            (Ok(dir), _) => dir,
            (Err(_), Some(store)) => {
                store
                    .pull(name, &self.cache, PullOptions::default())
                    .await?
                    .0
                    .dir
            }
            (Err(e), None) => return Err(e),
        };
        // A pull that finds the object already in the cache keeps the existing copy
        // unhashed, so pulled snapshots are verified here too.
        self.verify_once(&dir)
            .await
            .map(|()| dir.clone())
            .map_err(|source| SnapshotError::FailedVerification {
                name: name.to_owned(),
                dir,
                source,
            })
    }

    /// The verdict on `dir`, reached once per process.
    async fn verify_once(&self, dir: &Path) -> Verdict {
        let cell = {
            let mut verdicts = self
                .verdicts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(verdicts.entry(dir.to_owned()).or_default())
        };
        cell.get_or_init(|| {
            let dir = dir.to_owned();
            async move {
                let started = std::time::Instant::now();
                let checked = dir.clone();
                let verdict = tokio::task::spawn_blocking(move || SnapshotCache::verify_object(&checked))
                    .await
                    .map_err(|e| Arc::new(SnapshotError::InvalidBuild(format!("verification task failed: {e}"))))?
                    .map(drop)
                    .map_err(Arc::new);
                let verify_ms = started.elapsed().as_millis() as u64;
                match &verdict {
                    Ok(()) => tracing::info!(dir = %dir.display(), verify_ms, "snapshot verified"),
                    Err(e) => tracing::error!(dir = %dir.display(), verify_ms, error = %e, "snapshot failed verification"),
                }
                verdict
            }
        })
        .await
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::Snapshots;
    use crate::cache::SnapshotCache;
    use crate::{FileEntry, SnapshotError, META_FILE};

    /// A cache holding snapshot `name` with one data file, and that file's path.
    fn cache_with(root: &Path, name: &str) -> (SnapshotCache, PathBuf) {
        let src = root.join("src");
        std::fs::create_dir_all(&src).expect("src");
        let data = b"weights that must not change".to_vec();
        std::fs::write(src.join("words.tsv"), &data).expect("data");
        let meta = serde_json::json!({
            "format_version": crate::meta::FORMAT_VERSION,
            "name": name,
            "architecture": "word-frequencies",
            "dtype": "f32",
            "model_config": {},
            "max_seq_length": 1,
            "source": {"package": "p", "version": "1", "sha256": "00"},
            "files": [FileEntry {
                path: "words.tsv".into(),
                bytes: data.len() as u64,
                sha256: crate::digest::sha256_bytes(&data),
            }],
        });
        std::fs::write(
            src.join(META_FILE),
            serde_json::to_vec(&meta).expect("json"),
        )
        .expect("meta");
        let cache = SnapshotCache::open(root.join("cache")).expect("cache");
        let entry = cache.insert(&src).expect("insert");
        (cache, entry.dir.join("words.tsv"))
    }

    /// Flips one bit of a file the cache already verified.
    fn flip(path: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mut bytes = std::fs::read(path).expect("read");
        bytes[3] ^= 0x01;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(path, bytes).expect("write");
    }

    #[tokio::test]
    async fn a_clean_snapshot_is_ready() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cache, file) = cache_with(tmp.path(), "w");
        let snapshots = Snapshots::new(cache, None);
        let dir = snapshots.ready("w").await.expect("ready");
        assert_eq!(Some(dir.as_path()), file.parent());
    }

    /// The defect: a byte changed after the cache verified it was served as is.
    #[tokio::test]
    async fn a_byte_changed_in_the_cache_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cache, file) = cache_with(tmp.path(), "w");
        flip(&file);
        let snapshots = Snapshots::new(cache, None);
        match snapshots.ready("w").await {
            Err(e @ SnapshotError::FailedVerification { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&file.display().to_string()), "{msg}");
                assert!(msg.contains("digest mismatch"), "{msg}");
                let SnapshotError::FailedVerification { source, .. } = e else {
                    unreachable!()
                };
                assert!(
                    matches!(&*source, SnapshotError::DigestMismatch { path, .. } if *path == file)
                );
            }
            other => panic!("expected FailedVerification, got {other:?}"),
        }
    }

    /// The verdict is reached once: a file changed after it (good or bad) is not hashed
    /// again by this process.
    #[tokio::test]
    async fn the_verdict_is_kept_for_the_process() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cache, file) = cache_with(tmp.path(), "w");
        let snapshots = Snapshots::new(cache.clone(), None);
        snapshots.ready("w").await.expect("ready");
        flip(&file);
        snapshots
            .ready("w")
            .await
            .expect("still ready: verified once per process");
        // A new process (a new Snapshots) checks again.
        assert!(Snapshots::new(cache, None).ready("w").await.is_err());
    }

    /// The object directory is named by snapshot.json's digest; an edited snapshot.json
    /// (say, with digests rewritten to match a changed file) no longer matches it.
    #[tokio::test]
    async fn an_edited_snapshot_json_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cache, file) = cache_with(tmp.path(), "w");
        let meta = file.with_file_name(META_FILE);
        let mut text = std::fs::read_to_string(&meta).expect("read");
        text.push(' ');
        std::fs::write(&meta, text).expect("write");
        match Snapshots::new(cache, None).ready("w").await {
            Err(SnapshotError::FailedVerification { source, .. }) => {
                assert!(
                    matches!(&*source, SnapshotError::DigestMismatch { path, .. } if *path == meta),
                    "{source}"
                );
            }
            other => panic!("expected FailedVerification, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_snapshot_without_a_store_is_not_in_cache() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cache, _) = cache_with(tmp.path(), "w");
        let r = Snapshots::new(cache, None).ready("other").await;
        assert!(matches!(r, Err(SnapshotError::NotInCache { .. })), "{r:?}");
    }
}
