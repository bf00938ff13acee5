//! Platform benchmarks: a real `thaw serve` with real function processes, driven over HTTP
//! from this process on the same 2-core machine (client and server share the cores).

use std::time::{Duration, Instant};

use thaw_tests::Serve;

/// Zero -> first response of embed through its URL, `runs` times; `args` go to
/// `thaw serve` (`--no-sandbox`).
pub fn embed_cold_starts(runs: usize, args: &[&str]) -> Vec<f64> {
    let s = Serve::start_with_args(
        "[app]\nname = \"bench\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\nidle_timeout = \"50ms\"\n",
        args,
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

/// Sequential warm no-op round trips through the Invoke API, in ms; `args` go to
/// `thaw serve` (`--no-sandbox`).
pub fn warm_latency(calls: usize, args: &[&str]) -> Vec<f64> {
    let s = Serve::start_with_args(
        "[app]\nname = \"bench\"\n[function.noop]\nbinary = \"thaw-fault\"\nmax_containers = 1\n",
        args,
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

/// Durable-call throughput with a no-op function on 2 instances of `concurrency`.
#[derive(Debug)]
pub struct Durable {
    /// Spawns acknowledged (each committed to SQLite before its 202) per second.
    pub spawn_committed_per_s: f64,
    /// Spawned calls run to completion per second, from the first spawn to the last finish.
    pub spawn_done_per_s: f64,
    /// Items per second through one streaming map, input to last result line.
    pub map_items_per_s: f64,
    /// Synchronous Invoke API calls per second on the same function and instances: the peer.
    pub sync_per_s: f64,
}

/// Spawns `spawns` calls from `clients` threads, then maps `items` inputs, then runs
/// synchronous calls for `secs`, all on one thaw with the same two no-op instances.
pub fn durable_throughput(
    concurrency: u32,
    spawns: usize,
    clients: usize,
    items: usize,
    secs: f64,
) -> Durable {
    let s = Serve::start(&format!(
        // The backlog bound (default 1,000 queued calls, then 429) is raised so the whole
        // burst is admitted: this measures commit throughput, not admission.
        "[app]\nname = \"bench\"\n[function.noop]\nbinary = \"thaw-fault\"\nmin_containers = 2\nmax_containers = 2\nconcurrency = {concurrency}\nmax_queue = 100000\n",
    ));
    s.wait_until(Duration::from_secs(10), |s| s.state("noop")["idle"] == 2);
    let url = format!("{}/v1/functions/noop/spawn", s.base);
    let t = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let url = url.clone();
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                for _ in (c..spawns).step_by(clients) {
                    let r = agent.post(&url).send_string("{}");
                    assert!(r.is_ok(), "spawn failed: {r:?}");
                }
            });
        }
    });
    let committed = t.elapsed().as_secs_f64();
    let drained = |s: &Serve| {
        let all = s.get("/v1/functions").json();
        let d = &all["functions"][0]["durable"];
        d["queued"] == 0 && d["running"] == 0
    };
    s.wait_until(Duration::from_secs(300), drained);
    let done = t.elapsed().as_secs_f64();

    let mut body = String::with_capacity(items * 3);
    for _ in 0..items {
        body.push_str("{}\n");
    }
    let t = Instant::now();
    let r = s.post("/v1/functions/noop/map", body.as_bytes(), &[]);
    let map_secs = t.elapsed().as_secs_f64();
    let lines = r.body.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines, items, "map returned {lines} of {items} lines");

    let invoke = format!("{}/2015-03-31/functions/noop/invocations", s.base);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let sync: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let invoke = invoke.clone();
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        if agent.post(&invoke).send_string("{}").is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    Durable {
        spawn_committed_per_s: spawns as f64 / committed,
        spawn_done_per_s: spawns as f64 / done,
        map_items_per_s: items as f64 / map_secs,
        sync_per_s: sync as f64 / secs,
    }
}

/// Items per second of one streaming map of `n` generated sessions over analytics.
pub fn analytics_map(n: usize) -> f64 {
    let s = Serve::start(
        "[app]\nname = \"bench\"\n[function.analytics]\nbinary = \"analytics\"\nmin_containers = 2\nmax_containers = 2\nconcurrency = 8\n",
    );
    s.wait_until(Duration::from_secs(10), |s| {
        s.state("analytics")["idle"] == 2
    });
    let mut body = String::new();
    for i in 0..n {
        let turns: Vec<serde_json::Value> = (0..(i % 7))
            .map(|t| serde_json::json!({"analysis": {"confidence_score": (t as f64 / 10.0), "clarity_score": 0.5, "knowledge_gaps": ["recursion"]}}))
            .collect();
        body.push_str(
            &serde_json::json!({"session_id": format!("s{i}"), "turns": turns}).to_string(),
        );
        body.push('\n');
    }
    let t = Instant::now();
    let r = s.post("/v1/functions/analytics/map", body.as_bytes(), &[]);
    let secs = t.elapsed().as_secs_f64();
    let lines = r.body.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines, n, "map returned {lines} of {n} lines");
    n as f64 / secs
}
