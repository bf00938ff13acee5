//! Every snapshot fault gets its own typed error naming the file, never a panic, and a
//! failed or interrupted build leaves nothing half-written in the cache.

use std::path::{Path, PathBuf};

use thaw_snapshot::build::{build, BuildOptions};
use thaw_snapshot::cache::SnapshotCache;
use thaw_snapshot::{restore, verify, Architecture, SnapshotError, SnapshotMeta, META_FILE};
use thaw_tests::fixture;

/// A fresh snapshot of the tiny cross-encoder fixture (4 MB), built for one test.
fn tiny_snapshot() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("tiny");
    let opts = BuildOptions {
        name: "tiny".into(),
        ..BuildOptions::default()
    };
    let meta = build(&fixture("tiny-cross-encoder"), &out, &opts).expect("build");
    assert_eq!(meta.architecture, Architecture::BertCrossEncoder);
    (tmp, out)
}

fn edit_meta(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(META_FILE);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).expect("ser")).expect("write");
}

fn ends_with(path: &Path, name: &str) -> bool {
    path.file_name().is_some_and(|n| n == name)
}

#[test]
fn a_clean_snapshot_verifies_and_restores() {
    let (_tmp, dir) = tiny_snapshot();
    let meta = verify(&dir).expect("verify");
    assert_eq!(meta.files.len(), 2);
    let restored = restore(&dir).expect("restore");
    assert!(!restored.weights().is_empty());
}

