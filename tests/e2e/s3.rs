//! Snapshots over S3 against a real S3 server on loopback (s3s-fs): push, then a cold
//! start from an empty cache through `thaw serve`, and the faults: a corrupted object, a
//! stopped server, and nothing partial left in the cache either way.

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};
use thaw_tests::{binary, cosine, fixture, snapshot_cache, S3Server, Serve};

const BUCKET: &str = "snapshots";

fn thaw(s3: &S3Server, args: &[&str]) -> Output {
    std::process::Command::new(binary("thaw"))
        .args(args)
        .args(["--endpoint-url", &s3.endpoint, "--force-path-style"])
        .envs(s3.env())
        .env("RUST_LOG", "error")
        .output()
        .expect("run thaw")
}

fn push(s3: &S3Server, name: &str) {
    let cache = snapshot_cache();
    let out = thaw(
        s3,
        &[
            "snapshot",
            "push",
            name,
            &format!("s3://{BUCKET}/thaw"),
            "--snapshots",
            cache.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Entries of the cache's objects directory: what a pull left behind.
fn objects(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("objects"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn embed_cold_starts_from_s3_with_an_empty_cache_and_keeps_parity() {
    let s3 = S3Server::start(BUCKET);
    push(&s3, "minilm-l6");
    let empty = tempfile::tempdir().expect("tempdir");
    let cache = empty.path().join("snapshots");
    let store = format!("s3://{BUCKET}/thaw");
    let s = Serve::start_with_env(
        "[app]\nname = \"t\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n",
        &[
            "--snapshots",
            cache.to_str().expect("utf-8"),
            "--snapshot-store",
            &store,
            "--s3-endpoint-url",
            &s3.endpoint,
            "--s3-force-path-style",
        ],
        &s3.env(),
    );
    assert!(objects(&cache).is_empty(), "the cache starts empty");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("minilm-reference.json")).expect("fixture"),
    )
    .expect("json");
    let cases = reference["cases"].as_array().expect("cases");
    let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
    let r = s.post(
        "/fn/embed/",
        json!({"texts": texts}).to_string().as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = r.json();
    let mut worst = 1.0f64;
    for (case, v) in cases
        .iter()
        .zip(got["embeddings"].as_array().expect("embeddings"))
    {
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
            .collect();
        let have: Vec<f32> = v
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
            .collect();
        let c = cosine(&want, &have);
        worst = worst.min(c);
        assert!(c >= 0.9999, "{:?}: cosine {c}", case["text"]);
    }
    eprintln!(
        "cold start from S3: {} golden cases, worst cosine {worst:.6}",
        cases.len()
    );
    // The snapshot is now local: one verified object, no staging.
    let left = objects(&cache);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].starts_with(".tmp"), "{left:?}");
    thaw_snapshot::verify(&cache.join("objects").join(&left[0])).expect("the pulled copy verifies");
}

#[test]
fn a_corrupted_object_and_a_stopped_server_are_refused_and_leave_nothing_behind() {
    let mut s3 = S3Server::start(BUCKET);
    push(&s3, "minilm-l6");
    // Flip one byte of the stored weights, as a bad disk or a bad upload would.
    let weights = walk(&s3.root)
        .into_iter()
        .find(|p| p.ends_with("model.safetensors"))
        .expect("stored weights");
    let mut bytes = std::fs::read(&weights).expect("read object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&weights, bytes).expect("write object");

    let empty = tempfile::tempdir().expect("tempdir");
    let cache = empty.path().join("snapshots");
    let pull = |s3: &S3Server| {
        thaw(
            s3,
            &[
                "snapshot",
                "pull",
                "minilm-l6",
                &format!("s3://{BUCKET}/thaw"),
                "--snapshots",
                cache.to_str().expect("utf-8"),
            ],
        )
    };
    let out = pull(&s3);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("sha256") || err.contains("digest"), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("s3://snapshots/thaw/objects/"),
        "the error names the object: {err}"
    );
    assert!(
        objects(&cache).is_empty(),
        "nothing partial stays: {:?}",
        objects(&cache)
    );
    assert!(!cache.join("names/minilm-l6").exists());

    // A stopped server: a clear error after bounded retries, still nothing left.
    s3.stop();
    let t = std::time::Instant::now();
    let out = pull(&s3);
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("snapshot store s3://snapshots/thaw/names/minilm-l6"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("connect")
            || err.contains("refused")
            || err.contains("dispatch"),
        "{err}"
    );
    assert!(secs < 60.0, "gave up after {secs:.1} s");
    assert!(objects(&cache).is_empty(), "{:?}", objects(&cache));
    eprintln!(
        "stopped store: failed after {secs:.2} s: {}",
        err.lines().last().unwrap_or("")
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
