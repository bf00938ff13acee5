//! `thaw-fault`: a test-only function that misbehaves on command.
//!
//! Request `{"action": ..}`:
//! - `echo` (default): answers at once.
//! - `sleep` (`ms`), `panic`, `abort`, `exit` (`code`), `hang`, `flood` (`lines` of stderr).
//! - `fail`: a typed InvalidInput error.
//! - `record`: sleep `ms`, then append `key` to the file `FAULT_LOG` (a side channel that
//!   counts completed executions).
//! - `flaky`: fail the first `fail` attempts of `key`, counted in `FAULT_STATE/<key>`, by
//!   `how`: `exit` or `error`.
//!
//! Hostile actions, to prove a sandbox holds; each answers with a `report`:
//! - `alloc`: allocate `mb` MiB (default 512), write every page, and hold it in the
//!   instance until the next `alloc` (`mb: 0` frees it). `{"allocated_mb", "rss_mb"}`.
//! - `read`: try each of `paths`: `{path: {"ok": true, "bytes", "head"} (first 64 bytes)
//!   | {"ok": true, "dir": true, "entries"} | {"ok": false, "error": "<Kind>: <message>"}}`.
//! - `environ`: this process's environment, as a map.
//! - `proc_environ`: `{"self_pid", "visible_pids", "readable": {pid: first 200 bytes of
//!   /proc/PID/environ, NULs as newlines}}`, other pids only.
//! - `write` (`paths[0]`, `mb`): write `mb` MiB to a file, report how much went in.
//! - `connect` (`addr`): open one TCP connection (an outbound-network check).
//! - `probe`: learn ports (environment values, LISTEN sockets in `/proc/net/tcp{,6}`, and,
//!   unless `scan: false`, a connect scan of 127.0.0.1:1024-65535), send every open port
//!   but our own Runtime API a `GET .../invocation/next`, and answer any invocation it
//!   hands over with a forged `FORGED` response. `{"own_api", "learned", "open",
//!   "answers": [{"port", "status", "request_id"}], "stolen": [{"port", "request_id",
//!   "forged_status", ..}], "scan_ms"}`.
//! - `spawn_tree`: start three processes that sleep forever with `marker` in their command
//!   line: a plain child, a child in its own session (setsid), and a daemon orphaned by a
//!   double fork. `{"spawned": 3, "marker", "child_pids"}`.
//! - `forkbomb`: start up to `n` (default 2000) such processes, stopping at the first spawn
//!   error, then kill and reap them. `{"started": n}`, or an Internal error
//!   "process limit reached after N processes: <io error>".
//! - `long_line`: write `mb` MiB (default 300) of `x` to stderr with no newline, in small
//!   writes (the function's own memory stays small). `{"written_mb"}`.
//! - `big_response`: answer with a `report` string of `bytes` bytes.
//! - `stream`: a streamed response, part by part (`parts`, `key`, `fail_after`,
//!   `bytes`: see [`stream`]).
//!
//! Every success answers `{"instance", "pid", "echo"}` (plus `report`, if any) so tests
//! can count instances. `FAULT_INIT=fail` makes init fail with a recognisable message;
//! `FAULT_STARTS` names a file that gets one line per process start; `FAULT_MODE=raw` runs
//! a plain lambda_runtime echo instead; `FAULT_MODE=typed` a plain lambda_runtime function
//! whose request type is `{"n": u32, "error_type"?, "message"?}`: any other event fails in
//! lambda_runtime's own deserializer, and with `error_type` it fails with that Runtime API
//! error type, whatever the string (newlines and quotes included), as a function not
//! written with thaw-fn may.
//!
//! Argv modes, handled before anything else (the processes `spawn_tree` and `forkbomb`
//! start): `--linger MARKER` sleeps forever; `--daemonize MARKER` starts `--linger MARKER`
//! in a new session and exits at once.

mod hostile;
mod probe;
mod stream;

