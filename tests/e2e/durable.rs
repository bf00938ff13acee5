//! Durable calls end to end: spawn and long-poll, idempotency across a kill -9, maps,
//! retries, cancel and expiry, against a real `thaw serve` and the thaw-fault function.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::{binary, Serve};

fn manifest(functions: &str) -> String {
    format!("[app]\nname = \"durable\"\n\n{functions}")
}

fn spawn(s: &Serve, function: &str, input: &Value, key: Option<&str>) -> String {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    let r = s.post(
        &format!("/v1/functions/{function}/spawn"),
        input.to_string().as_bytes(),
        &headers,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["call_id"].as_str().expect("call_id").to_owned()
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn kill_9_mid_batch_loses_nothing_and_idempotency_keys_survive_the_restart() {
    const N: usize = 1000;
    let dir = thaw_tests::side_dir();
    let state = dir.path().join("state");
    let log = dir.path().join("executions.log");
    let m = manifest(&format!(
        "[function.rec]\nbinary = \"thaw-fault\"\nmax_containers = 2\nconcurrency = 4\n{}",
        thaw_tests::side_keys(dir.path(), &[("FAULT_LOG", "executions.log")])
    ));
    let input = |i: usize| json!({"action": "record", "key": format!("k{i}"), "ms": 3});

    let s = Serve::start_with_state(&m, &state);
    let acked: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let base = s.base.clone();
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || {
                for i in (t..N).step_by(4) {
                    let r = ureq::post(&format!("{base}/v1/functions/rec/spawn"))
                        .set("idempotency-key", &format!("k{i}"))
                        .timeout(Duration::from_secs(10))
                        .send_string(&input(i).to_string());
                    // Once thaw is killed, the rest are never acknowledged.
                    let Ok(r) = r else { return };
                    let v: Value = r.into_json().expect("json");
                    let id = v["call_id"].as_str().expect("call_id").to_owned();
                    acked.lock().expect("lock").insert(i, id);
                }
            })
        })
        .collect();
    // Kill thaw once a couple of hundred calls have run to completion.
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(&log).len() < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    s.signal(libc::SIGKILL);
    let completed_at_kill = log_lines(&log).len();
    for t in submitters {
        t.join().expect("submitter");
    }
    let acked = acked.lock().expect("lock").clone();
    drop(s);
    eprintln!(
        "kill -9 after {completed_at_kill} completions and {} acknowledged spawns",
        acked.len()
    );
    assert!(
        completed_at_kill < N,
        "the kill came after every call had finished"
    );

    // Restart on the same state and submit every key again.
    let s = Serve::start_with_state(&m, &state);
    let mut ids: HashMap<usize, String> = HashMap::new();
    for i in 0..N {
        let id = spawn(&s, "rec", &input(i), Some(&format!("k{i}")));
        if let Some(original) = acked.get(&i) {
            assert_eq!(
                &id, original,
                "key k{i} got a new call id after the restart"
            );
        }
        ids.insert(i, id);
    }
    let distinct: HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), N, "every key has its own call");

    // Every call reaches a terminal state, and succeeds.
    let mut attempts: HashMap<usize, i64> = HashMap::new();
    for (i, id) in &ids {
        let v = s.wait_call(id);
        assert_eq!(v["status"], "succeeded", "k{i}: {v}");
        attempts.insert(*i, v["attempts"].as_i64().unwrap_or(0));
    }
    // The side channel: each key completed at least once, and more than once only if
    // the kill interrupted it (at-least-once), never because of the resubmission.
    let mut completions: HashMap<String, i64> = HashMap::new();
    for k in log_lines(&log) {
        *completions.entry(k).or_default() += 1;
    }
    let mut rerun = 0;
    for i in 0..N {
        let n = completions.get(&format!("k{i}")).copied().unwrap_or(0);
        assert!(n >= 1, "k{i} never ran to completion");
        assert!(
            n <= attempts[&i],
            "k{i} completed {n} times in {} attempts",
            attempts[&i]
        );
        if n > 1 {
            rerun += 1;
        }
    }
    let requeued = attempts.values().filter(|&&a| a > 1).count();
    eprintln!("0 lost, 0 stuck; {requeued} calls requeued by recovery, {rerun} of them had completed before the kill was recorded");
}

