//! Scheduler tests with an in-process launcher on paused time.
//!
//! [`FakeLauncher`] starts "instances" that are tokio tasks serving the [`InstanceApi`]
//! directly (no sockets, no processes). What an instance does with a call is in its
//! payload:
//!
//! - `{"sleep_ms": n}`: sleeps `n` ms, then echoes the payload (no key: echoes at once);
//! - `{"error": "msg"}`: answers with a function error;
//! - `{"hang": true}`: never answers;
//! - `{"crash": true}`: writes a line to stderr and exits without answering;
//! - `{"crash_after_reply": true}`: answers, then exits before its next `next`;
//! - `{"stop_polling": true}`: answers, then never polls `next` again (stays alive);
//! - `{"unusable": true}`: its Runtime API marks it unusable (as after a dropped post),
//!   then it answers;
//! - `{"stall_then_crash_ms": n}`: stops taking calls (as a runtime whose workers are all
//!   busy), so calls dispatched meanwhile wait inside the instance; exits after `n` ms;
//! - `{"oom": limit}`: is killed at its memory limit without answering.
//!
//! Every test runs on paused time: when every task is idle the clock jumps to the next
//! timer, so seconds of scheduler time take microseconds, and each test is deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};

use super::{CallError, STOP_GRACE};
use crate::runtime_api::Outcome;

mod batching;
mod harness;

use self::harness::*;