use std::io::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thaw_fn::{Chunks, ErrorType, FnError, Function};

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    ms: Option<u64>,
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    echo: Option<serde_json::Value>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    fail: Option<u32>,
    #[serde(default)]
    how: Option<String>,
    /// `alloc`: MiB to allocate.
    #[serde(default)]
    mb: Option<usize>,
    /// `connect`: `host:port` to open a TCP connection to.
    #[serde(default)]
    addr: Option<String>,
    /// `read`: paths to try.
    #[serde(default)]
    paths: Option<Vec<String>>,
    /// `probe`: whether to connect-scan 127.0.0.1:1024-65535 (default true).
    #[serde(default)]
    scan: Option<bool>,
    /// `spawn_tree`, `forkbomb`: the string the lingering processes carry in argv.
    #[serde(default)]
    marker: Option<String>,
    /// `forkbomb`: how many processes to try.
    #[serde(default)]
    n: Option<usize>,
    /// `big_response`: the report's length; `stream`: bytes to stream.
    #[serde(default)]
    bytes: Option<usize>,
    /// `stream`: the chunks.
    #[serde(default)]
    parts: Option<Vec<String>>,
    /// `stream`: fail after this many parts.
    #[serde(default)]
    fail_after: Option<usize>,
    /// `stream`: exit after this many parts.
    #[serde(default)]
    crash_after: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Response {
    instance: String,
    pid: u32,
    echo: serde_json::Value,
    /// What a hostile action found.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<serde_json::Value>,
}

/// The marker lingering processes carry when the request names none.
const DEFAULT_MARKER: &str = "thaw-fault-linger";

#[derive(Debug)]
struct Fault {
    /// The block `alloc` holds.
    held: Vec<u8>,
    /// `spawn_tree`'s direct children, reaped when they die.
    children: Vec<std::process::Child>,
}

impl Function for Fault {
    type Request = Request;
    type Response = Response;

    fn handle(&mut self, r: Request) -> Result<Response, FnError> {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        let mut report = None;
        match r.action.as_deref().unwrap_or("echo") {
            "echo" => {}
            "sleep" => std::thread::sleep(Duration::from_millis(r.ms.unwrap_or(100))),
            "panic" => panic!("fault: panic on purpose"),
            "abort" => {
                eprintln!("fault: abort on purpose");
                std::process::abort()
            }
            "exit" => {
                eprintln!("fault: exit on purpose");
                std::process::exit(r.code.unwrap_or(3))
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "flood" => {
                let mut err = std::io::stderr().lock();
                for i in 0..r.lines.unwrap_or(100_000) {
                    let _ = writeln!(err, "flood line {i} ................................................................");
                }
            }
            "fail" => return Err(FnError::invalid_input("fault: typed failure on purpose")),
            "record" => {
                std::thread::sleep(Duration::from_millis(r.ms.unwrap_or(0)));
                record(r.key.as_deref().unwrap_or("-"));
            }
            "flaky" => {
                let attempt = count_attempt(r.key.as_deref().unwrap_or("-"));
                if attempt <= r.fail.unwrap_or(0) {
                    let msg = format!("fault: flaky failure on attempt {attempt}");
                    if r.how.as_deref() == Some("error") {
                        return Err(FnError::new(ErrorType::Internal, msg));
                    }
                    eprintln!("{msg}");
                    std::process::exit(3);
                }
            }
            "alloc" => {
                let mb = r.mb.unwrap_or(512);
                self.held = Vec::new(); // free the old block first
                self.held = hostile::alloc(mb)?;
                let rss_mb = hostile::rss_mb();
                report = Some(serde_json::json!({"allocated_mb": mb, "rss_mb": rss_mb}));
            }
            "read" => report = Some(hostile::read(r.paths.as_deref().unwrap_or_default())),
            "environ" => report = Some(hostile::environ()),
            "proc_environ" => report = Some(hostile::proc_environ()),
            "probe" => report = Some(probe::probe(r.scan.unwrap_or(true))),
            "connect" => report = Some(probe::connect(r.addr.as_deref().unwrap_or_default())),
            "write" => {
                let path = r
                    .paths
                    .as_ref()
                    .and_then(|p| p.first())
                    .cloned()
                    .unwrap_or_default();
                report = Some(hostile::write(&path, r.mb.unwrap_or(1)));
            }
            "spawn_tree" => {
                let marker = r.marker.as_deref().unwrap_or(DEFAULT_MARKER);
                let (found, children) = hostile::spawn_tree(marker)?;
                self.children.extend(children);
                report = Some(found);
            }
            "forkbomb" => {
                let marker = r.marker.as_deref().unwrap_or(DEFAULT_MARKER);
                report = Some(hostile::forkbomb(r.n.unwrap_or(2000), marker)?);
            }
            "long_line" => {
                let mb = r.mb.unwrap_or(300);
                hostile::long_line(mb);
                report = Some(serde_json::json!({"written_mb": mb}));
            }
            "big_response" => {
                report = Some(serde_json::Value::String("x".repeat(r.bytes.unwrap_or(0))));
            }
            other => return Err(FnError::invalid_input(format!("unknown action {other:?}"))),
        }
        Ok(Response {
            // Read per call: an instance forked from a warm template was initialised
            // with the template's environment.
            instance: std::env::var("THAW_INSTANCE_ID").unwrap_or_default(),
            pid: std::process::id(),
            echo: r.echo.unwrap_or_default(),
            report,
        })
    }

    const STREAM_CONTENT_TYPE: &'static str = "text/plain; charset=utf-8";

    fn streams(r: &Request) -> bool {
        r.action.as_deref() == Some("stream")
    }

    fn handle_stream(&mut self, r: Request, out: &mut Chunks) -> Result<(), FnError> {
        let plan = stream::Plan {
            parts: r.parts.as_deref().unwrap_or_default(),
            key: r.key.as_deref(),
            fail_after: r.fail_after,
            crash_after: r.crash_after,
            bytes: r.bytes,
        };
        stream::run(&plan, out)
    }
}

/// Appends `key` to `FAULT_LOG` in one write, so concurrent instances never interleave.
fn record(key: &str) {
    if let Some(path) = std::env::var_os("FAULT_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{key}\n").as_bytes());
        }
    }
}

