//! The edge under hostile load: 500 slowloris connections and 2,000 long-polls on queued
//! and running calls at once, while a normal embed call is made. The call must answer,
//! and every slow connection must be closed by the header timeout; the call's latency is
//! printed, not asserted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use thaw_tests::Serve;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SLOWLORIS: usize = 500;
const LONG_POLLS: usize = 2000;
/// Durable calls the long-polls wait on: one running, the rest queued behind it.
const CALLS: usize = 200;

#[derive(Debug, Default)]
struct Counters {
    /// Slow connections open now.
    slow_open: AtomicUsize,
    /// Slow connections the server closed.
    slow_closed: AtomicUsize,
    /// Long-polls whose request has been sent.
    polls_waiting: AtomicUsize,
    /// Long-polls answered (they wait up to 60 s, so few should be).
    polls_answered: AtomicUsize,
}

/// One slowloris client: a head that never ends, a byte a second, reconnecting each time
/// the server closes it, until `stop`.
async fn slowloris(addr: String, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut rd, mut wr) = stream.into_split();
        if wr
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        c.slow_open.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut buf = [0u8; 256];
        let closed = loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {} // hyper's 408, then the close
                },
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        break false;
                    }
                    if wr.write_all(b"X").await.is_err() {
                        break true;
                    }
                }
            }
        };
        c.slow_open.fetch_sub(1, Ordering::Relaxed);
        if closed {
            c.slow_closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One long-poll on `id`, held until it is answered (or the load runtime is dropped).
async fn long_poll(addr: String, id: String, c: Arc<Counters>) {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return;
    };
    let req = format!("GET /v1/calls/{id}?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    c.polls_waiting.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 1024];
    if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
        c.polls_answered.fetch_add(1, Ordering::Relaxed);
    }
    c.polls_waiting.fetch_sub(1, Ordering::Relaxed);
}

#[test]
fn a_call_answers_under_slowloris_and_long_polls() {
    // Each connection costs this process a descriptor, and thaw one: raise ours (thaw
    // raises its own), and scale down where the hard limit does not allow the full load.
    let limit = thaw_tests::raise_fd_limit();
    let budget = usize::try_from(limit.saturating_sub(512)).unwrap_or(0);
    let scale = |n: usize| n.min(budget * n / (SLOWLORIS + LONG_POLLS));
    let (slow_n, polls_n) = (scale(SLOWLORIS), scale(LONG_POLLS));
    println!("fd limit {limit}: {slow_n} slowloris connections, {polls_n} long-polls");
    let s = Serve::start_with_args(
        "[app]\nname = \"test\"\n\n\
         [function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\nmin_containers = 1\n\n\
         [function.slow]\nbinary = \"thaw-fault\"\nmax_containers = 1\nconcurrency = 1\n\
         timeout = \"10m\"\nmax_queue = 10000\n",
        &["--header-timeout", "2s"],
    );
    let embed = |text: &str| {
        s.post(
            "/fn/embed/",
            json!({"texts": [text]}).to_string().as_bytes(),
            &[("content-type", "application/json")],
        )
    };
    // Warm: the instance has loaded its model.
    assert!(s.wait_until(Duration::from_secs(60), |_| embed("warm up").status == 200));
    let quiet = Instant::now();
    assert_eq!(embed("A man is eating food.").status, 200);
    let quiet = quiet.elapsed();
    // Calls to wait on: the first runs (and hangs), the rest queue behind it.
    let ids: Vec<String> = (0..CALLS)
        .map(|_| {
            let r = s.post(
                "/v1/functions/slow/spawn",
                br#"{"action": "hang"}"#,
                &[("content-type", "application/json")],
            );
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            r.json()["call_id"].as_str().expect("call_id").to_owned()
        })
        .collect();

    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let addr = s.base.trim_start_matches("http://").to_owned();
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..polls_n {
        load.spawn(long_poll(
            addr.clone(),
            ids[i % ids.len()].clone(),
            Arc::clone(&counters),
        ));
    }
    for _ in 0..slow_n {
        load.spawn(slowloris(
            addr.clone(),
            Arc::clone(&counters),
            Arc::clone(&stop),
        ));
    }
    let loaded = s.wait_until(Duration::from_secs(60), |_| {
        counters.polls_waiting.load(Ordering::Relaxed) >= polls_n
            && counters.slow_open.load(Ordering::Relaxed) >= slow_n * 9 / 10
    });
    println!(
        "load: {} long-polls waiting, {} slow connections open",
        counters.polls_waiting.load(Ordering::Relaxed),
        counters.slow_open.load(Ordering::Relaxed)
    );
    assert!(loaded, "the load did not build up: {counters:?}");

    // The call, under load: a new connection each time (as a fresh client would), spread
    // over several header-timeout cycles, when the slow clients reconnect together.
    let mut latencies = Vec::new();
    let (cpu_before, wall) = (s.cpu_time(), Instant::now());
    for i in 0..20 {
        let t = Instant::now();
        let r = embed(&format!("A man is eating food, take {i}."));
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["dims"], 384);
        std::thread::sleep(Duration::from_millis(250));
    }
    let thaw_cpu = s.cpu_time().saturating_sub(cpu_before);
    println!(
        "thaw used {thaw_cpu:?} of CPU in {:?} of calls under load",
        wall.elapsed()
    );
    let under = format!(
        "{} slowloris + {} long-polls",
        counters.slow_open.load(Ordering::Relaxed),
        counters.polls_waiting.load(Ordering::Relaxed)
    );
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "embed call latency: quiet {quiet:?}; under {under}: median {:?}, p90 {:?}, max {:?}",
        pick(0.5),
        pick(0.9),
        pick(1.0),
    );

    // Every slow connection is closed by the header timeout (and reconnects).
    let all_closed = s.wait_until(Duration::from_secs(60), |_| {
        counters.slow_closed.load(Ordering::Relaxed) >= slow_n
    });
    println!("after: {counters:?}");
    assert!(all_closed, "slow connections were held open: {counters:?}");
    // The long-polls are still waiting: the header timeout does not cut a request that
    // has sent its head.
    assert!(
        counters.polls_answered.load(Ordering::Relaxed) < polls_n / 10,
        "long-polls were cut short: {counters:?}"
    );
    stop.store(true, Ordering::Relaxed);
    load.shutdown_timeout(Duration::from_secs(5));
    for id in &ids {
        let _ = s.delete(&format!("/v1/calls/{id}"));
    }
}