#[test]
fn a_map_of_ten_thousand_streams_in_order_and_a_hundred_thousand_costs_no_more_memory() {
    let s = Serve::start(&manifest(
        "[function.echo]\nbinary = \"thaw-fault\"\nmax_containers = 2\nconcurrency = 8\n",
    ));
    let bad = [17usize, 5000, 9999];
    let mut body = String::new();
    for i in 0..10_000usize {
        let line = match i {
            17 => "{\"echo\": not json".to_owned(),
            5000 => json!({"action": "fail"}).to_string(),
            9999 => json!({"action": 42}).to_string(),
            _ => json!({"echo": i}).to_string(),
        };
        body.push_str(&line);
        body.push('\n');
    }
    let t = Instant::now();
    let r = s.post("/v1/functions/echo/map", body.as_bytes(), &[]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 10_000);
    let mut errors = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "results stream in input order");
        if line.get("error").is_some() {
            errors.push(i);
            assert!(line["error"]["type"].is_string(), "{line}");
        } else {
            assert_eq!(line["ok"]["echo"], i, "{line}");
        }
    }
    assert_eq!(errors, bad);
    let rss_10k = s.peak_rss_kib();
    eprintln!(
        "map 10,000: {secs:.2} s, {:.0} items/s; thaw peak RSS {rss_10k} KiB",
        10_000.0 / secs
    );

    // The same thaw, a map ten times larger: its peak memory must not grow with it.
    let mut big = String::with_capacity(100_000 * 14);
    for i in 0..100_000usize {
        big.push_str(&format!("{{\"echo\":{i}}}\n"));
    }
    let t = Instant::now();
    let r = s.post("/v1/functions/echo/map", big.as_bytes(), &[]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 200);
    let mut n = 0usize;
    for l in r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(l).expect("NDJSON line");
        assert_eq!(v["index"], n);
        assert!(v.get("ok").is_some(), "{v}");
        n += 1;
    }
    assert_eq!(n, 100_000);
    let rss_100k = s.peak_rss_kib();
    eprintln!(
        "map 100,000: {secs:.2} s, {:.0} items/s; thaw peak RSS {rss_100k} KiB (+{} KiB)",
        100_000.0 / secs,
        rss_100k.saturating_sub(rss_10k)
    );
    assert!(
        rss_100k <= rss_10k + 8 * 1024,
        "peak RSS grew from {rss_10k} KiB to {rss_100k} KiB"
    );
}

