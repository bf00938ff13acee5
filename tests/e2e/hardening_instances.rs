//! Hostile functions against a real `thaw serve` (issue 11, the instance side): replies
//! at and past the Runtime API's 6 MiB limit, input the function's runtime cannot read,
//! an endless output line, and error types built to break `/metrics`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::Serve;

fn manifest(functions: &str) -> String {
    format!("[app]\nname = \"hardening\"\n\n{functions}")
}

fn fault(name: &str, extra: &str) -> String {
    format!("[function.{name}]\nbinary = \"thaw-fault\"\n{extra}\n")
}

/// A thaw-fault function in `FAULT_MODE=typed`: a plain lambda_runtime function whose
/// request is `{"n": u32, "error_type"?, "message"?}`.
fn typed(name: &str, extra: &str) -> String {
    fault(
        name,
        &format!("env = {{ FAULT_MODE = \"typed\" }}\n{extra}"),
    )
}

fn call(s: &Serve, f: &str, body: &Value) -> thaw_tests::Reply {
    s.post(
        &format!("/fn/{f}/"),
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

/// The AWS Invoke API, synchronous: the payload reaches the function as is.
fn invoke(s: &Serve, f: &str, body: &Value) -> thaw_tests::Reply {
    s.post(
        &format!("/2015-03-31/functions/{f}/invocations"),
        body.to_string().as_bytes(),
        &[],
    )
}

/// `n` concurrent 300 ms calls to `f`, their replies in order.
fn sleep_calls(s: &Serve, f: &str, n: usize) -> Vec<thaw_tests::Reply> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| call(s, f, &json!({"action": "sleep", "ms": 300}))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    })
}

fn text(r: &thaw_tests::Reply) -> String {
    String::from_utf8_lossy(&r.body[..r.body.len().min(2000)]).into_owned()
}

#[test]
fn replies_up_to_6_mib_pass_and_larger_ones_fail_at_once_leaving_the_instance_usable() {
    let s = Serve::start(&manifest(&format!(
        "{}{}",
        fault("one", "max_containers = 1\ntimeout = \"60s\""),
        fault(
            "two",
            "max_containers = 1\nconcurrency = 2\ntimeout = \"60s\"\nmemory = \"1GiB\""
        ),
    )));
    for f in ["one", "two"] {
        let first = call(&s, f, &json!({}));
        assert_eq!(first.status, 200, "{}", text(&first));
        let instance = first.json()["instance"].clone();

        // 5 MiB: over axum's default 2 MiB body limit, under AWS's 6 MiB.
        let r = call(&s, f, &json!({"action": "big_response", "bytes": 5 << 20}));
        assert_eq!(r.status, 200, "{f}: {}", text(&r));
        assert_eq!(
            r.json()["report"].as_str().map(str::len),
            Some(5 << 20),
            "{f}"
        );

        // 7 MiB: refused, typed, long before the call's 60 s timeout.
        let t = Instant::now();
        let r = call(&s, f, &json!({"action": "big_response", "bytes": 7 << 20}));
        let took = t.elapsed();
        assert_eq!(r.status, 502, "{f}: {}", text(&r));
        assert_eq!(r.json()["error"]["type"], "ResponseTooLarge", "{f}");
        assert!(
            took < Duration::from_secs(30),
            "{f}: the refusal waited {took:?}, as if for the timeout"
        );

        // The instance was answered 413 on a connection it can keep using: the same
        // instance serves on, with every one of its runtime's workers still polling.
        let replies = sleep_calls(&s, f, 2);
        for r in &replies {
            assert_eq!(r.status, 200, "{f}: {}", text(r));
            assert_eq!(r.json()["instance"], instance, "{f}: replaced, not reused");
        }
    }

    // 40 MiB: past what thaw drains (6 + 24 MiB), so the connection is dropped and the
    // runtime worker on it may die; the instance is replaced and every call is served.
    let r = call(
        &s,
        "two",
        &json!({"action": "big_response", "bytes": 40 << 20}),
    );
    assert_eq!(r.status, 502, "{}", text(&r));
    assert_eq!(r.json()["error"]["type"], "ResponseTooLarge");
    let replies = sleep_calls(&s, "two", 4);
    for r in &replies {
        assert_eq!(r.status, 200, "after a dropped post: {}", text(r));
    }
}

#[test]
fn input_the_runtime_cannot_deserialize_is_invalid_input_and_never_retried() {
    let s = Serve::start(&manifest(&typed(
        "t",
        "retries = 3\nretry_backoff = \"20ms\"",
    )));
    let ok = invoke(&s, "t", &json!({"n": 7}));
    assert_eq!(ok.status, 200, "{}", text(&ok));
    assert_eq!(ok.json()["n"], 7);

    // Synchronous: the typed error, not lambda_runtime's Rust type name.
    let r = invoke(&s, "t", &json!({"n": "seven"}));
    assert_eq!(r.json()["errorType"], "InvalidInput", "{}", text(&r));

    // Durable: one attempt, failed with InvalidInput; retrying cannot help.
    let r = s.post(
        "/v1/functions/t/spawn",
        json!({"n": "seven"}).to_string().as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 202, "{}", text(&r));
    let id = r.json()["call_id"].as_str().expect("call_id").to_owned();
    let v = s.wait_call(&id);
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["type"], "InvalidInput", "{v}");
    assert_eq!(v["attempts"], 1, "retried: {v}");
}

