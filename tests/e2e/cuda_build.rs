//! The CUDA builds `make gpu` makes (one per [`CudaArch`]), run on whatever machine the
//! tests run on.
//!
//! They must start anywhere: the NVIDIA driver and the CUDA libraries are bound at run
//! time, so no CUDA library is in the binaries' dynamic section. On a machine without
//! the driver (CI, and this project's build machine), a GPU function on a CUDA build
//! serves on the CPU with a warning that names what is missing, and with
//! `gpu_required = true` fails init with that reason. On a machine with the driver the
//! same test holds the GPU path instead: both functions serve, with no fallback.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use thaw_manifest::CudaArch;
use thaw_tests::{repo_root, Serve};

const BINARIES: [&str; 4] = ["embed", "rerank", "analyze", "generate"];

/// The release directory of one CUDA build.
fn cuda_dir(arch: CudaArch) -> PathBuf {
    let dir = repo_root().join(arch.release_dir());
    for bin in BINARIES {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `make gpu` (make test does) first",
            dir.join(bin).display()
        );
    }
    dir
}

/// Whether this machine has the NVIDIA kernel driver loaded.
fn driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

fn call(s: &Serve, f: &str, body: Value) -> thaw_tests::Reply {
    s.post(
        &format!("/fn/{f}/"),
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

fn log_lines(s: &Serve, f: &str) -> Vec<String> {
    let logs = s.get(&format!("/v1/functions/{f}/logs?tail=200")).json();
    logs["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["line"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_cuda_builds_link_no_cuda_library() {
    for arch in CudaArch::ALL {
        let dir = cuda_dir(arch);
        for bin in BINARIES {
            let out = Command::new("readelf")
                .args(["--dynamic", "--wide"])
                .arg(dir.join(bin))
                .output()
                .expect("run readelf (binutils)");
            assert!(out.status.success(), "readelf failed on {bin}");
            let text = String::from_utf8_lossy(&out.stdout);
            let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
            assert!(!needed.is_empty(), "{bin}: no dynamic section?\n{text}");
            for lib in ["libcuda", "libcudart", "libcublas", "libcurand", "libnvrtc"] {
                assert!(
                    !needed.iter().any(|l| l.contains(lib)),
                    "{}/{bin} links {lib} at load time: {needed:#?}",
                    dir.display()
                );
            }
        }
    }
}

#[test]
fn a_cuda_build_serves_on_the_cpu_without_a_driver_unless_the_gpu_is_required() {
    let manifest = "[app]\nname = \"cuda\"\n\n\
        [function.soft]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\ngpu = \"T4\"\n\n\
        [function.hard]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\ngpu = \"L4\"\ngpu_required = true\n\n\
        [function.cpu]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n";
    let text = json!({"text": "A man is eating food."});
    // The CPU build's embedding, which the CUDA build's CPU path must reproduce.
    let reference = {
        let s = Serve::start(manifest);
        let r = call(&s, "cpu", text.clone());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["embeddings"][0].clone()
    };
    assert_eq!(reference.as_array().map(Vec::len), Some(384));
    for arch in CudaArch::ALL {
        let dir = cuda_dir(arch);
        let bin_dir = dir.display().to_string();
        // Unsandboxed: on a GPU machine the build finds the CUDA libraries through its
        // RUNPATH in this checkout, which a sandbox does not show it (see README, GPUs).
        let s = Serve::start_with_args(manifest, &["--bin-dir", &bin_dir, "--no-sandbox"]);
        let soft = call(&s, "soft", text.clone());
        assert_eq!(
            soft.status,
            200,
            "{arch:?}: {}",
            String::from_utf8_lossy(&soft.body)
        );
        let hard = call(&s, "hard", text.clone());
        if driver_present() {
            assert_eq!(hard.status, 200, "{}", String::from_utf8_lossy(&hard.body));
            assert!(!log_lines(&s, "soft")
                .iter()
                .any(|l| l.contains("running on the CPU instead")));
            continue;
        }
        // No driver: the CPU, with the same embedding as the CPU build.
        let got = soft.json()["embeddings"][0].clone();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            serde_json::from_value(got).expect("embedding"),
            serde_json::from_value(reference.clone()).expect("reference"),
        );
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "{arch:?}: differs by {max_diff}");
        // The fallback is logged, naming the driver.
        assert!(
            s.wait_until(Duration::from_secs(10), |s| log_lines(s, "soft")
                .iter()
                .any(
                    |l| l.contains("running on the CPU instead") && l.contains("libcuda.so.1")
                )),
            "{arch:?}: no fallback warning in {:#?}",
            log_lines(&s, "soft")
        );
        // Required: init fails, and the message names the missing driver.
        assert_eq!(
            hard.status,
            502,
            "{arch:?}: {}",
            String::from_utf8_lossy(&hard.body)
        );
        let e = hard.json();
        assert_eq!(e["error"]["type"], "InitError");
        let msg = e["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("needs a L4:1 GPU")
                && msg.contains("NVIDIA driver")
                && msg.contains("libcuda.so.1"),
            "{arch:?}: {msg}"
        );
    }
}