#[test]
fn maps_take_json_arrays_completion_order_spawn_map_paging_and_the_cli() {
    // thaw-fn runs one input at a time per instance: three instances run three at once.
    let s = Serve::start(&manifest(
        "[function.echo]\nbinary = \"thaw-fault\"\nmax_containers = 3\n",
    ));
    // A JSON array; completion order puts the slow item last.
    let r = s.post(
        "/v1/functions/echo/map?order=completion",
        br#"[{"action":"sleep","ms":300,"echo":"slow"}, {"echo":1}, {"echo":2}]"#,
        &[],
    );
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["index"], 0, "{lines:?}");
    // An array that cannot be split ends with an error line after the items before it.
    let r = s.post("/v1/functions/echo/map", br#"[{"echo":1}, {"echo":2"#, &[]);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let last: Value = serde_json::from_str(text.lines().last().expect("lines")).expect("json");
    assert_eq!(last["error"]["type"], "InvalidInput", "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    // Unknown function.
    assert_eq!(s.post("/v1/functions/nope/map", b"[]", &[]).status, 404);

    // spawn_map: committed, then paged with long-polls.
    let mut input = String::new();
    for i in 0..50 {
        if i == 7 {
            input.push_str("{oops\n");
        } else {
            input.push_str(&format!("{{\"echo\":{i}}}\n"));
        }
    }
    let r = s.post("/v1/functions/echo/spawn_map", input.as_bytes(), &[]);
    assert_eq!(r.status, 202);
    let v = r.json();
    assert_eq!(v["total"], 50);
    let map_id = v["map_id"].as_str().expect("map_id").to_owned();
    let mut results = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = s
            .get(&format!(
                "/v1/maps/{map_id}?offset={offset}&limit=20&wait=10"
            ))
            .json();
        let page = v["results"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= 20);
        offset = v["next_offset"].as_u64().expect("next_offset");
        results.extend(page);
        if (v["status"] == "done" && results.len() == 50) || Instant::now() > deadline {
            assert_eq!(v["counts"]["succeeded"], 49, "{v}");
            assert_eq!(v["counts"]["failed"], 1, "{v}");
            break;
        }
    }
    assert_eq!(results.len(), 50);
    assert_eq!(results[7]["error"]["type"], "InvalidInput");
    assert_eq!(s.get("/v1/maps/map_nope").status, 404);

    // The CLI: spawn, get --wait, and map with an output file and a failing exit code.
    let thaw = binary("thaw");
    let run = |args: &[&str]| {
        std::process::Command::new(&thaw)
            .args(args)
            .args(["--endpoint", &s.base])
            .output()
            .expect("run thaw")
    };
    let out = run(&[
        "spawn",
        "echo",
        r#"{"echo":"cli"}"#,
        "--idempotency-key",
        "cli-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(id.starts_with("call_"), "{id}");
    let out = run(&["get", &id, "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("get prints JSON");
    assert_eq!(v["result"]["echo"], "cli");
    let dir = tempfile::tempdir().expect("tempdir");
    let in_path = dir.path().join("in.jsonl");
    let out_path = dir.path().join("out.jsonl");
    std::fs::write(&in_path, &input).expect("write input");
    let out = run(&[
        "map",
        "echo",
        "--input",
        in_path.to_str().expect("utf-8"),
        "--output",
        out_path.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.status.success(),
        "one item failed, so the exit is non-zero"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("50 items, 49 ok, 1 failed"), "{stderr}");
    let written = std::fs::read_to_string(&out_path).expect("output");
    let indices: Vec<u64> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("line")["index"]
                .as_u64()
                .expect("index")
        })
        .collect();
    assert_eq!(indices, (0..50).collect::<Vec<_>>());
    std::fs::write(&in_path, "{\"echo\":1}\n{\"echo\":2}\n").expect("write input");
    let out = run(&["map", "echo", "--input", in_path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn retries_count_attempts_and_a_typed_input_error_is_never_retried() {
    let dir = thaw_tests::side_dir();
    let env = format!(
        "{}retry_backoff = \"50ms\"\n",
        thaw_tests::side_keys(dir.path(), &[("FAULT_STATE", "")])
    );
    let s = Serve::start(&manifest(&format!(
        "[function.r2]\nbinary = \"thaw-fault\"\nretries = 2\n{env}\n\
         [function.r1]\nbinary = \"thaw-fault\"\nretries = 1\n{env}"
    )));
    // Two crashes, then success on the third attempt.
    let id = spawn(
        &s,
        "r2",
        &json!({"action": "flaky", "key": "a", "fail": 2, "how": "exit"}),
        None,
    );
    let v = s.wait_call(&id);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 3, "{v}");
    // With one retry, it ends failed with the last attempt's error.
    let id = spawn(
        &s,
        "r1",
        &json!({"action": "flaky", "key": "b", "fail": 2, "how": "error"}),
        None,
    );
    let v = s.wait_call(&id);
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["attempts"], 2, "{v}");
    assert_eq!(v["error"]["type"], "Internal", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("attempt 2"),
        "{v}"
    );
    // A crash on the last attempt is reported as the crash, with the function's stderr.
    let id = spawn(
        &s,
        "r1",
        &json!({"action": "flaky", "key": "c", "fail": 5, "how": "exit"}),
        None,
    );
    let v = s.wait_call(&id);
    assert_eq!(v["error"]["type"], "FunctionCrashed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("flaky failure on attempt 2"),
        "{v}"
    );
    // The function's own typed input error: one attempt only.
    let id = spawn(&s, "r2", &json!({"action": "fail"}), None);
    let v = s.wait_call(&id);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(v["error"]["type"], "InvalidInput");
    // Event invocations are durable and retried too.
    let r = s.post(
        "/2015-03-31/functions/r1/invocations",
        json!({"action": "flaky", "key": "d", "fail": 1, "how": "exit"})
            .to_string()
            .as_bytes(),
        &[("x-amz-invocation-type", "Event")],
    );
    assert_eq!(r.status, 202);
    let v = s.wait_call(&r.headers["thaw-call-id"]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["kind"], "event");
    assert_eq!(v["attempts"], 2, "{v}");
}

#[test]
fn a_cancelled_queued_call_never_runs_and_results_expire() {
    let dir = thaw_tests::side_dir();
    let log = dir.path().join("log");
    let s = Serve::start(&manifest(&format!(
        "[function.one]\nbinary = \"thaw-fault\"\nmax_containers = 1\nresult_ttl = \"1s\"\n{}",
        thaw_tests::side_keys(dir.path(), &[("FAULT_LOG", "log")])
    )));
    let busy = spawn(
        &s,
        "one",
        &json!({"action": "record", "key": "A", "ms": 800}),
        None,
    );
    assert!(s.wait_until(Duration::from_secs(30), |s| {
        s.get(&format!("/v1/calls/{busy}")).json()["status"] == "running"
    }));
    let victim = spawn(&s, "one", &json!({"action": "record", "key": "B"}), None);
    let r = s.delete(&format!("/v1/calls/{victim}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "cancelled");
    let r = s.delete(&format!("/v1/calls/{busy}"));
    assert_eq!(r.status, 409, "a running call cannot be cancelled");
    assert_eq!(r.json()["error"]["type"], "CallRunning");
    let after = spawn(
        &s,
        "one",
        &json!({"action": "record", "key": "C"}),
        Some("after"),
    );
    // In the order they finish: each long-poll answers as its call commits, well inside
    // the 1 s result_ttl, which a poll for the earlier one made after the later one
    // finished need not be.
    assert_eq!(s.wait_call(&busy)["status"], "succeeded");
    assert_eq!(s.wait_call(&after)["status"], "succeeded");
    // FIFO: had B run, it would have run before C.
    assert_eq!(log_lines(&log), ["A", "C"]);
    // Still cancelled, or already collected: its result_ttl (1 s) ran from the cancel,
    // and `busy`'s remaining ~800 ms plus C's run can outlast it on a loaded machine.
    // Either way it never ran (the log above); anything else is a defect.
    let r = s.get(&format!("/v1/calls/{victim}"));
    match r.status {
        200 => assert_eq!(r.json()["status"], "cancelled"),
        410 => assert_eq!(r.json()["error"]["type"], "CallExpired"),
        other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
    }
    assert_eq!(s.delete("/v1/calls/call_nope").status, 404);
    assert_eq!(s.get("/v1/calls/call_nope").status, 404);

    // After result_ttl the result is collected and a get says so; the key still dedupes.
    assert!(s.wait_until(Duration::from_secs(30), |s| {
        s.get(&format!("/v1/calls/{after}")).status == 410
    }));
    let r = s.get(&format!("/v1/calls/{after}"));
    assert_eq!(r.json()["error"]["type"], "CallExpired");
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    assert_eq!(
        spawn(
            &s,
            "one",
            &json!({"action": "record", "key": "C"}),
            Some("after")
        ),
        after
    );
}

#[test]
fn spawn_refuses_bad_input_with_typed_errors() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    let r = s.post("/v1/functions/nope/spawn", b"{}", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "FunctionNotFound");
    let r = s.post("/v1/functions/f/spawn", b"{not json", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "BadRequest");
    let long = "k".repeat(300);
    let r = s.post(
        "/v1/functions/f/spawn",
        b"{}",
        &[("idempotency-key", &long)],
    );
    assert_eq!(r.status, 400);
    let r = s.post("/v1/functions/f/spawn", &vec![b' '; 7 << 20], &[]);
    assert_eq!(r.status, 413);
    // A bad wait is ignored rather than fatal; the call is still answered.
    let id = spawn(&s, "f", &json!({"echo": 1}), None);
    let r = s.get(&format!("/v1/calls/{id}?wait=-3"));
    assert_eq!(r.status, 200);
    let r = s.get(&format!("/v1/calls/{id}?wait=abc"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "BadRequest");
}

#[test]
fn a_long_poll_answers_on_completion_and_a_thousand_of_them_cost_almost_no_cpu() {
    let s = Serve::start(&manifest(
        "[function.slow]\nbinary = \"thaw-fault\"\nmax_containers = 1\n",
    ));
    // Warm the instance so the 1 s is the call, not a cold start.
    let warm = spawn(&s, "slow", &json!({}), None);
    s.wait_call(&warm);
    let id = spawn(&s, "slow", &json!({"action": "sleep", "ms": 1000}), None);
    let t = Instant::now();
    let v = s.get(&format!("/v1/calls/{id}?wait=5")).json();
    let returned_ms = thaw_runtime::calls::now_ms();
    let waited = t.elapsed();
    assert_eq!(v["status"], "succeeded", "{v}");
    let late = returned_ms - v["finished_ms"].as_i64().expect("finished_ms");
    eprintln!(
        "long-poll on a 1 s call: waited {:.0} ms, answered {late} ms after completion",
        waited.as_secs_f64() * 1e3
    );
    assert!(
        waited < Duration::from_secs(4),
        "it waited for the full 5 s"
    );
    assert!(late < 500, "answered {late} ms after completion");

    // 1,000 concurrent long-polls on one 5 s call.
    let id = spawn(&s, "slow", &json!({"action": "sleep", "ms": 5000}), None);
    let barrier = Arc::new(std::sync::Barrier::new(1001));
    let pollers: Vec<_> = (0..1000)
        .map(|_| {
            let url = format!("{}/v1/calls/{id}?wait=30", s.base);
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    barrier.wait();
                    let v: Value = ureq::get(&url)
                        .timeout(Duration::from_secs(60))
                        .call()
                        .expect("long-poll")
                        .into_json()
                        .expect("json");
                    v["status"].as_str().unwrap_or("").to_owned()
                })
                .expect("thread")
        })
        .collect();
    barrier.wait();
    // Let the polls connect, then measure thaw's CPU while all of them wait.
    std::thread::sleep(Duration::from_millis(800));
    let (cpu0, t0) = (s.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu1, wall) = (s.cpu_time(), t0.elapsed());
    let share = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64();
    let statuses: Vec<String> = pollers
        .into_iter()
        .map(|p| p.join().expect("poller"))
        .collect();
    eprintln!(
        "1,000 long-polls: thaw used {:.1} ms CPU in {:.0} ms ({:.2}% of wall)",
        (cpu1 - cpu0).as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
        share * 100.0
    );
    assert!(
        statuses.iter().all(|st| st == "succeeded"),
        "every poll got the result"
    );
    assert!(share < 0.05, "thaw used {:.1}% CPU", share * 100.0);
}
