//! Helpers shared by thaw's end-to-end tests and its bench: where the built binaries and
//! snapshots are, and a harness that runs a real function binary under thaw's real
//! Runtime API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use thaw_protocol::runtime_api::env;
use thaw_runtime::runtime_api::{new_request_id, InstanceApi, Invocation, Lifecycle, Outcome};
use tokio::process::{Child, Command};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A release binary built by `make build` (which `make test` runs first).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let path = dir.join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make build` (make test does) first",
        path.display()
    );
    path
}

/// The snapshot cache `make snapshots` fills.
pub fn snapshot_cache() -> PathBuf {
    std::env::var_os("THAW_SNAPSHOTS")
        .map_or_else(|| repo_root().join(".cache/snapshots"), PathBuf::from)
}

/// The directory of a built snapshot.
pub fn snapshot_dir(name: &str) -> PathBuf {
    let cache =
        thaw_snapshot::cache::SnapshotCache::open(snapshot_cache()).expect("open snapshot cache");
    cache
        .resolve(name)
        .unwrap_or_else(|e| panic!("{e}: run `make snapshots` (make test does) first"))
}

/// A test fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// One function process driven through its own Runtime API listener: what `thaw serve`
/// does per instance, without the scheduler.
#[derive(Debug)]
pub struct Harness {
    /// The instance's Runtime API.
    pub api: InstanceApi,
    /// The function process.
    pub child: Child,
}

impl Harness {
    /// Starts `binary` with the Lambda environment and waits for its first `next`.
    pub async fn start(
        binary: &std::path::Path,
        snapshot: Option<&std::path::Path>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let api = InstanceApi::on_host_loopback()
            .await
            .expect("bind runtime api");
        let addr = api.addr().expect("runtime api address");
        let mut cmd = Command::new(binary);
        cmd.env(env::RUNTIME_API, addr.to_string())
            .env(env::FUNCTION_NAME, "test")
            .env(env::MEMORY_SIZE, "1024")
            .env(env::FUNCTION_VERSION, "$LATEST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = snapshot {
            cmd.env(env::SNAPSHOT_DIR, dir);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn function");
        let mut lifecycle = api.lifecycle();
        tokio::time::timeout(
            Duration::from_secs(60),
            lifecycle.wait_for(|l| *l != Lifecycle::Initialising),
        )
        .await
        .expect("function did not reach its first next within 60 s")
        .expect("runtime api stopped");
        Self { api, child }
    }

    /// Sends one event and waits for its outcome.
    pub async fn invoke(&self, event: &serde_json::Value) -> Outcome {
        self.invoke_bytes(Bytes::from(event.to_string())).await
    }

    /// Sends raw event bytes and waits for the outcome.
    pub async fn invoke_bytes(&self, payload: Bytes) -> Outcome {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let inv = Invocation {
            id: new_request_id(),
            payload,
            timeout: Duration::from_secs(60),
            limit: thaw_runtime::runtime_api::MAX_RESPONSE,
            reply,
            taken: None,
            stream: None,
        };
        self.api.submit(inv).await.expect("instance accepts work");
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .expect("invocation timed out")
            .expect("instance died")
            .expect("the Runtime API refused the answer")
    }
}

/// Parses a successful outcome's payload as JSON, or panics with the error.
pub fn ok_json(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Response(b) => serde_json::from_slice(&b).expect("response is JSON"),
        Outcome::Error(d) => panic!("function error: {d:?}"),
        Outcome::Streamed { .. } => panic!("a call without a sink was streamed to"),
    }
}

/// A JSON array of numbers as f32s, or a panic naming what it is instead.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array of numbers, got {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// Where [`side_dir`] is mounted inside an instance.
pub const SIDE_MOUNT: &str = "/mnt/side";

/// A host directory instances may write through a volume at [`SIDE_MOUNT`]: a tempdir
/// opened to every user, since instances run as an unprivileged uid in their own mount
/// namespace. Tests use it as a side channel (what ran, how often).
pub fn side_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod side dir");
    dir
}

/// The manifest lines that mount `dir` at [`SIDE_MOUNT`] and set `env` (values are paths
/// relative to the mount).
pub fn side_keys(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let vars: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k} = \"{SIDE_MOUNT}/{v}\""))
        .collect();
    format!(
        "volumes = {{ \"{SIDE_MOUNT}\" = {:?} }}\nenv = {{ {} }}\n",
        dir.display().to_string(),
        vars.join(", ")
    )
}

/// A real `thaw serve` process on 127.0.0.1:0 with a manifest of the test's own.
#[derive(Debug)]
pub struct Serve {
    /// The thaw process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where this thaw keeps its call store.
    pub state_dir: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Writes `manifest` and starts `thaw serve` with the built binaries and snapshots,
    /// and a call store of its own.
    pub fn start(manifest: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Self::start_in(dir, manifest, &state, &[], &[])
    }

    /// As [`Serve::start`], with the call store in `state_dir`: a second thaw on the same
    /// directory picks up where a first one stopped.
    pub fn start_with_state(manifest: &str, state_dir: &std::path::Path) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            manifest,
            state_dir,
            &[],
            &[],
        )
    }

    /// As [`Serve::start`], with more `thaw serve` arguments (`--single f`).
    pub fn start_with_args(manifest: &str, args: &[&str]) -> Self {
        Self::start_with_env(manifest, args, &[])
    }

    /// As [`Serve::start_with_state`], with extra environment for thaw.
    pub fn start_with_state_and_env(
        manifest: &str,
        state_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            manifest,
            state_dir,
            &[],
            env,
        )
    }

    /// What thaw has written to stderr so far (it is also passed through to the test's).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// As [`Serve::start_with_args`], with extra environment for thaw.
    pub fn start_with_env(manifest: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Self::start_in(dir, manifest, &state, args, env)
    }

    fn start_in(
        dir: tempfile::TempDir,
        manifest: &str,
        state_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead as _;
        let path = dir.path().join("functions.toml");
        std::fs::write(&path, manifest).expect("write manifest");
        let thaw = binary("thaw");
        let mut child = std::process::Command::new(&thaw)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--grace",
                "5s",
                "--manifest",
            ])
            .arg(&path)
            .args(if args.contains(&"--snapshots") {
                Vec::new()
            } else {
                vec!["--snapshots".into(), snapshot_cache().into_os_string()]
            })
            .args(if args.contains(&"--bin-dir") {
                Vec::new()
            } else {
                vec![
                    "--bin-dir".into(),
                    thaw.parent().expect("bin dir").as_os_str().to_owned(),
                ]
            })
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn thaw serve");
        let stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        if let Some(pipe) = child.stderr.take() {
            let lines = std::sync::Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    if let Ok(mut l) = lines.lock() {
                        if l.len() < 10_000 {
                            l.push(line);
                        }
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read first line");
        // Keep draining, as a terminal would.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "unexpected first line {line:?}"
        );
        Self {
            child,
            base,
            state_dir: state_dir.to_owned(),
            stderr,
            _dir: dir,
        }
    }

    /// `POST path` with a body; returns status, headers we care about, and body.
    pub fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut req = ureq::post(&format!("{}{path}", self.base)).timeout(Duration::from_secs(300));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        Reply::from(req.send_bytes(body))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        Reply::from(
            ureq::get(&format!("{}{path}", self.base))
                .timeout(Duration::from_secs(90))
                .call(),
        )
    }

    /// Long-polls durable call `id` until it is finished (or 60 s pass) and returns its
    /// record; every poll must answer 200.
    pub fn wait_call(&self, id: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/v1/calls/{id}?wait=20"));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            let status = v["status"].as_str().unwrap_or("");
            if matches!(status, "succeeded" | "failed" | "cancelled")
                || std::time::Instant::now() > deadline
            {
                return v;
            }
        }
    }

    /// Any method on `path`, with a body and headers (`Authorization`, say).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = ureq::request(method, &format!("{}{path}", self.base))
            .timeout(Duration::from_secs(120));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        Reply::from(if body.is_empty() {
            req.call()
        } else {
            req.send_bytes(body)
        })
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Reply {
        Reply::from(
            ureq::delete(&format!("{}{path}", self.base))
                .timeout(Duration::from_secs(60))
                .call(),
        )
    }

    /// thaw's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of thaw itself (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// CPU time thaw has used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// `GET /v1/functions` state of one function.
    pub fn state(&self, function: &str) -> serde_json::Value {
        let all = self.get("/v1/functions").json();
        all["functions"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == function))
            .map(|f| f["state"].clone())
            .unwrap_or_default()
    }

    /// Polls until `check` holds or `within` passes; returns whether it held.
    pub fn wait_until(&self, within: Duration, mut check: impl FnMut(&Self) -> bool) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if check(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        check(self)
    }

    /// Sends a signal to thaw itself.
    #[allow(unsafe_code)]
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP reply, whatever its status.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Lower-cased header name -> value, for the headers tests look at.
    pub headers: std::collections::HashMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl From<Result<ureq::Response, ureq::Error>> for Reply {
    fn from(r: Result<ureq::Response, ureq::Error>) -> Self {
        let resp = match r {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| resp.header(&n).map(|v| (n.to_lowercase(), v.to_owned())))
            .collect();
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(&mut resp.into_reader(), &mut body);
        Self {
            status,
            headers,
            body,
        }
    }
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Raises this process's soft open-file limit to its hard limit (tests that hold
/// thousands of sockets); returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we own; raising soft to hard is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
#[allow(unsafe_code)]
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf reads a constant; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// A real S3 server on loopback: s3s-fs 0.14.1, which `make test` installs into
/// `.cache/tools`, serving a fresh directory with SigV4 credentials.
#[derive(Debug)]
pub struct S3Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The directory behind the buckets: `root/<bucket>/<key>` is each object.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The access key the test server accepts.
pub const S3_ACCESS_KEY: &str = "thaw-test-access";
/// The secret key the test server accepts.
pub const S3_SECRET_KEY: &str = "thaw-test-secret";

impl S3Server {
    /// Starts s3s-fs with one bucket, `bucket`, and waits until it accepts connections.
    pub fn start(bucket: &str) -> Self {
        let bin = std::env::var_os("THAW_S3S_FS").map_or_else(
            || repo_root().join(".cache/tools/bin/s3s-fs"),
            PathBuf::from,
        );
        assert!(
            bin.exists(),
            "{} is missing: `make test` installs s3s-fs",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(bucket)).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            _dir: dir,
        }
    }

    /// The credentials, as environment for a `thaw` process.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ]
    }

    /// Stops the server (the store becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