#[test]
fn flipped_byte_is_a_digest_mismatch_naming_the_file_and_both_digests() {
    let (_tmp, dir) = tiny_snapshot();
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).expect("write");
    match verify(&dir) {
        Err(SnapshotError::DigestMismatch {
            path,
            expected,
            actual,
        }) => {
            assert!(ends_with(&path, "model.safetensors"));
            assert_ne!(expected, actual);
            let msg = SnapshotError::DigestMismatch {
                path,
                expected: expected.clone(),
                actual: actual.clone(),
            }
            .to_string();
            assert!(
                msg.contains(&expected)
                    && msg.contains(&actual)
                    && msg.contains("model.safetensors"),
                "{msg}"
            );
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[test]
fn truncated_weights_are_a_size_mismatch_on_restore_and_corrupt_safetensors_when_sizes_agree() {
    let (_tmp, dir) = tiny_snapshot();
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("write");
    match restore(&dir) {
        Err(SnapshotError::SizeMismatch { path, .. }) => {
            assert!(ends_with(&path, "model.safetensors"))
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    // Even if snapshot.json were rewritten to agree, the header check catches the cut.
    edit_meta(&dir, |v| {
        v["files"][0]["bytes"] = serde_json::json!(bytes.len() / 2)
    });
    match restore(&dir) {
        Err(SnapshotError::InvalidSafetensors { path, .. }) => {
            assert!(ends_with(&path, "model.safetensors"))
        }
        other => panic!("expected InvalidSafetensors, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_is_named() {
    let (_tmp, dir) = tiny_snapshot();
    std::fs::remove_file(dir.join("tokenizer.json")).expect("rm");
    for result in [restore(&dir).map(|_| ()), verify(&dir).map(|_| ())] {
        match result {
            Err(SnapshotError::MissingFile { path }) => assert!(ends_with(&path, "tokenizer.json")),
            other => panic!("expected MissingFile, got {other:?}"),
        }
    }
}

#[test]
fn wrong_recorded_digest_is_refused_when_entering_the_cache() {
    let (tmp, dir) = tiny_snapshot();
    edit_meta(&dir, |v| {
        v["files"][1]["sha256"] = serde_json::json!("0".repeat(64))
    });
    let cache = SnapshotCache::open(tmp.path().join("cache")).expect("cache");
    match cache.insert(&dir) {
        Err(SnapshotError::DigestMismatch { path, expected, .. }) => {
            assert!(ends_with(&path, "tokenizer.json"), "{path:?}");
            assert!(
                path.starts_with(&dir),
                "error names the source, not the staging copy: {path:?}"
            );
            assert_eq!(expected, "0".repeat(64));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(
        cache.names().expect("names").is_empty(),
        "a refused snapshot gets no name"
    );
    assert_no_staging(&cache);
}

#[test]
fn unknown_architecture_is_its_own_error() {
    let (_tmp, dir) = tiny_snapshot();
    edit_meta(&dir, |v| {
        v["architecture"] = serde_json::json!("mamba-9000")
    });
    match SnapshotMeta::read(&dir) {
        Err(SnapshotError::UnknownArchitecture {
            path, architecture, ..
        }) => {
            assert!(ends_with(&path, META_FILE));
            assert_eq!(architecture, "mamba-9000");
        }
        other => panic!("expected UnknownArchitecture, got {other:?}"),
    }
}

#[test]
fn bad_json_is_malformed_json_naming_snapshot_json() {
    let (_tmp, dir) = tiny_snapshot();
    std::fs::write(dir.join(META_FILE), b"{\"format_version\": 1, \"name\": ").expect("write");
    match restore(&dir) {
        Err(SnapshotError::MalformedJson { path, .. }) => assert!(ends_with(&path, META_FILE)),
        other => panic!("expected MalformedJson, got {other:?}"),
    }
}

#[test]
fn a_failed_build_leaves_nothing_in_the_cache_and_killed_staging_is_swept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-cross-encoder").join(f), model.join(f)).expect("copy");
    }
    // No tokenizer.json: the build fails half way, after writing the weights.
    let cache = SnapshotCache::open(tmp.path().join("cache")).expect("cache");
    let opts = BuildOptions {
        name: "tiny".into(),
        ..BuildOptions::default()
    };
    match cache.build(&model, &opts) {
        Err(SnapshotError::MissingFile { path }) => assert!(ends_with(&path, "tokenizer.json")),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert_no_staging(&cache);
    assert!(matches!(
        cache.resolve("tiny"),
        Err(SnapshotError::NotInCache { .. })
    ));

    // A process killed mid-build leaves its staging directory; the next open sweeps it.
    let orphan = cache.root().join("objects/.tmp-build-killed");
    std::fs::create_dir_all(orphan.join("snapshot")).expect("mkdir");
    std::fs::write(orphan.join("snapshot/model.safetensors"), b"half").expect("write");
    let cache = SnapshotCache::open(cache.root()).expect("reopen");
    assert_no_staging(&cache);
}

fn assert_no_staging(cache: &SnapshotCache) {
    let leftovers: Vec<_> = std::fs::read_dir(cache.root().join("objects"))
        .expect("objects")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "cache holds leftovers: {leftovers:?}");
}

/// The defect: digests were checked only when a snapshot entered the cache, so a byte
/// flipped afterwards in a cached model.safetensors gave HTTP 200 with wrong embeddings
/// (cosine 0.995). `thaw serve` now verifies each snapshot once before its first
/// instance: every call gets a typed init error naming the file, never an answer.
#[test]
fn serve_refuses_a_cached_snapshot_changed_after_it_was_verified() {
    use thaw_tests::{snapshot_dir, Serve};
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = SnapshotCache::open(tmp.path().join("snapshots")).expect("private cache");
    let entry = cache
        .insert(&snapshot_dir("minilm-l6"))
        .expect("copy minilm-l6");
    let weights = entry.dir.join("model.safetensors");
    {
        use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&weights)
            .expect("open weights");
        // A byte of the last tensor's data: the header still parses, the model loads.
        let at = f.seek(SeekFrom::End(-4096)).expect("seek");
        let mut byte = [0u8];
        f.read_exact(&mut byte).expect("read");
        f.seek(SeekFrom::Start(at)).expect("seek back");
        f.write_all(&[byte[0] ^ 0x10]).expect("flip");
    }
    let s = Serve::start_with_args(
        "[app]\nname = \"t\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n",
        &[
            "--snapshots",
            tmp.path().join("snapshots").to_str().expect("utf-8"),
        ],
    );
    for attempt in 0..2 {
        let r = s.post(
            "/fn/embed/",
            br#"{"texts": ["hello world"]}"#,
            &[("content-type", "application/json")],
        );
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let head = body.chars().take(300).collect::<String>();
        assert_eq!(r.status, 502, "attempt {attempt}, a wrong answer: {head}");
        let err = r.json();
        assert_eq!(err["error"]["type"], "InitError", "{body}");
        let msg = err["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("failed verification"), "{msg}");
        assert!(msg.contains(&weights.display().to_string()), "{msg}");
        assert!(msg.contains("digest mismatch"), "{msg}");
    }
    // The clean shared cache still serves: the verdict belongs to the corrupted copy.
    drop(s);
    let s = Serve::start(
        "[app]\nname = \"t\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n",
    );
    let r = s.post(
        "/fn/embed/",
        br#"{"texts": ["hello world"]}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
