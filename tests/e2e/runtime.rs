//! `thaw serve` end to end: a real thaw process on port 0, real function processes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::{alive, Serve};

fn fault_fn(name: &str, extra: &str) -> String {
    format!("[function.{name}]\nbinary = \"thaw-fault\"\n{extra}\n")
}

fn manifest(functions: &[String]) -> String {
    format!("[app]\nname = \"test\"\n\n{}", functions.join("\n"))
}

fn call(s: &Serve, f: &str, body: Value) -> thaw_tests::Reply {
    s.post(
        &format!("/fn/{f}/"),
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

fn instances(s: &Serve, f: &str) -> usize {
    s.state(f)["instances"].as_array().map_or(0, Vec::len)
}

#[test]
fn scales_from_zero_and_back_to_zero() {
    let s = Serve::start(&manifest(&[fault_fn("f", "idle_timeout = \"300ms\"")]));
    assert_eq!(instances(&s, "f"), 0, "nothing runs before the first call");
    let r = call(&s, "f", json!({"echo": 1}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The host pid (the function's own is its PID namespace's).
    let pid = s.state("f")["instances"][0]["pid"].as_u64().expect("pid");
    assert!(alive(pid));
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_cold_starts_total{function=\"f\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_cold_start_seconds_count{function=\"f\"} 1"),
        "{metrics}"
    );
    assert!(
        s.wait_until(Duration::from_secs(10), |s| instances(s, "f") == 0),
        "idle instance was not stopped"
    );
    assert!(
        s.wait_until(Duration::from_secs(5), |_| !alive(pid)),
        "process {pid} still alive"
    );
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_billed_instance_seconds_total{function=\"f\"}"),
        "{metrics}"
    );
}

#[test]
fn concurrency_caps_hold_and_a_full_queue_gets_429() {
    let s = Serve::start(&manifest(&[
        fault_fn("capped", "max_containers = 3\nconcurrency = 1"),
        fault_fn(
            "narrow",
            "max_containers = 1\nconcurrency = 1\nmax_queue = 4",
        ),
    ]));
    let peak = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let replies: Vec<thaw_tests::Reply> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak.fetch_max(instances(&s, "capped"), std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let handles: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| call(&s, "capped", json!({"action": "sleep", "ms": 150}))))
            .collect();
        let replies = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        replies
    });
    assert!(replies.iter().all(|r| r.status == 200), "all 16 succeed");
    let ids: HashSet<String> = replies
        .iter()
        .map(|r| r.json()["instance"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(ids.len() <= 3, "{} distinct instances: {ids:?}", ids.len());
    assert!(peak.into_inner() <= 3, "sampled more than 3 instances");

    let replies: Vec<thaw_tests::Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| call(&s, "narrow", json!({"action": "sleep", "ms": 400}))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let throttled: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + throttled.len(),
        20,
        "every request gets an answer: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        (1..=5).contains(&ok),
        "{ok} succeeded; at most 1 running + 4 queued"
    );
    for r in &throttled {
        assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
        assert_eq!(r.json()["error"]["type"], "QueueFull");
    }
}

#[test]
fn min_containers_are_started_at_boot_and_kept() {
    let s = Serve::start(&manifest(&[fault_fn(
        "warm",
        "min_containers = 1\nidle_timeout = \"200ms\"",
    )]));
    assert!(
        s.wait_until(Duration::from_secs(10), |s| s.state("warm")["idle"] == 1),
        "no warm instance at boot"
    );
    let pid = s.state("warm")["instances"][0]["pid"]
        .as_u64()
        .expect("pid");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        s.state("warm")["instances"][0]["pid"].as_u64(),
        Some(pid),
        "kept through idle periods"
    );
    let r = call(&s, "warm", json!({}));
    assert_eq!(r.json()["instance"], s.state("warm")["instances"][0]["id"]);
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_cold_starts_total{function=\"warm\"} 1"),
        "{metrics}"
    );
}

