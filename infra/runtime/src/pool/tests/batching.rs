//! Dynamic batching in the scheduler: what goes into a dispatch, when, and how each
//! caller gets its own answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::harness::*;
use crate::pool::{CallError, Company};
use crate::runtime_api::Outcome;

const BATCHED: &str =
    "max_containers = 1\nconcurrency = 1\nbatch = { max_size = 4, wait = \"0ms\" }";

impl Harness {
    fn call_alone(&self, payload: &str) -> JoinHandle<Result<Outcome, CallError>> {
        let pool = Arc::clone(&self.pool);
        let payload = Bytes::from(payload.to_owned());
        tokio::spawn(async move { pool.invoke_with(payload, Company::Alone).await })
    }
}

/// Whether a call answered `payload`'s JSON (a batch item comes back re-encoded).
fn same_json(r: &Result<Outcome, CallError>, payload: &str) -> bool {
    let want: serde_json::Value = serde_json::from_str(payload).expect("test payload");
    matches!(r, Ok(Outcome::Response(b)) if serde_json::from_slice::<serde_json::Value>(b).ok() == Some(want.clone()))
}

#[tokio::test(start_paused = true)]
async fn calls_queued_while_the_instance_is_busy_go_together_up_to_max_size() {
    let h = start(BATCHED, Behaviour::default());
    // The first call occupies the only instance for 100 ms; nine more queue meanwhile.
    let first = h.call(r#"{"sleep_ms": 100, "n": 0}"#);
    sleep(Duration::from_millis(20)).await;
    let queued: Vec<_> = (1..10)
        .map(|n| (n, h.call(&format!(r#"{{"n": {n}}}"#))))
        .collect();
    assert!(echoed(
        &outcome(first).await,
        r#"{"sleep_ms": 100, "n": 0}"#
    ));
    for (n, call) in queued {
        let got = outcome(call).await;
        assert!(
            same_json(&got, &format!(r#"{{"n": {n}}}"#)),
            "call {n}: {got:?}"
        );
    }
    // A lone first call goes as itself; then batches of max_size, then the rest.
    assert_eq!(h.fake.batches(), vec![4, 4]);
    assert_eq!(h.fake.answered(), 4, "1 alone + 2 batches + 1 alone");
}

#[tokio::test(start_paused = true)]
async fn a_lone_call_on_an_idle_function_is_not_delayed_with_wait_zero() {
    let h = start(BATCHED, Behaviour::default());
    assert!(echoed(&h.invoke("{}").await, "{}")); // warm
    let t = Instant::now();
    assert!(echoed(&h.invoke(r#"{"x": 1}"#).await, r#"{"x": 1}"#));
    assert_eq!(t.elapsed(), Duration::ZERO, "dispatched at once, unbatched");
    assert!(h.fake.batches().is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_holds_a_partial_batch_until_its_oldest_call_has_waited_that_long() {
    let h = start(
        "max_containers = 1\nbatch = { max_size = 3, wait = \"50ms\" }",
        Behaviour::default(),
    );
    assert!(echoed(&h.invoke("{}").await, "{}")); // warm, idle
    let t = Instant::now();
    let a = h.call(r#"{"a": 1}"#);
    sleep(Duration::from_millis(10)).await;
    let b = h.call(r#"{"b": 1}"#);
    assert!(echoed(&outcome(a).await, r#"{"a":1}"#));
    assert_eq!(t.elapsed(), Duration::from_millis(50), "held for wait");
    assert!(echoed(&outcome(b).await, r#"{"b":1}"#));
    assert_eq!(h.fake.batches(), vec![2]);
    assert_eq!(h.fake.launches(), 1, "a held batch starts no instance");

    // A full batch goes at once.
    let t = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| h.call(&format!(r#"{{"i": {i}}}"#)))
        .collect();
    for c in calls {
        assert!(outcome(c).await.is_ok());
    }
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(h.fake.batches(), vec![2, 3]);
}

#[tokio::test(start_paused = true)]
async fn one_items_error_fails_only_its_caller() {
    let h = start(BATCHED, Behaviour::default());
    let first = h.call(r#"{"sleep_ms": 50}"#);
    sleep(Duration::from_millis(20)).await;
    let good = h.call(r#"{"g": 1}"#);
    let bad = h.call(r#"{"error": "bad item"}"#);
    let good2 = h.call(r#"{"g": 2}"#);
    assert!(outcome(first).await.is_ok());
    assert!(echoed(&outcome(good).await, r#"{"g":1}"#));
    assert!(echoed(&outcome(good2).await, r#"{"g":2}"#));
    match outcome(bad).await {
        Ok(Outcome::Error(d)) => assert_eq!(d.error_message, "bad item"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.fake.batches(), vec![3]);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_batch_fails_each_of_its_calls_and_the_next_instance_serves() {
    let h = start(BATCHED, Behaviour::default());
    let first = h.call(r#"{"sleep_ms": 50}"#);
    sleep(Duration::from_millis(20)).await;
    let calls: Vec<_> = [r#"{"a": 1}"#, r#"{"crash": true}"#, r#"{"b": 1}"#]
        .iter()
        .map(|p| h.call(p))
        .collect();
    assert!(outcome(first).await.is_ok());
    for c in calls {
        match outcome(c).await {
            Err(CallError::FunctionCrashed(why)) => assert!(why.contains(CRASH_LINE), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.fake.batches(), vec![3]);
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_timeout_fails_each_call_with_timeout() {
    let h = start(
        &format!("{BATCHED}\ntimeout = \"1s\""),
        Behaviour::default(),
    );
    let first = h.call(r#"{"sleep_ms": 50}"#);
    sleep(Duration::from_millis(20)).await;
    let calls: Vec<_> = [r#"{"a": 1}"#, r#"{"sleep_ms": 5000}"#]
        .iter()
        .map(|p| h.call(p))
        .collect();
    assert!(outcome(first).await.is_ok());
    for c in calls {
        assert_eq!(
            outcome(c).await,
            Err(CallError::Timeout(Duration::from_secs(1)))
        );
    }
    assert_eq!(h.fake.kills(), 1);
}

#[tokio::test(start_paused = true)]
async fn calls_that_must_go_alone_are_never_batched() {
    let h = start(BATCHED, Behaviour::default());
    let first = h.call(r#"{"sleep_ms": 50}"#);
    sleep(Duration::from_millis(20)).await;
    let a = h.call(r#"{"a": 1}"#);
    let alone = h.call_alone(r#"{"alone": 1}"#);
    let b = h.call(r#"{"b": 1}"#);
    let c = h.call(r#"{"c": 1}"#);
    for call in [first, a, alone, b, c] {
        assert!(outcome(call).await.is_ok());
    }
    // [a] alone (the batch stops at the call that must go alone), [alone], then [b, c].
    assert_eq!(h.fake.batches(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_counts_from_when_the_instance_takes_the_call() {
    // One instance taking one call at a time (a runtime that polls `next` serially)
    // with concurrency 2: the second call waits inside the instance behind the first.
    let h = start(
        "max_containers = 1\nconcurrency = 2\ntimeout = \"1s\"",
        Behaviour {
            serial: true,
            ..Behaviour::default()
        },
    );
    let a = h.call(r#"{"sleep_ms": 800}"#);
    let b = h.call(r#"{"sleep_ms": 800}"#);
    assert!(outcome(a).await.is_ok());
    assert!(
        outcome(b).await.is_ok(),
        "1.6 s after dispatch, but 0.8 s after the instance took it"
    );
    assert_eq!(h.fake.kills(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_an_instance_never_takes_times_out_and_the_instance_is_replaced() {
    let h = start(
        "max_containers = 1\nconcurrency = 2\ntimeout = \"1s\"",
        Behaviour::default(),
    );
    assert!(echoed(
        &h.invoke(r#"{"stop_polling": true}"#).await,
        r#"{"stop_polling": true}"#
    ));
    let t = Instant::now();
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::Timeout(Duration::from_secs(1)))
    );
    assert_eq!(t.elapsed(), Duration::from_secs(2), "concurrency x timeout");
    assert_eq!(h.fake.kills(), 1);
    assert!(echoed(&h.invoke("{}").await, "{}"), "a new instance serves");
    assert_eq!(h.fake.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_stops_at_its_byte_bound_and_a_larger_call_goes_alone() {
    let h = start(
        "max_containers = 1\nbatch = { max_size = 8, wait = \"10s\" }",
        Behaviour::default(),
    );
    // Held for company (wait = 10 s) until the big calls arrive 20 ms later.
    let first = h.call(r#"{"sleep_ms": 50}"#);
    sleep(Duration::from_millis(20)).await;
    // Four calls of 2.5 MiB: two fit under the 6 MiB bound with the small first call,
    // then two more; each batch goes at once (one stopped by the bound is full: `wait`
    // does not hold it).
    let pad = "x".repeat(5 << 19);
    let big: Vec<_> = (0..4)
        .map(|i| h.call(&format!(r#"{{"i": {i}, "pad": "{pad}"}}"#)))
        .collect();
    // One call over the bound by itself.
    let huge = h.call(&format!(r#"{{"pad": "{}"}}"#, "y".repeat(7 << 20)));
    let t = Instant::now();
    assert!(outcome(first).await.is_ok());
    for c in big {
        assert!(outcome(c).await.is_ok());
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "full batches are not held"
    );
    // The 7 MiB echo is over the 6 MiB reply limit: refused for that call only.
    assert!(matches!(
        outcome(huge).await,
        Err(CallError::ResponseTooLarge { .. })
    ));
    assert_eq!(h.fake.batches(), vec![3, 2]);
}
