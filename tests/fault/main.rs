//! `thaw-fault`: a test-only function that misbehaves on command.
//!
//! Request `{"action": ..}`: `echo` (default), `sleep` (`ms`), `panic`, `abort`, `exit`
//! (`code`), `hang`, `flood` (`lines` of stderr), `fail` (a typed InvalidInput error),
//! `record` (sleep `ms`, then append `key` to the file `THAW_FAULT_LOG`: a side channel
//! that counts completed executions), and `flaky` (fail the first `fail` attempts of
//! `key`, counted in `THAW_FAULT_STATE/<key>`, by `how`: `exit` or `error`).
//! Every success answers `{"instance", "pid", "echo"}` so tests can count instances.
//! `THAW_FAULT_INIT=fail` makes init fail with a recognisable message; `THAW_FAULT_STARTS`
//! names a file that gets one line per process start.

use std::io::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thaw_fn::{ErrorType, FnError, Function};

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
}

#[derive(Debug, Serialize)]
struct Response {
    instance: String,
    pid: u32,
    echo: serde_json::Value,
}

#[derive(Debug)]
struct Fault {
    instance: String,
}

impl Function for Fault {
    type Request = Request;
    type Response = Response;

    fn handle_batch(&mut self, requests: Vec<Request>) -> Vec<Result<Response, FnError>> {
        requests.into_iter().map(|r| self.handle(r)).collect()
    }
}

impl Fault {
    fn handle(&self, r: Request) -> Result<Response, FnError> {
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
            other => return Err(FnError::invalid_input(format!("unknown action {other:?}"))),
        }
        Ok(Response {
            instance: self.instance.clone(),
            pid: std::process::id(),
            echo: r.echo.unwrap_or_default(),
        })
    }
}

/// Appends `key` to `THAW_FAULT_LOG` in one write, so concurrent instances never interleave.
fn record(key: &str) {
    if let Some(path) = std::env::var_os("THAW_FAULT_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{key}\n").as_bytes());
        }
    }
}

/// Counts an attempt of `key` in `THAW_FAULT_STATE/<key>`; returns this attempt's number.
fn count_attempt(key: &str) -> u32 {
    let Some(dir) = std::env::var_os("THAW_FAULT_STATE") else {
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

/// `THAW_FAULT_MODE=raw`: a plain lambda_runtime function (no thaw-fn) that echoes a
/// function URL event's body back byte for byte, base64 flag and all.
fn raw_echo() -> Result<(), thaw_fn::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            let e = event.payload;
            Ok::<_, thaw_fn::Error>(serde_json::json!({
                "statusCode": 200,
                "headers": {"content-type": "application/octet-stream", "x-raw-path": e["rawPath"]},
                "body": e["body"],
                "isBase64Encoded": e["isBase64Encoded"],
                "cookies": e["cookies"],
            }))
        },
    )))
}

fn main() -> Result<(), thaw_fn::Error> {
    if std::env::var("THAW_FAULT_MODE").as_deref() == Ok("raw") {
        return raw_echo();
    }
    thaw_fn::run(|| {
        if let Some(path) = std::env::var_os("THAW_FAULT_STARTS") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{}", std::process::id());
            }
        }
        if std::env::var("THAW_FAULT_INIT").as_deref() == Ok("fail") {
            return Err(FnError::new(
                ErrorType::InitError,
                "fault: init failed on purpose",
            ));
        }
        let instance = std::env::var("THAW_INSTANCE_ID").unwrap_or_default();
        Ok(Fault { instance })
    })
}