#[test]
fn faults_are_typed_the_instance_is_replaced_and_healthy_calls_are_unaffected() {
    let side = thaw_tests::side_dir();
    let starts_path = side.path().join("starts");
    let s = Serve::start(&manifest(&[
        fault_fn("bad", "max_containers = 2\ntimeout = \"1s\""),
        fault_fn("healthy", "max_containers = 1"),
        fault_fn(
            "broken",
            &format!(
                "volumes = {{ \"{}\" = {:?} }}\n\
                 env = {{ FAULT_INIT = \"fail\", FAULT_STARTS = \"{}/starts\" }}",
                thaw_tests::SIDE_MOUNT,
                side.path().display().to_string(),
                thaw_tests::SIDE_MOUNT
            ),
        ),
    ]));
    std::thread::scope(|scope| {
        let healthy = scope.spawn(|| {
            (0..20)
                .map(|i| {
                    call(
                        &s,
                        "healthy",
                        json!({"action": "sleep", "ms": 20, "echo": i}),
                    )
                    .status
                })
                .collect::<Vec<_>>()
        });
        for (action, status, kind) in [
            ("panic", 502, "FunctionCrashed"),
            ("abort", 502, "FunctionCrashed"),
            ("exit", 502, "FunctionCrashed"),
            ("hang", 504, "Timeout"),
        ] {
            let t = Instant::now();
            let r = call(&s, "bad", json!({"action": action}));
            assert_eq!(
                r.status,
                status,
                "{action}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.json()["error"]["type"], kind, "{action}");
            assert!(
                t.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
                "{action} took {:?}",
                t.elapsed()
            );
            if action == "panic" {
                let msg = r.json()["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                assert!(
                    msg.contains("panic on purpose"),
                    "crash message carries the function's stderr: {msg}"
                );
            }
            // Replaced: the next call succeeds on a fresh instance.
            assert_eq!(call(&s, "bad", json!({})).status, 200, "after {action}");
        }
        let r = call(&s, "broken", json!({}));
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"]["type"], "InitError");
        let msg = r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(msg.contains("init failed on purpose"), "{msg}");
        // A crash loop backs off: 30 calls over ~1.5 s start only a handful of processes.
        for _ in 0..30 {
            assert_eq!(call(&s, "broken", json!({})).status, 502);
            std::thread::sleep(Duration::from_millis(50));
        }
        let healthy = healthy.join().expect("join");
        assert!(
            healthy.iter().all(|&st| st == 200),
            "healthy calls failed: {healthy:?}"
        );
    });
    let starts = std::fs::read_to_string(&starts_path)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        (2..=8).contains(&starts),
        "{starts} init attempts in ~1.5 s: restarts do not back off"
    );
}