#[test]
fn a_300_mib_output_line_leaves_thaw_small_and_the_function_answering() {
    let s = Serve::start(&manifest(&fault(
        "f",
        "max_containers = 1\ntimeout = \"120s\"",
    )));
    let r = call(&s, "f", &json!({}));
    assert_eq!(r.status, 200, "{}", text(&r));
    let before = s.peak_rss_kib();
    let r = call(&s, "f", &json!({"action": "long_line", "mb": 300}));
    assert_eq!(r.status, 200, "{}", text(&r));
    let after = call(&s, "f", &json!({"echo": "still here"}));
    assert_eq!(after.status, 200, "{}", text(&after));
    assert_eq!(after.json()["echo"], "still here");
    let peak = s.peak_rss_kib();
    eprintln!("thaw VmHWM: {before} KiB before the 300 MiB line, {peak} KiB after");
    assert!(peak > 0, "cannot read thaw's VmHWM");
    assert!(
        peak < 200 * 1024,
        "thaw's peak RSS reached {} MiB reading one long line",
        peak / 1024
    );
    // The line reached the logs, cut, with the marker.
    let logs = s.get("/v1/functions/f/logs?tail=50").json();
    let cut = logs["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["line"].as_str())
        .find(|l| l.starts_with("xxxx"))
        .unwrap_or_default()
        .to_owned();
    assert!(cut.len() <= 8 * 1024, "a kept line of {} bytes", cut.len());
    assert!(
        cut.ends_with("…[line cut: the rest was dropped]"),
        "{}",
        &cut[cut.len().saturating_sub(80)..]
    );
}

/// Runs `promtool check metrics` on `body`; a missing promtool fails the test.
fn promtool_check(body: &[u8]) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is missing ({e}): `make test` installs it (`make metrics-tools`, \
             Debian's prometheus package)"
        ),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn metrics_pass_promtool_and_hostile_error_types_make_a_bounded_set_of_series() {
    let s = Serve::start(&manifest(&format!(
        "{}{}",
        typed("t", "max_containers = 2\nconcurrency = 4"),
        fault("f", ""),
    )));
    // Error types that forge lines, break quoting, or are simply many.
    let hostile = [
        "x\"} 1\nthaw_forged_total{function=\"t\"} 999\n#",
        "quote\"and\\backslash",
        "new\nline",
        "InvalidInput",
        "ModelError",
    ];
    for t in hostile {
        let r = invoke(&s, "t", &json!({"n": 1, "error_type": t, "message": "m"}));
        assert_eq!(r.status, 200, "{}", text(&r));
        assert!(
            r.headers.contains_key("x-amz-function-error"),
            "{}",
            text(&r)
        );
    }
    std::thread::scope(|scope| {
        for w in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..1250 {
                    let r = invoke(
                        s,
                        "t",
                        &json!({"n": 1, "error_type": format!("Distinct{w}x{i}")}),
                    );
                    assert_eq!(r.status, 200, "{}", text(&r));
                }
            });
        }
    });
    let r = call(&s, "f", &json!({"action": "exit"}));
    assert_eq!(r.status, 502, "{}", text(&r));

    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    let content_type = m.headers.get("content-type").cloned().unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = String::from_utf8_lossy(&m.body).into_owned();
    assert!(
        !body.contains("thaw_forged_total"),
        "a forged series:\n{body}"
    );
    let errors: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("thaw_errors_total{"))
        .collect();
    assert!(
        errors.len() <= 14,
        "{} error series for 5,005 error types:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let count = |function: &str, kind: &str| -> f64 {
        errors
            .iter()
            .find(|l| {
                l.contains(&format!("function=\"{function}\""))
                    && l.contains(&format!("error_type=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("t", "Other"), 5003.0, "{}", errors.join("\n"));
    assert_eq!(count("t", "InvalidInput"), 1.0, "{}", errors.join("\n"));
    assert_eq!(count("t", "ModelError"), 1.0, "{}", errors.join("\n"));
    assert_eq!(count("f", "FunctionCrashed"), 1.0, "{}", errors.join("\n"));

    let (ok, said) = promtool_check(&m.body);
    assert!(ok, "promtool check metrics failed:\n{said}\n---\n{body}");
}

#[test]
fn synchronous_calls_whose_client_went_away_never_run() {
    let dir = thaw_tests::side_dir();
    let keys = thaw_tests::side_keys(dir.path(), &[("FAULT_LOG", "ran.log")]);
    let s = Serve::start(&manifest(&fault(
        "f",
        &format!("max_containers = 1\nconcurrency = 1\n{keys}"),
    )));
    let url = format!("{}/fn/f/", s.base);
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| {
            call(
                &s,
                "f",
                &json!({"action": "record", "key": "busy", "ms": 1500}),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        // Ten clients queue behind it and give up after 200 ms.
        let gone: Vec<_> = (0..10)
            .map(|i| {
                let url = url.clone();
                scope.spawn(move || {
                    let body = json!({"action": "record", "key": format!("gone{i}")});
                    ureq::post(&url)
                        .timeout(Duration::from_millis(200))
                        .send_string(&body.to_string())
                        .is_err()
                })
            })
            .collect();
        for g in gone {
            assert!(
                g.join().expect("join"),
                "a client that gave up got an answer"
            );
        }
        assert_eq!(busy.join().expect("join").status, 200);
    });
    let after = call(&s, "f", &json!({"action": "record", "key": "after"}));
    assert_eq!(after.status, 200, "{}", text(&after));
    let ran = std::fs::read_to_string(dir.path().join("ran.log")).unwrap_or_default();
    let ran: Vec<&str> = ran.lines().collect();
    assert_eq!(ran, ["busy", "after"], "calls whose client went away ran");
}
