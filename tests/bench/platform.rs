//! Platform benchmarks: a real `thaw serve` with real function processes, driven over HTTP
//! from this process on the same 2-core machine (client and server share the cores).

use std::time::{Duration, Instant};

use thaw_tests::Serve;

/// Zero -> first response of embed through its URL, `runs` times.
pub fn embed_cold_starts(runs: usize) -> Vec<f64> {
    let s = Serve::start(
        "[app]\nname = \"bench\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\nidle_timeout = \"50ms\"\n",
    );
    let mut out = Vec::new();
    for _ in 0..runs {
        s.wait_until(Duration::from_secs(10), |s| {
            s.state("embed")["instances"]
                .as_array()
                .is_some_and(Vec::is_empty)
        });
        let t = Instant::now();
        let r = s.post(
            "/fn/embed/",
            br#"{"text": "How do I reset my password?"}"#,
            &[("content-type", "application/json")],
        );
        out.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            r.status,
            200,
            "cold call failed: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    out
}

/// Sequential warm no-op round trips through the Invoke API, in ms.
pub fn warm_latency(calls: usize) -> Vec<f64> {
    let s = Serve::start(
        "[app]\nname = \"bench\"\n[function.noop]\nbinary = \"thaw-fault\"\nmax_containers = 1\n",
    );
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("{}/2015-03-31/functions/noop/invocations", s.base);
    for _ in 0..200 {
        let _ = agent.post(&url).send_string("{}");
    }
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let r = agent.post(&url).send_string("{}").map(|r| r.into_string());
        out.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(r.is_ok());
    }
    out
}

/// No-op calls per second with `instances` instances of `concurrency`, from `clients`
/// keep-alive client threads, for `secs`.
pub fn noop_throughput(instances: u32, concurrency: u32, clients: usize, secs: f64) -> f64 {
    let manifest = format!(
        "[app]\nname = \"bench\"\n[function.noop]\nbinary = \"thaw-fault\"\nmin_containers = {instances}\nmax_containers = {instances}\nconcurrency = {concurrency}\n"
    );
    let s = Serve::start(&manifest);
    s.wait_until(Duration::from_secs(10), |s| {
        s.state("noop")["idle"] == instances
    });
    let url = format!("{}/2015-03-31/functions/noop/invocations", s.base);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let total: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        if agent.post(&url).send_string("{}").is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / secs
}