#[test]
fn invoke_api_speaks_aws() {
    let s = Serve::start(&manifest(&[fault_fn("f", "")]));
    let path = "/2015-03-31/functions/f/invocations";
    let r = s.post(path, br#"{"echo": "hi"}"#, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["echo"], "hi");
    let r = s.post(path, br#"{"action": "fail"}"#, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("x-amz-function-error").map(String::as_str),
        Some("Unhandled")
    );
    assert_eq!(r.json()["errorType"], "InvalidInput");
    assert!(r.json()["errorMessage"]
        .as_str()
        .unwrap_or("")
        .contains("on purpose"));
    assert_eq!(
        s.post(path, b"{}", &[("x-amz-invocation-type", "Event")])
            .status,
        202
    );
    assert_eq!(
        s.post(path, b"{}", &[("x-amz-invocation-type", "DryRun")])
            .status,
        204
    );
    let r = s.post("/2015-03-31/functions/nope/invocations", b"{}", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.headers.get("x-amzn-errortype").map(String::as_str),
        Some("ResourceNotFoundException")
    );
    assert_eq!(s.post(path, b"{not json", &[]).status, 400);

    // A function that floods its output neither stalls nor grows thaw: the ring keeps the
    // newest lines, and the instance keeps serving.
    assert_eq!(
        s.post(path, br#"{"action": "flood", "lines": 50000}"#, &[])
            .status,
        200
    );
    assert_eq!(s.post(path, b"{}", &[]).status, 200);
    let logs = s.get("/v1/functions/f/logs?tail=5000").json();
    let lines = logs["lines"].as_array().map_or(0, Vec::len);
    assert!((1000..=2000).contains(&lines), "{lines} lines kept");
    assert!(logs["lines"][lines - 1]["instance"]
        .as_str()
        .unwrap_or("")
        .starts_with("f-"));
}

#[test]
fn function_urls_carry_json_binary_and_refuse_oversized_bodies() {
    let s = Serve::start(&manifest(&[
        fault_fn("f", ""),
        fault_fn("raw", "env = { FAULT_MODE = \"raw\" }"),
    ]));
    let r = call(&s, "f", json!({"echo": [1, 2]}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["echo"], json!([1, 2]));
    // And with curl, a client nobody here wrote.
    if let Ok(out) = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"echo": "curl"}"#,
        ])
        .arg(format!("{}/fn/f/", s.base))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(code, "200", "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(body)
                .ok()
                .map(|v| v["echo"].clone()),
            Some(json!("curl"))
        );
    }
    // The function's own 400 for a body that is not JSON.
    let r = s.post(
        "/fn/f/",
        b"this is not json",
        &[("content-type", "text/plain")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "InvalidInput");
    // Binary round trip through base64, with path, query and cookies passed along.
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let r = s.post(
        "/fn/raw/some/path?a=1",
        &binary,
        &[
            ("content-type", "application/octet-stream"),
            ("cookie", "x=1; y=2"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, binary, "binary body did not round-trip");
    assert_eq!(
        r.headers.get("x-raw-path").map(String::as_str),
        Some("/some/path")
    );
    // 7 MiB: 413, typed.
    let big = vec![b'x'; 7 * 1024 * 1024];
    let r = s.post("/fn/f/", &big, &[]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "PayloadTooLarge");
    assert_eq!(s.post("/fn/nope/", b"{}", &[]).status, 404);
}

#[test]
fn sigterm_drains_in_flight_calls_and_leaves_no_child() {
    let mut s = Serve::start(&manifest(&[fault_fn("f", "max_containers = 2")]));
    assert_eq!(call(&s, "f", json!({})).status, 200);
    let warm = s.state("f")["instances"][0]["pid"].as_u64().expect("pid");
    let reply = std::thread::scope(|scope| {
        let slow = scope.spawn(|| call(&s, "f", json!({"action": "sleep", "ms": 1000})));
        assert!(
            s.wait_until(Duration::from_secs(5), |s| s.state("f")["busy"] == 1),
            "call not in flight"
        );
        s.signal(libc::SIGTERM);
        slow.join().expect("join")
    });
    assert_eq!(
        reply.status, 200,
        "in-flight call finished within the grace period"
    );
    let status = s.child.wait().expect("thaw exits");
    assert!(status.success(), "thaw exited with {status}");
    assert!(!alive(warm), "child {warm} survived thaw");
}

#[test]
fn sigkill_of_thaw_leaves_no_child() {
    let s = Serve::start(&manifest(&[fault_fn(
        "f",
        "min_containers = 2\nmax_containers = 2",
    )]));
    assert!(s.wait_until(Duration::from_secs(10), |s| s.state("f")["idle"] == 2));
    let pids: Vec<u64> = s.state("f")["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2);
    s.signal(libc::SIGKILL);
    assert!(
        s.wait_until(Duration::from_secs(5), |_| pids.iter().all(|&p| !alive(p))),
        "children outlived a SIGKILLed thaw"
    );
}

#[test]
fn single_mode_serves_one_function_over_plain_http_with_readiness() {
    let m = "[app]\nname = \"test\"\n\
             [function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n\
             [function.broken]\nbinary = \"thaw-fault\"\nenv = { FAULT_INIT = \"fail\" }\n";
    let s = Serve::start_with_args(m, &["--single", "embed"]);
    // Ready once the instance has loaded its model (min_containers is forced to 1).
    assert!(s.wait_until(Duration::from_secs(30), |s| s.get("/healthz").status == 200));
    let ready = s.get("/healthz").json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["state"]["idle"], 1);
    // Any path is the function's URL: plain JSON in, the function's reply out.
    for path in ["/", "/embed", "/v1/anything"] {
        let r = s.post(
            path,
            br#"{"texts": ["A man is eating food."]}"#,
            &[("content-type", "application/json")],
        );
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["dims"], 384);
        assert_eq!(v["embeddings"][0].as_array().map(Vec::len), Some(384));
    }
    let r = s.post("/", b"{not json", &[("content-type", "application/json")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "InvalidInput");
    // Only this function is served: even /v1/functions reaches embed, which wants texts.
    let r = s.get("/v1/functions");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "InvalidInput");
    drop(s);

    // A function that cannot initialise is never ready, and says why.
    let s = Serve::start_with_args(m, &["--single", "broken"]);
    assert!(s.wait_until(Duration::from_secs(30), |s| {
        s.get("/healthz").json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("init failed on purpose"))
    }));
    assert_eq!(s.get("/healthz").status, 503);
}

