//! Durable calls against a hostile client: every bound on `/v1` spawn, map and pages, and
//! the input a careless client sends, against a real `thaw serve` and thaw-fault.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::Serve;

fn manifest(functions: &str) -> String {
    format!("[app]\nname = \"bounds\"\n\n{functions}")
}

fn spawn(s: &Serve, function: &str, input: &Value) -> String {
    let r = s.post(
        &format!("/v1/functions/{function}/spawn"),
        input.to_string().as_bytes(),
        &[],
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["call_id"].as_str().expect("call_id").to_owned()
}

fn wait_map_done(s: &Serve, map_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = s.get(&format!("/v1/maps/{map_id}?limit=1&wait=20")).json();
        if v["status"] == "done" || Instant::now() > deadline {
            return v;
        }
    }
}

const MIB: u64 = 1024;

#[test]
fn a_wait_of_1e20_is_clamped_on_calls_and_maps_never_a_panic() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    let id = spawn(&s, "f", &json!({"echo": 1}));
    s.wait_call(&id);
    // Before, `Duration::from_secs_f64(1e20)` panicked in the handler: no response at all.
    let r = s.get(&format!("/v1/calls/{id}?wait=1e20"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "succeeded");
    let r = s.post("/v1/functions/f/spawn_map", b"{\"echo\":1}\n", &[]);
    assert_eq!(r.status, 202);
    let map_id = r.json()["map_id"].as_str().expect("map_id").to_owned();
    wait_map_done(&s, &map_id);
    let r = s.get(&format!("/v1/maps/{map_id}?wait=1e20"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "done");
    // A running call answers within the 60 s clamp rather than never: it finishes first.
    let id = spawn(&s, "f", &json!({"action": "sleep", "ms": 300}));
    let r = s.get(&format!("/v1/calls/{id}?wait=1e300"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "succeeded");
}

#[test]
fn invalid_utf8_is_refused_on_spawn_event_and_map_items() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    let bad: &[u8] = b"{\"echo\": \"\xff\xfe\"}";
    let r = s.post("/v1/functions/f/spawn", bad, &[]);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "BadRequest");
    let r = s.post(
        "/2015-03-31/functions/f/invocations",
        bad,
        &[("x-amz-invocation-type", "Event")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.headers["x-amzn-errortype"],
        "InvalidRequestContentException"
    );
    let mut body = b"{\"echo\": 0}\n".to_vec();
    body.extend_from_slice(bad);
    body.extend_from_slice(b"\n{\"echo\": 2}\n");
    let r = s.post("/v1/functions/f/map", &body, &[]);
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["error"]["type"], "InvalidInput", "{lines:?}");
    assert_eq!(lines[2]["ok"]["echo"], 2, "{lines:?}");
    // A lone surrogate escape is no more a string than invalid UTF-8 is.
    let r = s.post("/v1/functions/f/spawn", br#"{"echo": "\ud800"}"#, &[]);
    assert_eq!(r.status, 400);
}

#[test]
fn an_idempotency_key_reused_with_another_input_is_422() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    let post = |input: &str| {
        s.post(
            "/v1/functions/f/spawn",
            input.as_bytes(),
            &[("idempotency-key", "order-42")],
        )
    };
    let first = post(r#"{"echo": "a"}"#);
    assert_eq!(first.status, 202);
    let r = post(r#"{"echo": "b"}"#);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "IdempotencyKeyReused");
    let again = post(r#"{"echo": "a"}"#);
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["call_id"], first.json()["call_id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
}

#[test]
fn durable_paths_answer_429_with_retry_after_at_max_queue() {
    let s = Serve::start(&manifest(
        "[function.one]\nbinary = \"thaw-fault\"\nmax_containers = 1\nmax_queue = 2\n",
    ));
    let busy = spawn(&s, "one", &json!({"action": "sleep", "ms": 20000}));
    assert!(s.wait_until(Duration::from_secs(30), |s| {
        s.get(&format!("/v1/calls/{busy}")).json()["status"] == "running"
    }));
    let queued = [spawn(&s, "one", &json!({})), spawn(&s, "one", &json!({}))];
    let full = |r: &thaw_tests::Reply, what: &str| {
        assert_eq!(
            r.status,
            429,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.headers.contains_key("retry-after"), "{what}");
    };
    let r = s.post("/v1/functions/one/spawn", b"{}", &[]);
    full(&r, "spawn");
    assert_eq!(r.json()["error"]["type"], "QueueFull");
    let r = s.post(
        "/2015-03-31/functions/one/invocations",
        b"{}",
        &[("x-amz-invocation-type", "Event")],
    );
    full(&r, "Event");
    assert_eq!(r.headers["x-amzn-errortype"], "TooManyRequestsException");
    full(&s.post("/v1/functions/one/map", b"{}\n", &[]), "map");
    full(
        &s.post("/v1/functions/one/spawn_map", b"{}\n", &[]),
        "spawn_map",
    );
    // Room again once the backlog shrinks.
    for id in &queued {
        assert_eq!(s.delete(&format!("/v1/calls/{id}")).status, 200);
    }
    spawn(&s, "one", &json!({}));
}

#[test]
fn a_64_mib_map_body_is_refused_with_413_in_bounded_memory() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    let before = s.peak_rss_kib();
    // 64 MiB of small items: before, a 40 MB body became 5 million calls.
    let line = b"{\"echo\":1234567}\n";
    let body: Vec<u8> = line.repeat((64 << 20) / line.len() + 1);
    for path in ["/v1/functions/f/spawn_map", "/v1/functions/f/map"] {
        let r = s.post(path, &body, &[]);
        assert_eq!(
            r.status,
            413,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["type"], "MapTooLarge");
    }
    // The same without a declared length: read until the limit, then refused, and the
    // items committed so far deleted (they were held, so none ran).
    let r = thaw_tests::Reply::from(
        ureq::post(&format!("{}/v1/functions/f/spawn_map", s.base))
            .timeout(Duration::from_secs(300))
            .send(std::io::Cursor::new(body.clone())),
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let functions = s.get("/v1/functions").json();
    assert_eq!(
        functions["functions"][0]["durable"]["queued"], 0,
        "{functions}"
    );
    let peak = s.peak_rss_kib();
    eprintln!("64 MiB map bodies refused: thaw peak RSS {before} KiB before, {peak} KiB after");
    assert!(peak < 200 * MIB, "thaw peak RSS {peak} KiB");
}

#[test]
fn four_concurrent_maximal_pages_stay_in_bounded_memory() {
    const ITEMS: usize = 30;
    let s = Serve::start(&manifest(
        "[function.echo]\nbinary = \"thaw-fault\"\nmax_containers = 2\n",
    ));
    // 30 results of 1 MiB each: a page of 10,000 items was all of them, four times over.
    let big = "x".repeat((1 << 20) - 64);
    let mut body = String::new();
    for i in 0..ITEMS {
        body.push_str(&json!({"echo": format!("{i}:{big}")}).to_string());
        body.push('\n');
    }
    let r = s.post("/v1/functions/echo/spawn_map", body.as_bytes(), &[]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let map_id = r.json()["map_id"].as_str().expect("map_id").to_owned();
    drop(body);
    let v = wait_map_done(&s, &map_id);
    assert_eq!(v["counts"]["succeeded"], ITEMS, "{}", v["counts"]);
    let before = s.peak_rss_kib();
    let pages: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/v1/maps/{map_id}?limit=10000", s.base);
            std::thread::spawn(move || thaw_tests::Reply::from(ureq::get(&url).call()))
        })
        .collect();
    for page in pages {
        let r = page.join().expect("page");
        assert_eq!(r.status, 200);
        let v = r.json();
        let n = v["results"].as_array().map_or(0, Vec::len);
        assert!(
            (1..ITEMS).contains(&n),
            "a page is bounded in bytes: {n} items"
        );
        assert_eq!(v["next_offset"], n, "and says where the next one starts");
        assert!(r.body.len() <= 5 << 20, "{} bytes", r.body.len());
    }
    let peak = s.peak_rss_kib();
    // Paging on from next_offset reaches every item, in order.
    let mut offset = 0;
    while offset < ITEMS {
        let v = s
            .get(&format!("/v1/maps/{map_id}?offset={offset}&limit=10000"))
            .json();
        for item in v["results"].as_array().expect("results") {
            assert_eq!(item["index"], offset);
            let echo = item["ok"]["echo"].as_str().expect("echo");
            assert!(echo.starts_with(&format!("{offset}:")));
            offset += 1;
        }
    }
    eprintln!("four concurrent maximal pages: thaw peak RSS {before} KiB before, {peak} KiB after");
    assert!(peak < 200 * MIB, "thaw peak RSS {peak} KiB");
}