#[tokio::test(start_paused = true)]
async fn scales_up_from_zero_to_max_containers() {
    let h = start("max_containers = 3\nconcurrency = 1", Behaviour::default());
    assert_eq!(
        h.pool.status().instances.len(),
        0,
        "nothing starts before demand"
    );
    assert_eq!(h.fake.launches(), 0);

    // Watch the pool's instance count for the whole test.
    let pool = Arc::clone(&h.pool);
    let most = Arc::new(AtomicUsize::new(0));
    let most2 = Arc::clone(&most);
    let sampler = tokio::spawn(async move {
        loop {
            most2.fetch_max(pool.status().instances.len(), Ordering::SeqCst);
            sleep(Duration::from_millis(1)).await;
        }
    });

    let payload = r#"{"sleep_ms": 100}"#;
    let calls: Vec<_> = (0..5).map(|_| h.call(payload)).collect();
    settle().await;
    let s = h.pool.status();
    assert_eq!(
        s.starting, 3,
        "one instance per queued call, up to max_containers"
    );
    assert_eq!(s.queue_depth, 5);

    sleep(Duration::from_millis(20)).await; // initialised; three calls dispatched
    let s = h.pool.status();
    assert_eq!((s.busy, s.in_flight, s.queue_depth), (3, 3, 2));

    for c in calls {
        assert!(echoed(&outcome(c).await, payload));
    }
    sampler.abort();
    assert_eq!(h.fake.launches(), 3);
    assert_eq!(h.fake.max_live(), 3);
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "never more than max_containers"
    );
    assert_eq!(h.fake.max_calls(), 3, "concurrency 1 per instance");
    let s = h.pool.status();
    assert_eq!((s.idle, s.cold_starts, s.in_flight), (3, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn an_instance_never_runs_more_than_concurrency_calls() {
    let h = start("max_containers = 1\nconcurrency = 2", Behaviour::default());
    let payload = r#"{"sleep_ms": 100}"#;
    let calls: Vec<_> = (0..4).map(|_| h.call(payload)).collect();
    sleep(Duration::from_millis(20)).await;
    let s = h.pool.status();
    assert_eq!((s.busy, s.in_flight, s.queue_depth), (1, 2, 2));

    let t = Instant::now();
    for c in calls {
        assert!(echoed(&outcome(c).await, payload));
    }
    // Two rounds of two.
    assert!(
        t.elapsed() >= Duration::from_millis(180),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.fake.launches(), 1);
    assert_eq!(h.fake.max_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn calls_past_max_queue_are_refused() {
    let h = start(
        "max_containers = 1\nmax_queue = 2",
        Behaviour {
            init_delay: Duration::from_millis(50),
            ..Behaviour::default()
        },
    );
    let a = h.call("{}");
    let b = h.call("{}");
    settle().await;
    assert_eq!(h.pool.status().queue_depth, 2);
    assert_eq!(h.invoke("{}").await, Err(CallError::QueueFull(2)));
    assert_eq!(CallError::QueueFull(2).kind(), "QueueFull");
    // The queued ones are served once the instance is up; then there is room again.
    assert!(echoed(&outcome(a).await, "{}"));
    assert!(echoed(&outcome(b).await, "{}"));
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 1);
}

#[tokio::test(start_paused = true)]
async fn function_errors_leave_the_instance_serving() {
    let h = start("", Behaviour::default());
    let r = h.invoke(r#"{"error": "bad input"}"#).await;
    match r {
        Ok(Outcome::Error(d)) => assert_eq!(d.error_message, "bad input"),
        other => panic!("expected a function error, got {other:?}"),
    }
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 1);
    assert_eq!(h.pool.status().idle, 1);
}

// ---------------------------------------------------------------------------------------
// Scale down.

#[tokio::test(start_paused = true)]
async fn idle_instances_are_reaped_to_zero() {
    let h = start("idle_timeout = \"1s\"", Behaviour::default());
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.pool.status().idle, 1);

    sleep(Duration::from_millis(500)).await;
    assert_eq!(h.pool.status().idle, 1, "not idle long enough yet");
    assert_eq!(h.fake.terminates(), 0);

    sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        h.fake.terminates(),
        1,
        "SIGTERM once idle_timeout has passed"
    );
    assert_eq!(h.fake.kills(), 0, "it went on SIGTERM; no SIGKILL");
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty(), "scaled to zero");

    // The next call cold-starts a new instance.
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn reaping_keeps_min_containers_and_spares_busy_instances() {
    let h = start(
        "min_containers = 1\nmax_containers = 3\nidle_timeout = \"1s\"",
        Behaviour::default(),
    );
    sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (h.fake.launches(), h.pool.status().idle),
        (1, 1),
        "min_containers at boot"
    );

    let calls: Vec<_> = (0..3).map(|_| h.call(r#"{"sleep_ms": 100}"#)).collect();
    for c in calls {
        assert!(outcome(c).await.is_ok());
    }
    assert_eq!(h.fake.launches(), 3);
    assert_eq!(h.pool.status().idle, 3);

    // A long call keeps its instance busy past idle_timeout: it is not reaped.
    let long = h.call(r#"{"sleep_ms": 5000}"#);
    sleep(Duration::from_millis(2000)).await;
    let s = h.pool.status();
    assert_eq!((s.busy, s.idle, s.stopping), (1, 0, 0), "{s:?}");
    assert_eq!(h.fake.terminates(), 2, "the two idle ones went");
    assert!(outcome(long).await.is_ok());

    // Now idle too, but it is the last one: min_containers keeps it.
    sleep(Duration::from_millis(3000)).await;
    assert_eq!(h.fake.terminates(), 2);
    assert_eq!(h.pool.status().idle, 1);
    assert_eq!(h.fake.live(), 1);
    assert_eq!(h.fake.kills(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_instance_ignoring_sigterm_is_killed_after_the_grace() {
    let h = start(
        "idle_timeout = \"1s\"",
        Behaviour {
            ignore_terminate: true,
            ..Behaviour::default()
        },
    );
    assert!(h.invoke("{}").await.is_ok());
    sleep(Duration::from_millis(1300)).await;
    assert_eq!(h.fake.terminates(), 1);
    assert_eq!(h.pool.status().stopping, 1);
    assert_eq!(h.fake.kills(), 0);
    sleep(STOP_GRACE).await;
    assert_eq!(h.fake.kills(), 1, "SIGKILL after STOP_GRACE");
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty());
}

// ---------------------------------------------------------------------------------------
// Faults.

#[tokio::test(start_paused = true)]
async fn min_containers_start_at_boot_and_are_replaced_after_a_crash() {
    let h = start("min_containers = 2", Behaviour::default());
    sleep(Duration::from_millis(50)).await;
    assert_eq!(h.fake.launches(), 2);
    assert_eq!(h.pool.status().idle, 2);

    assert_eq!(
        h.invoke(r#"{"crash": true}"#).await,
        Err(CallError::FunctionCrashed(CRASH_LINE.into())),
        "the caller sees the function's stderr"
    );
    sleep(Duration::from_millis(50)).await;
    assert_eq!(h.fake.launches(), 3, "the crashed one was replaced");
    assert_eq!(h.fake.live(), 2);
    assert_eq!(h.pool.status().idle, 2);
}

#[tokio::test(start_paused = true)]
async fn a_crash_fails_its_call_and_the_next_call_gets_a_new_instance() {
    let h = start("", Behaviour::default());
    match h.invoke(r#"{"crash": true}"#).await {
        Err(CallError::FunctionCrashed(msg)) => assert_eq!(msg, CRASH_LINE),
        other => panic!("expected FunctionCrashed, got {other:?}"),
    }
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty());
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_crash_fails_every_call_in_flight_on_that_instance() {
    let h = start("max_containers = 1\nconcurrency = 3", Behaviour::default());
    let slow = h.call(r#"{"sleep_ms": 1000}"#);
    let hang = h.call(r#"{"hang": true}"#);
    sleep(Duration::from_millis(20)).await;
    assert_eq!(h.pool.status().in_flight, 2);
    let crash = h.invoke(r#"{"crash": true}"#).await;
    assert!(
        matches!(crash, Err(CallError::FunctionCrashed(_))),
        "{crash:?}"
    );
    assert!(matches!(
        outcome(slow).await,
        Err(CallError::FunctionCrashed(_))
    ));
    assert!(matches!(
        outcome(hang).await,
        Err(CallError::FunctionCrashed(_))
    ));
    assert_eq!(h.pool.status().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_crash_fails_the_calls_still_queued_inside_the_instance_at_once() {
    // concurrency 3: two calls are handed to the instance while it is not taking calls;
    // its crash must fail them at once, not leave them to `timeout`.
    let h = start(
        "max_containers = 1\nconcurrency = 3\ntimeout = \"30s\"",
        Behaviour::default(),
    );
    assert!(echoed(&h.invoke("{}").await, "{}"));
    let t = Instant::now();
    let stall = h.call(r#"{"stall_then_crash_ms": 100}"#);
    settle().await;
    let queued: Vec<_> = (0..2).map(|_| h.call("{}")).collect();
    settle().await;
    assert_eq!(
        h.pool.status().in_flight,
        3,
        "all three handed to the instance"
    );
    assert!(matches!(
        outcome(stall).await,
        Err(CallError::FunctionCrashed(_))
    ));
    for c in queued {
        let r = outcome(c).await;
        assert!(
            matches!(&r, Err(CallError::FunctionCrashed(m)) if m == CRASH_LINE),
            "{r:?}"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the queued calls waited {:?}",
        t.elapsed()
    );
    assert_eq!(h.pool.status().in_flight, 0);
    assert!(echoed(&h.invoke("{}").await, "{}"), "a new instance serves");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_went_away_is_never_dispatched() {
    let h = start("max_containers = 1\nconcurrency = 1", Behaviour::default());
    let busy = h.call(r#"{"sleep_ms": 100}"#);
    sleep(Duration::from_millis(20)).await; // started, and running `busy`
                                            // Ten callers queue behind it and go away (an HTTP client that disconnected).
    let gone: Vec<_> = (0..10).map(|_| h.call("{}")).collect();
    settle().await;
    assert_eq!(h.pool.status().queue_depth, 10);
    for c in &gone {
        c.abort();
    }
    assert!(outcome(busy).await.is_ok());
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.fake.answered(),
        1,
        "only the call whose caller stayed ran"
    );
    let s = h.pool.status();
    assert_eq!((s.queue_depth, s.in_flight), (0, 0));
    assert_eq!(h.fake.launches(), 1, "a gone caller is no demand");
    assert!(echoed(&h.invoke("{}").await, "{}"));
}

#[tokio::test(start_paused = true)]
async fn callers_gone_while_instances_start_are_never_dispatched() {
    let h = start("max_containers = 4", Behaviour::default());
    let gone: Vec<_> = (0..3).map(|_| h.call("{}")).collect();
    settle().await;
    assert_eq!(
        h.pool.status().queue_depth,
        3,
        "queued while instances start"
    );
    for c in &gone {
        c.abort();
    }
    assert!(echoed(&h.invoke("{}").await, "{}"));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.fake.answered(), 1, "{} calls ran", h.fake.answered());
}

#[tokio::test(start_paused = true)]
async fn an_instance_its_runtime_api_marks_unusable_is_replaced() {
    let h = start("max_containers = 1", Behaviour::default());
    assert!(echoed(
        &h.invoke(r#"{"unusable": true}"#).await,
        r#"{"unusable": true}"#
    ));
    settle().await;
    assert_eq!(h.fake.terminates(), 1, "stopped, gracefully");
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 2, "a fresh instance serves");
}

#[tokio::test(start_paused = true)]
async fn a_call_dispatched_as_its_instance_exits_is_not_lost() {
    // The instance answers, then exits before its next `next`. The answer frees its slot
    // and the queued call is dispatched to it before its exit is seen: that call must
    // fail (or be served elsewhere) promptly, not wait for `timeout`.
    let h = start(
        "max_containers = 1\ntimeout = \"30s\"",
        Behaviour::default(),
    );
    let first = h.call(r#"{"crash_after_reply": true}"#);
    let second = h.call("{}");
    assert!(echoed(
        &outcome(first).await,
        r#"{"crash_after_reply": true}"#
    ));
    let t = Instant::now();
    let r = outcome(second).await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the second call waited {:?} and got {r:?}",
        t.elapsed()
    );
    assert!(
        echoed(&r, "{}") || matches!(r, Err(CallError::FunctionCrashed(_))),
        "{r:?}"
    );
    assert!(
        echoed(&h.invoke("{}").await, "{}"),
        "a new instance serves the next call"
    );
    assert_eq!(h.fake.launches(), 2);
    assert_eq!(h.pool.status().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_past_timeout_is_killed_and_the_next_call_gets_a_new_instance() {
    let h = start("timeout = \"1s\"", Behaviour::default());
    let t = Instant::now();
    assert_eq!(
        h.invoke(r#"{"hang": true}"#).await,
        Err(CallError::Timeout(Duration::from_secs(1)))
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "{took:?}"
    );
    assert_eq!(h.fake.kills(), 1, "the instance was killed");
    settle().await;
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty());

    assert!(echoed(
        &h.invoke(r#"{"sleep_ms": 10}"#).await,
        r#"{"sleep_ms": 10}"#
    ));
    assert_eq!(h.fake.launches(), 2);
    assert_eq!(h.fake.kills(), 1);
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_while_running_a_call_is_reported_as_such() {
    let h = start("", Behaviour::default());
    let limit = 256u64 << 20;
    assert_eq!(
        h.invoke(&format!(r#"{{"oom": {limit}}}"#)).await,
        Err(CallError::OutOfMemory { limit })
    );
    assert!(
        echoed(&h.invoke("{}").await, "{}"),
        "a new instance serves the next call"
    );
    assert_eq!(h.fake.launches(), 2);
}

// ---------------------------------------------------------------------------------------
// Init failures and backoff.

#[tokio::test(start_paused = true)]
async fn init_failures_back_off_and_recover() {
    let h = start(
        "",
        Behaviour {
            fail_init: 2,
            ..Behaviour::default()
        },
    );
    // t = 0: the first call starts an instance, which fails at 10 ms; backoff 200 ms.
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::InitFailed(INIT_ERROR.into()))
    );
    assert_eq!(CallError::InitFailed(String::new()).kind(), "InitError");
    assert_eq!(h.fake.launches(), 1);
    assert_eq!(h.pool.status().init_error.as_deref(), Some(INIT_ERROR));
    assert!(h.pool.status().instances.is_empty());

    // During the backoff calls fail fast, with the message, and start nothing.
    sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::InitFailed(INIT_ERROR.into()))
    );
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(h.fake.launches(), 1);

    // After it (t = 250 ms) a call tries again: launch 2 fails too; backoff 400 ms.
    sleep(Duration::from_millis(140)).await;
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::InitFailed(INIT_ERROR.into()))
    );
    assert_eq!(h.fake.launches(), 2);
    let failed_at = Instant::now();

    // Still backing off 300 ms later: the backoff doubled.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::InitFailed(INIT_ERROR.into()))
    );
    assert_eq!(h.fake.launches(), 2);

    // Past 400 ms: launch 3 initialises and serves; the failure is forgotten.
    sleep_until(failed_at + Duration::from_millis(401)).await;
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 3);
    assert_eq!(h.pool.status().init_error, None);
    assert!(echoed(&h.invoke("{}").await, "{}"));
    assert_eq!(h.fake.launches(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_init_failure_leaves_the_queue_to_a_sibling_still_starting() {
    // Two instances start for two calls; the first fails at 5 ms, the second is ready at
    // 50 ms. The failure must not fail the queue the sibling is about to serve.
    let h = start(
        "max_containers = 2\nconcurrency = 1",
        Behaviour {
            init_delay: Duration::from_millis(50),
            fail_init: 1,
            fail_init_delay: Some(Duration::from_millis(5)),
            ..Behaviour::default()
        },
    );
    let calls: Vec<_> = (0..2).map(|_| h.call("{}")).collect();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(h.pool.status().init_error.as_deref(), Some(INIT_ERROR));
    assert_eq!(h.pool.status().starting, 1, "the sibling is still starting");
    // A call arriving during the backoff queues for the sibling too.
    let late = h.call("{}");
    for c in calls {
        let r = outcome(c).await;
        assert!(echoed(&r, "{}"), "{r:?}");
    }
    assert!(echoed(&outcome(late).await, "{}"));
    assert_eq!(h.pool.status().init_error, None, "forgotten once one is up");
}

#[tokio::test(start_paused = true)]
async fn when_every_sibling_fails_the_queue_gets_the_init_error() {
    let h = start(
        "max_containers = 2\nconcurrency = 1",
        Behaviour {
            fail_init: 2,
            ..Behaviour::default()
        },
    );
    let calls: Vec<_> = (0..2).map(|_| h.call("{}")).collect();
    for c in calls {
        assert_eq!(
            outcome(c).await,
            Err(CallError::InitFailed(INIT_ERROR.into()))
        );
    }
    assert_eq!(h.fake.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn min_containers_retry_on_their_own_with_doubling_backoff() {
    let h = start(
        "min_containers = 1",
        Behaviour {
            init_delay: Duration::ZERO,
            fail_init: 3,
            ..Behaviour::default()
        },
    );
    let t0 = Instant::now();
    // Failures at 0, 200 and 600 ms (backoff 200, 400, 800): the fourth launch at 1400.
    let expect = [
        (100, 1),
        (190, 1),
        (210, 2),
        (590, 2),
        (610, 3),
        (1390, 3),
        (1410, 4),
    ];
    for (at, launches) in expect {
        sleep_until(t0 + Duration::from_millis(at)).await;
        assert_eq!(h.fake.launches(), launches, "at {at} ms");
    }
    assert_eq!(h.pool.status().idle, 1);
    assert_eq!(h.pool.status().init_error, None);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.fake.launches(), 4, "no launches once it is up");
}

#[tokio::test(start_paused = true)]
async fn init_failure_messages_say_why() {
    // Exits before its first `next`: the function's stderr.
    let h = start(
        "",
        Behaviour {
            fail_init: 1,
            init_fail: InitFail::Crash,
            ..Behaviour::default()
        },
    );
    assert_eq!(
        h.invoke("{}").await,
        Err(CallError::InitFailed(INIT_CRASH_LINE.into()))
    );

    // Never polls `next`: startup_timeout.
    let h = start(
        "startup_timeout = \"1s\"",
        Behaviour {
            fail_init: 1,
            init_fail: InitFail::Hang,
            ..Behaviour::default()
        },
    );
    let t = Instant::now();
    match h.invoke("{}").await {
        Err(CallError::InitFailed(msg)) => {
            assert!(
                msg.contains("did not reach its first next within 1s"),
                "{msg}"
            );
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(h.fake.kills(), 1, "the stuck instance was killed");
    settle().await;
    assert_eq!(h.fake.live(), 0);

    // Killed at its memory limit while initialising.
    let h = start(
        "",
        Behaviour {
            fail_init: 1,
            init_fail: InitFail::Oom,
            ..Behaviour::default()
        },
    );
    match h.invoke("{}").await {
        Err(CallError::InitFailed(msg)) => {
            assert!(
                msg.contains("ran out of memory while initialising"),
                "{msg}"
            );
            assert!(msg.contains("64 MiB"), "{msg}");
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test(start_paused = true)]
async fn stop_all_terminates_every_instance_and_waits_for_them() {
    let h = start("min_containers = 3", Behaviour::default());
    sleep(Duration::from_millis(50)).await;
    assert_eq!(h.fake.live(), 3);
    h.pool.close();
    assert_eq!(h.invoke("{}").await, Err(CallError::ShuttingDown));

    let t = Instant::now();
    h.pool.stop_all(STOP_GRACE).await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.fake.terminates(), 3);
    assert_eq!(h.fake.kills(), 0);
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty());
    // min_containers are not restarted once the pool is closed.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.fake.launches(), 3);
}

#[tokio::test(start_paused = true)]
async fn stop_all_kills_what_ignores_sigterm_after_the_grace() {
    let h = start(
        "min_containers = 2",
        Behaviour {
            ignore_terminate: true,
            ..Behaviour::default()
        },
    );
    sleep(Duration::from_millis(50)).await;
    let busy = h.call(r#"{"hang": true}"#);
    settle().await;
    assert_eq!(h.pool.status().in_flight, 1);
    h.pool.close();

    let t = Instant::now();
    h.pool.stop_all(Duration::from_secs(1)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "{took:?}"
    );
    assert_eq!(h.fake.terminates(), 2);
    assert_eq!(h.fake.kills(), 2);
    assert_eq!(h.fake.live(), 0);
    assert!(h.pool.status().instances.is_empty());
    assert!(matches!(
        outcome(busy).await,
        Err(CallError::FunctionCrashed(_))
    ));
    assert_eq!(h.fake.answered(), 0);
}

// ---------------------------------------------------------------------------------------
// Snapshots: made ready (pulled, verified) by the fetcher before the first instance.

/// A fetcher that counts its calls and answers every snapshot with `answer`.
#[derive(Debug)]
struct FakeFetcher {
    calls: AtomicUsize,
    answer: Result<std::path::PathBuf, String>,
}

impl crate::fetch::SnapshotFetcher for FakeFetcher {
    fn fetch<'a>(
        &'a self,
        name: &'a str,
    ) -> crate::fetch::BoxFuture<'a, Result<std::path::PathBuf, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.clone().map(|dir| dir.join(name));
        Box::pin(async move {
            // Verification takes a while; the pool must wait for it, not race past.
            sleep(Duration::from_millis(300)).await;
            answer
        })
    }
}

fn start_with_fetcher(manifest: &str, fetcher: Arc<FakeFetcher>) -> Harness {
    start_full(manifest, Behaviour::default(), Some(fetcher))
}

/// A snapshot already in the local cache is still handed to the fetcher (which verifies
/// it) before the first instance starts, once for every snapshot, whatever the number
/// of instances.
#[tokio::test(start_paused = true)]
async fn local_snapshots_are_made_ready_once_before_the_first_instance() {
    let fetcher = Arc::new(FakeFetcher {
        calls: AtomicUsize::new(0),
        answer: Ok("/verified".into()),
    });
    let h = start_with_fetcher(
        "snapshot = \"m\"\nsnapshots = { llm = \"l\" }\nmax_containers = 3\nmin_containers = 2",
        Arc::clone(&fetcher),
    );
    let calls: Vec<_> = (0..3).map(|_| h.call("{\"sleep_ms\": 100}")).collect();
    for c in calls {
        assert!(echoed(&outcome(c).await, "{\"sleep_ms\": 100}"));
    }
    assert!(h.fake.launches() >= 2);
    assert_eq!(
        fetcher.calls.load(Ordering::SeqCst),
        2,
        "m and l, once each"
    );
}

/// A snapshot the fetcher refuses (a digest mismatch) starts no instance: every call
/// gets the init failure with the fetcher's message, which names the file.
#[tokio::test(start_paused = true)]
async fn a_snapshot_that_fails_verification_fails_calls_with_its_message() {
    let why = "snapshot \"m\" failed verification and is not served: digest mismatch for /c/model.safetensors";
    let fetcher = Arc::new(FakeFetcher {
        calls: AtomicUsize::new(0),
        answer: Err(why.into()),
    });
    let h = start_with_fetcher("snapshot = \"m\"", fetcher);
    for _ in 0..2 {
        assert_eq!(h.invoke("{}").await, Err(CallError::InitFailed(why.into())));
    }
    assert_eq!(
        h.fake.launches(),
        0,
        "no instance ran on the corrupt snapshot"
    );
}