#[test]
fn a_gpu_function_falls_back_to_the_cpu_unless_the_gpu_is_required() {
    // This machine has no GPU, and the test binaries are built without `cuda`.
    let s = Serve::start(&manifest(&[
        "[function.soft]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\ngpu = \"L4\"\n".to_owned(),
        "[function.hard]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\ngpu = \"H100\"\ngpu_required = true\n".to_owned(),
    ]));
    let r = call(&s, "soft", json!({"text": "runs on the CPU"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["dims"], 384);
    let r = call(&s, "hard", json!({"text": "refused"}));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error"]["type"], "InitError");
    let msg = e["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("needs a H100:1 GPU") && msg.contains("cuda"),
        "{msg}"
    );
    // The fallback is logged where thaw logs shows it.
    let logs = s.get("/v1/functions/soft/logs?tail=200").json();
    assert!(logs["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["line"]
            .as_str()
            .unwrap_or("")
            .contains("running on the CPU instead")));
}

#[test]
fn each_instance_is_lent_a_gpu_of_its_own_and_gives_it_back() {
    // Two GPUs on paper; the functions only read their environment.
    let fault = |name: &str, extra: &str| {
        format!("[function.{name}]\nbinary = \"thaw-fault\"\ngpu = \"T4\"\n{extra}")
    };
    let s = Serve::start_with_env(
        &manifest(&[
            fault("a", ""),
            fault("b", ""),
            fault("c", ""),
            fault("d", "gpu_required = true\nstartup_timeout = \"1s\"\n"),
        ]),
        &[],
        &[("THAW_GPUS", "4,7")],
    );
    let devices = |f: &str| {
        let r = call(&s, f, json!({"action": "environ"}));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["report"]["CUDA_VISIBLE_DEVICES"].clone()
    };
    assert_eq!(devices("a"), "4");
    assert_eq!(devices("b"), "7");
    // Both lent. A function that requires its GPU waits its startup timeout for one,
    // then fails to start, saying why.
    let r = call(&s, "d", json!({"action": "environ"}));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        msg.contains("no GPU came free within 1s") && msg.contains("all 2"),
        "{msg}"
    );
    // One that does not waits a few seconds, then starts with no GPU visible (the CPU).
    let t = Instant::now();
    assert_eq!(devices("c"), "");
    assert!(t.elapsed() >= Duration::from_secs(5), "{:?}", t.elapsed());
    // a's instance dies; its replacement gets its GPU back, never b's.
    let r = call(&s, "a", json!({"action": "exit"}));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(s.wait_until(Duration::from_secs(10), |s| instances(s, "a") == 0));
    assert_eq!(devices("a"), "4");
    assert_eq!(devices("b"), "7");
}