/// Counts an attempt of `key` in `FAULT_STATE/<key>`; returns this attempt's number.
fn count_attempt(key: &str) -> u32 {
    let Some(dir) = std::env::var_os("FAULT_STATE") else {
        return 1;
    };
    let path = std::path::Path::new(&dir).join(key);
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let _ = std::fs::write(&path, n.to_string());
    n
}

/// `FAULT_MODE=raw`: a plain lambda_runtime function (no thaw-fn) that echoes a
/// function URL event's body back byte for byte, base64 flag and all, with what it saw in
/// headers: `x-raw-path`, `x-query` (`queryStringParameters` as JSON) and `x-base64`.
fn raw_echo() -> Result<(), thaw_fn::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            let e = event.payload;
            Ok::<_, thaw_fn::Error>(serde_json::json!({
                "statusCode": 200,
                "headers": {
                    "content-type": "application/octet-stream",
                    "x-raw-path": e["rawPath"],
                    "x-query": e["queryStringParameters"].to_string(),
                    "x-base64": e["isBase64Encoded"].to_string(),
                },
                "body": e["body"],
                "isBase64Encoded": e["isBase64Encoded"],
                "cookies": e["cookies"],
            }))
        },
    )))
}

/// `FAULT_MODE=typed`'s request.
#[derive(Debug, Deserialize)]
struct Typed {
    n: u32,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// `FAULT_MODE=typed`: a plain lambda_runtime function with a typed request.
fn typed() -> Result<(), thaw_fn::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<Typed>| async move {
            let t = event.payload;
            match t.error_type {
                Some(error_type) => Err(lambda_runtime::Diagnostic {
                    error_type,
                    error_message: t.message.unwrap_or_default(),
                }),
                None => Ok(serde_json::json!({"n": t.n})),
            }
        },
    )))
}

fn main() -> Result<(), thaw_fn::Error> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--linger") => hostile::linger(),
        Some("--daemonize") => hostile::daemonize(&args.next().unwrap_or_default()),
        _ => {}
    }
    match std::env::var("FAULT_MODE").as_deref() {
        Ok("raw") => return raw_echo(),
        Ok("typed") => return typed(),
        _ => {}
    }
    thaw_fn::run(|| {
        if let Some(path) = std::env::var_os("FAULT_STARTS") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{}", std::process::id());
            }
        }
        if std::env::var("FAULT_INIT").as_deref() == Ok("fail") {
            return Err(FnError::new(
                ErrorType::InitError,
                "fault: init failed on purpose",
            ));
        }
        Ok(Fault {
            held: Vec::new(),
            children: Vec::new(),
        })
    })
}
