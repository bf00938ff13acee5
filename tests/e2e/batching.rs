//! Dynamic batching end to end (issue 12): a real `thaw serve`, the real embed binary
//! and the thaw-fault function, with `batch` in the manifest. What each caller gets is
//! checked against the same call made alone; whether calls were batched is read from
//! `/metrics` (`thaw_batch_size`), never inferred from timing.

use serde_json::{json, Value};
use thaw_tests::{cosine, Serve};

const TEXTS: usize = 64;

fn manifest() -> String {
    let embed = |name: &str, batch: &str| {
        format!(
            "[function.{name}]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n\
             max_containers = 1\nconcurrency = 1\nmax_queue = 1000\ntimeout = \"60s\"\n{batch}\n"
        )
    };
    format!(
        "[app]\nname = \"batching\"\n\n{}{}\
         [function.fault]\nbinary = \"thaw-fault\"\nmax_containers = 1\nretries = 1\n\
         retry_backoff = \"50ms\"\nbatch = {{ max_size = 8, wait = \"1s\" }}\n",
        embed("embed", "batch = { max_size = 32, wait = \"0ms\" }"),
        embed("held", "batch = { max_size = 16, wait = \"1s\" }"),
    )
}

fn call(s: &Serve, f: &str, body: &Value) -> thaw_tests::Reply {
    s.post(
        &format!("/fn/{f}/"),
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

/// Each body sent at once from its own thread; the replies in order.
fn concurrently(s: &Serve, f: &str, bodies: &[Value]) -> Vec<thaw_tests::Reply> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| scope.spawn(move || call(s, f, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    })
}

/// One sample of `/metrics`, such as `thaw_batch_size_count{function="embed"}`.
fn metric(s: &Serve, series: &str) -> f64 {
    let text = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Dispatches of more than one call so far.
fn batches_over_one(s: &Serve, f: &str) -> f64 {
    metric(s, &format!("thaw_batch_size_count{{function=\"{f}\"}}"))
        - metric(
            s,
            &format!("thaw_batch_size_bucket{{function=\"{f}\",le=\"1\"}}"),
        )
}

fn embedding(r: &thaw_tests::Reply) -> Vec<f32> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    v["embeddings"][0]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect()
}

fn text(i: usize) -> String {
    format!(
        "Request {i}: learner {} asks how {} works, in {} words.",
        i * 7 % 13,
        ["recursion", "a hash map", "TCP", "photosynthesis"][i % 4],
        i + 3
    )
}

#[test]
fn concurrent_single_text_calls_are_batched_and_each_caller_gets_its_own_embedding() {
    let s = Serve::start(&manifest());
    // References: each text alone, one call at a time (every dispatch is one call).
    let reference: Vec<Vec<f32>> = (0..TEXTS)
        .map(|i| embedding(&call(&s, "embed", &json!({"text": text(i)}))))
        .collect();
    assert_eq!(
        batches_over_one(&s, "embed"),
        0.0,
        "sequential calls go alone"
    );

    let bodies: Vec<Value> = (0..TEXTS).map(|i| json!({"text": text(i)})).collect();
    let replies = concurrently(&s, "embed", &bodies);
    for (i, r) in replies.iter().enumerate() {
        let got = embedding(r);
        let own = cosine(&got, &reference[i]);
        assert!(
            own >= 0.9999,
            "text {i}: cosine {own} with its unbatched embedding"
        );
        let next = cosine(&got, &reference[(i + 1) % TEXTS]);
        assert!(
            next < 0.9999,
            "text {i} got another text's embedding ({next})"
        );
    }
    let batched = batches_over_one(&s, "embed");
    assert!(
        batched >= 1.0,
        "64 concurrent calls made {batched} batches of more than one"
    );
    let sizes = metric(&s, "thaw_batch_size_sum{function=\"embed\"}");
    assert_eq!(
        sizes,
        (2 * TEXTS) as f64,
        "every call was dispatched exactly once"
    );
    assert!(metric(&s, "thaw_queue_wait_seconds_count{function=\"embed\"}") >= (2 * TEXTS) as f64);
}

#[test]
fn a_bad_item_in_a_batch_fails_only_its_caller_and_a_lone_call_waits_for_nothing() {
    let s = Serve::start(&manifest());
    // Eight calls within `wait` (1 s) of each other: one dispatch of eight.
    let mut bodies: Vec<Value> = (0..7).map(|i| json!({"text": text(i)})).collect();
    bodies.insert(3, json!({"texts": []}));
    let replies = concurrently(&s, "held", &bodies);
    assert_eq!(batches_over_one(&s, "held"), 1.0, "one batch");
    assert_eq!(metric(&s, "thaw_batch_size_sum{function=\"held\"}"), 8.0);
    for (i, r) in replies.iter().enumerate() {
        if i == 3 {
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["error"]["type"], "InvalidInput");
        } else {
            let alone = embedding(&call(&s, "embed", &bodies[i]));
            assert!(cosine(&embedding(r), &alone) >= 0.9999, "call {i}");
        }
    }

    // With wait = 0 a lone call on an idle (warm) instance is dispatched at once...
    let fast = "thaw_queue_wait_seconds_bucket{function=\"embed\",le=\"0.05\"}";
    let before = metric(&s, fast);
    embedding(&call(&s, "embed", &json!({"text": "alone"})));
    assert_eq!(metric(&s, fast), before + 1.0, "queued under 50 ms");
    // ...while with wait = 1 s the same lone call is held for company.
    let held = "thaw_queue_wait_seconds_bucket{function=\"held\",le=\"0.5\"}";
    let before = metric(&s, held);
    embedding(&call(&s, "held", &json!({"text": "alone"})));
    assert_eq!(metric(&s, held), before, "held for wait");
}

#[test]
fn a_crashed_batch_fails_each_call_and_durable_calls_are_retried_alone() {
    let s = Serve::start(&manifest());
    let exit = json!({"action": "exit", "code": 3});
    let echo = |n: u32| json!({"action": "echo", "echo": n});

    // Synchronous callers: all three in one batch, which the exit item crashes.
    let replies = concurrently(&s, "fault", &[echo(1), exit.clone(), echo(2)]);
    assert_eq!(batches_over_one(&s, "fault"), 1.0);
    for r in &replies {
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"]["type"], "FunctionCrashed", "{}", r.json());
    }

    // Durable calls: the first attempt is one batch and crashes; each retry goes alone,
    // so the echo calls succeed on their second attempt and only the exit call fails.
    let ids: Vec<String> = [echo(3), exit, echo(4), echo(5)]
        .iter()
        .map(|input| {
            let r = s.post(
                "/v1/functions/fault/spawn",
                input.to_string().as_bytes(),
                &[("content-type", "application/json")],
            );
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            r.json()["call_id"].as_str().expect("call_id").to_owned()
        })
        .collect();
    let records: Vec<Value> = ids.iter().map(|id| s.wait_call(id)).collect();
    for (i, v) in records.iter().enumerate() {
        assert_eq!(v["attempts"], 2, "call {i}: {v}");
        if i == 1 {
            assert_eq!(v["status"], "failed", "{v}");
            assert_eq!(v["error"]["type"], "FunctionCrashed", "{v}");
        } else {
            assert_eq!(v["status"], "succeeded", "call {i}: {v}");
        }
    }
    assert_eq!(batches_over_one(&s, "fault"), 2.0, "the retries went alone");
}
