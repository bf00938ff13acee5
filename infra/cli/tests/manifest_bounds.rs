//! `thaw serve` refuses a manifest with a number out of bounds before it allocates or
//! starts anything, with a message naming the key and its line.
//!
//! Before the bounds existed, `max_containers = 4294967295` made thaw allocate 24 GB and
//! be OOM-killed, and with `concurrency` huge too the durable executor panicked.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `thaw serve` on `manifest` (its function's binary exists) and returns its exit
/// status and stderr; a thaw still running after 30 s is killed and fails the test.
fn serve(manifest: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("bin")).expect("bin dir");
    std::fs::write(dir.path().join("bin/worker"), b"").expect("stand-in binary");
    let path = dir.path().join("functions.toml");
    std::fs::write(&path, manifest).expect("write manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .arg("serve")
        .arg("--manifest")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--no-sandbox"])
        .arg("--snapshots")
        .arg(dir.path().join("snapshots"))
        .arg("--bin-dir")
        .arg(dir.path().join("bin"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn thaw serve");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read as _;
                let _ = pipe.read_to_string(&mut stderr);
            }
            return (status, stderr);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("thaw serve accepted the manifest and kept running:\n{manifest}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_out_of_range_numbers_naming_key_and_line() {
    let cases = [
        (
            "max_containers = 4294967295",
            "max_containers = 4294967295 is over the maximum of 1024 (line 6)",
        ),
        (
            "concurrency = 4294967295\nmax_containers = 4294967295",
            "max_containers = 4294967295 is over the maximum of 1024 (line 7)",
        ),
        (
            "concurrency = 100000",
            "concurrency = 100000 is over the maximum of 1024 (line 6)",
        ),
        (
            "timeout = \"1000years\"",
            "timeout = \"1000years\" is over the maximum of \"15m\" (line 6)",
        ),
        (
            "memory = \"1MiB\"",
            "memory = \"1MiB\" is under the minimum of \"16MiB\" (line 6)",
        ),
    ];
    for (line, expected) in cases {
        let manifest =
            format!("[app]\nname = \"x\"\n\n[function.w]\nbinary = \"worker\"\n{line}\n");
        let (status, stderr) = serve(&manifest);
        assert!(!status.success(), "{line:?}: thaw serve exited 0");
        assert!(
            stderr.contains(&format!("function \"w\": {expected}")),
            "{line:?}: stderr does not name the key and line:\n{stderr}"
        );
    }
}
