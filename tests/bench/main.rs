//! `make bench`: thaw's embed path against sentence-transformers, measured in one run on
//! one machine, printed as ratios. Nothing here is asserted: timing never decides a test.
//!
//! 1. Cold start: exec of the real embed binary under the real Runtime API, to its first
//!    embedding; median over 12 runs, with the function's own phase breakdown.
//! 2. Warm encoders on one thread (`encoder`): thaw f32 and INT8 against
//!    sentence-transformers, ONNX Runtime and torch INT8 on the same inputs, with
//!    GFLOP/s against a matmul peak measured on the same core.
//!
//! Then the platform, the sandbox, warm templates against exec (`templates`), durable calls, the LLM, the generate function against
//! candle's own decode loop, functions, S3 snapshots, and
//! serving under concurrent load against infinity-emb (`serving`); `thaw-bench <part>`
//! runs one part only.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_runtime::runtime_api::{new_request_id, InstanceApi, Invocation, Lifecycle, Outcome};
use thaw_tests::{binary, repo_root, snapshot_dir};
use tokio::io::AsyncBufReadExt;

mod encoder;
mod generate;
mod platform;
mod serving;
mod templates;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COLD_RUNS: usize = 12;
pub(crate) const PARAGRAPH: &str = "Serverless platforms start a container when a request arrives and stop it after a \
period of idleness. The time between the request and the first useful work is the cold start, and for \
machine learning functions it is dominated by loading model weights from storage into memory. ";

fn main() -> anyhow_free::Result {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    // `thaw-bench platform` or `thaw-bench durable` runs one part only.
    match std::env::args().nth(1).as_deref() {
        Some("sandbox") => {
            report_sandbox();
            return Ok(());
        }
        Some("platform") => {
            report_platform();
            report_durable();
            return Ok(());
        }
        Some("durable") => {
            report_durable();
            return Ok(());
        }
        Some("llm") => {
            report_llm();
            return Ok(());
        }
        Some("generate") => {
            generate::report();
            return Ok(());
        }
        Some("s3") => {
            report_s3()?;
            return Ok(());
        }
        Some("serving") => {
            serving::report()?;
            return Ok(());
        }
        Some("cold") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            report_cold(&rt.block_on(cold_starts())?, None);
            return Ok(());
        }
        Some("encoder") => {
            report_encoders(None)?;
            return Ok(());
        }
        Some("templates") => {
            templates::report();
            return Ok(());
        }
        Some("functions") => {
            rt_functions()?;
            return Ok(());
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cold = rt.block_on(cold_starts())?;
    report_encoders(Some(&cold))?;
    report_platform();
    report_sandbox();
    templates::report();
    report_durable();
    report_llm();
    generate::report();
    rt_functions()?;
    report_s3()?;
    serving::report()?;
    Ok(())
}

fn rt_functions() -> anyhow_free::Result {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(report_functions());
    let rate = platform::analytics_map(10_000);
    println!("analytics: one streaming map of 10,000 generated sessions, 2 instances x concurrency 8: {rate:.0} items/s");
    Ok(())
}

async fn invoke(h: &thaw_tests::Harness, body: Value) -> Value {
    thaw_tests::ok_json(h.invoke(&body).await)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// rerank over 100 passages, analyze with and without its question, analytics per call:
/// each through its real binary and thaw's Runtime API, warm.
async fn report_functions() {
    println!("== functions (warm, one instance, one core) ==");
    let minilm = snapshot_dir("minilm-l6");
    let rerank = thaw_tests::Harness::start(&binary("rerank"), Some(&minilm), &[]).await;
    let passages: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "Passage {i}: {}",
                PARAGRAPH.split(". ").nth(i % 3).unwrap_or(PARAGRAPH)
            )
        })
        .collect();
    let body = json!({"query": "What dominates a cold start for machine learning functions?", "documents": passages, "top_k": 5});
    let _ = invoke(&rerank, body.clone()).await;
    let mut lat = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let _ = invoke(&rerank, body.clone()).await;
        lat.push(ms_since(t));
    }
    println!(
        "rerank, bi-encoder (minilm-l6), 1 query x 100 passages of ~35 tokens: p50 {:.1} ms (min {:.1})",
        median(&lat),
        lat.iter().copied().fold(f64::MAX, f64::min)
    );
    let tiny = snapshot_dir("tiny-cross-encoder");
    let cross = thaw_tests::Harness::start(&binary("rerank"), Some(&tiny), &[]).await;
    let _ = invoke(&cross, body.clone()).await;
    let mut lat = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let _ = invoke(&cross, body.clone()).await;
        lat.push(ms_since(t));
    }
    println!(
        "rerank, cross-encoder path (the 2-layer, 32-wide test model), same 100 passages: p50 {:.1} ms",
        median(&lat)
    );

    let env = [
        ("THAW_SNAPSHOT_DIR_ENCODER", minilm.display().to_string()),
        (
            "THAW_SNAPSHOT_DIR_WORDS",
            snapshot_dir("wordfreq-en").display().to_string(),
        ),
        (
            "THAW_SNAPSHOT_DIR_LLM",
            snapshot_dir("smollm2-135m").display().to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Instant::now();
    let analyze = thaw_tests::Harness::start(&binary("analyze"), None, &env).await;
    println!(
        "analyze: exec -> first next (MiniLM + 321k-word table + SmolLM2 Q8_0): {:.0} ms",
        ms_since(t)
    );
    let set: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/analyze-labelled.json"))
            .unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    let mut requests = Vec::new();
    for topic in set["topics"].as_array().into_iter().flatten() {
        for v in ["clear", "hedged", "jargon"] {
            requests.push(json!({"explanation": topic[v], "topic": topic["topic"], "key_concepts": topic["key_concepts"]}));
        }
    }
    for ask in [false, true] {
        let mut lat = Vec::new();
        let mut model = 0;
        for r in &requests {
            let mut r = r.clone();
            r["ask"] = json!(ask);
            let t = Instant::now();
            let reply = invoke(&analyze, r).await;
            lat.push(ms_since(t));
            if reply["question_source"] == "model" {
                model += 1;
            }
        }
        println!(
            "analyze {} the question: p50 {:.1} ms, p95 {:.1} ms over {} explanations{}",
            if ask { "with" } else { "without" },
            median(&lat),
            percentile(&lat, 0.95),
            lat.len(),
            if ask {
                format!(" ({model} questions from the model)")
            } else {
                String::new()
            }
        );
    }

    let analytics = thaw_tests::Harness::start(&binary("analytics"), None, &[]).await;
    let session = json!({"turns": (0..6).map(|t| json!({"analysis": {"confidence_score": 0.1 * t as f64, "clarity_score": 0.5, "knowledge_gaps": ["a", "b"]}})).collect::<Vec<_>>()});
    let t = Instant::now();
    let n = 2000;
    for _ in 0..n {
        let _ = invoke(&analytics, session.clone()).await;
    }
    println!(
        "analytics, sequential calls through the Runtime API (6-turn sessions): {:.0} items/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
}

/// No anyhow in a test crate's bin: a boxed error is enough.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}

#[derive(Debug, Default)]
struct Cold {
    total_ms: Vec<f64>,
    ready_ms: Vec<f64>,
    first_ms: Vec<f64>,
    phases: Vec<Value>,
}

async fn cold_starts() -> Result<Cold, Box<dyn std::error::Error>> {
    let snapshot = snapshot_dir("minilm-l6");
    let mut cold = Cold::default();
    for _ in 0..COLD_RUNS {
        let api = InstanceApi::on_host_loopback().await?;
        let addr = api.addr().ok_or("runtime api has no address")?;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(binary("embed"))
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "embed")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("THAW_SNAPSHOT_DIR", &snapshot)
            .env("RUST_LOG", "thaw::startup=info,warn")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let payload = json!({"text": "How do I reset my password?"})
            .to_string()
            .into();
        api.submit(Invocation {
            id: new_request_id(),
            payload,
            timeout: Duration::from_secs(30),
            limit: thaw_runtime::runtime_api::MAX_RESPONSE,
            reply,
            taken: None,
            stream: None,
        })
        .await
        .map_err(|_| "submit failed")?;
        let mut lifecycle = api.lifecycle();
        lifecycle
            .wait_for(|l| *l != Lifecycle::Initialising)
            .await?;
        let ready = t0.elapsed();
        let outcome = rx.await??;
        let total = t0.elapsed();
        if let Outcome::Error(d) = outcome {
            return Err(format!("cold start failed: {d:?}").into());
        }
        child.start_kill()?;
        let _ = child.wait().await;
        if let Some(stderr) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Some(line) = lines.next_line().await? {
                if line.contains("model loaded") {
                    cold.phases.push(parse_fields(&line));
                }
            }
        }
        cold.total_ms.push(ms(total));
        cold.ready_ms.push(ms(ready));
        cold.first_ms.push(ms(total - ready));
    }
    Ok(cold)
}

/// `key=value` pairs of a tracing fmt line.
fn parse_fields(line: &str) -> Value {
    let mut map = serde_json::Map::new();
    for token in line.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            if let Ok(n) = v.parse::<f64>() {
                map.insert(k.to_owned(), json!(n));
            }
        }
    }
    Value::Object(map)
}

/// Warm encoders against their peers, and (with `cold`) the cold start against
/// sentence-transformers', whose cold start the same peer process measures.
fn report_encoders(cold: Option<&Cold>) -> anyhow_free::Result {
    let inputs = encoder::Inputs::new();
    let f32w = encoder::thaw("minilm-l6", &inputs)?;
    let int8 = encoder::thaw("minilm-l6-int8", &inputs)?;
    let flops = encoder::passage_flops(&inputs)?;
    let peers = encoder::peers(&inputs);
    if let Some(cold) = cold {
        report_cold(cold, peers.as_ref());
    }
    encoder::report(&f32w, &int8, peers.as_ref(), flops);
    Ok(())
}

fn report_cold(cold: &Cold, peer: Option<&Value>) {
    let phase = |k: &str| {
        median(
            &cold
                .phases
                .iter()
                .filter_map(|p| p[k].as_f64())
                .map(|us| us / 1e3)
                .collect::<Vec<_>>(),
        )
    };
    println!("== thaw embed cold start (all-MiniLM-L6-v2, f32) ==");
    println!("cold start, exec -> first embedding: median {:.1} ms over {COLD_RUNS} runs (min {:.1}, max {:.1})",
        median(&cold.total_ms), min(&cold.total_ms), max(&cold.total_ms));
    println!(
        "  exec -> first next (init):         median {:.1} ms",
        median(&cold.ready_ms)
    );
    println!(
        "    tokenizer parse (own thread):    median {:.1} ms",
        phase("tokenizer_us")
    );
    println!(
        "    restore + weights pack:          median {:.1} ms",
        phase("weights_us")
    );
    println!(
        "    model load wall (overlapped):    median {:.1} ms",
        phase("load_us")
    );
    println!(
        "  first next -> first embedding:     median {:.1} ms",
        median(&cold.first_ms)
    );
    match peer.and_then(|p| p["cold_ms"].as_f64()) {
        Some(peer_ms) => println!(
            "sentence-transformers cold start, exec -> first embedding: {peer_ms:.0} ms; thaw is {:.0}x faster",
            peer_ms / median(&cold.total_ms)
        ),
        None => println!("sentence-transformers cold start: not measured"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report_platform() {
    println!("== thaw serve (platform) ==");
    let cold = platform::embed_cold_starts(20, &[]);
    println!(
        "embed zero -> first response via URL: median {:.1} ms, p95 {:.1} ms over {} cold starts",
        median(&cold),
        percentile(&cold, 0.95),
        cold.len()
    );
    let warm = platform::warm_latency(2000, &[]);
    // The in-process handler of the no-op function costs microseconds; the round trip is
    // the platform's overhead: HTTP front, queue, Runtime API hop and back.
    println!(
        "warm no-op round trip via Invoke API (platform overhead): p50 {:.3} ms, p99 {:.3} ms",
        percentile(&warm, 0.5),
        percentile(&warm, 0.99)
    );
    for (instances, concurrency, clients) in [(1, 1, 4), (2, 1, 4), (1, 4, 8)] {
        let rate = platform::noop_throughput(instances, concurrency, clients, 3.0);
        println!("no-op invocations/s, {instances} instance(s) x concurrency {concurrency}, {clients} clients: {rate:.0}/s");
    }
}

/// What the sandbox costs: the same cold start and warm round trip with and without it,
/// alternating rounds so drift on the machine hits both alike.
fn report_sandbox() {
    println!("== the instance sandbox: on vs --no-sandbox ==");
    let (mut cold_on, mut cold_off, mut warm_on, mut warm_off) = (vec![], vec![], vec![], vec![]);
    // Cold starts here are noisy (an occasional one takes 200+ ms in either mode), so
    // many of them, in short alternating rounds.
    for _ in 0..6 {
        cold_on.extend(platform::embed_cold_starts(10, &[]));
        cold_off.extend(platform::embed_cold_starts(10, &["--no-sandbox"]));
        warm_on.extend(platform::warm_latency(1000, &[]));
        warm_off.extend(platform::warm_latency(1000, &["--no-sandbox"]));
    }
    let (c_on, c_off) = (median(&cold_on), median(&cold_off));
    let (q_on, q_off) = (percentile(&cold_on, 0.25), percentile(&cold_off, 0.25));
    println!(
        "embed cold start via URL: sandbox {c_on:.1} ms, none {c_off:.1} ms median over {} each: {:+.1} ms (target <= 5 ms); lower quartile {q_on:.1} vs {q_off:.1} ms: {:+.1} ms",
        cold_on.len(),
        c_on - c_off,
        q_on - q_off
    );
    let (w_on, w_off) = (percentile(&warm_on, 0.5), percentile(&warm_off, 0.5));
    println!(
        "warm no-op round trip p50: sandbox {w_on:.3} ms, none {w_off:.3} ms over {} each: {:+.3} ms (target <= 0.05 ms); p99 {:.3} vs {:.3} ms",
        warm_on.len(),
        w_on - w_off,
        percentile(&warm_on, 0.99),
        percentile(&warm_off, 0.99)
    );
}

fn report_durable() {
    println!("== durable calls (SQLite WAL, synchronous=FULL, group commit) ==");
    for concurrency in [1, 4] {
        let d = platform::durable_throughput(concurrency, 10_000, 4, 20_000, 3.0);
        println!("-- 2 no-op instances x concurrency {concurrency}");
        println!(
            "spawn, 4 clients, 10,000 calls: {:.0} committed calls/s ({:.2}x sync invokes), {:.0} calls/s spawned to done ({:.2}x)",
            d.spawn_committed_per_s,
            d.spawn_committed_per_s / d.sync_per_s,
            d.spawn_done_per_s,
            d.spawn_done_per_s / d.sync_per_s
        );
        println!(
            "map, 20,000 no-op items, one stream: {:.0} items/s ({:.2}x sync invokes)",
            d.map_items_per_s,
            d.map_items_per_s / d.sync_per_s
        );
        println!(
            "peer in the same run: synchronous Invoke API, 4 clients, same instances: {:.0} calls/s",
            d.sync_per_s
        );
    }
}

/// SmolLM2-135M (Q8_0 snapshot) decode speed on one core, greedy and sampled, and the
/// same model from the shipped Q4_1 file for comparison.
fn report_llm() {
    println!("== SmolLM2-135M-Instruct, one core (RAYON_NUM_THREADS=1) ==");
    let device = candle_core::Device::Cpu;
    let t = std::time::Instant::now();
    let mut model = match thaw_models::ChatModel::restore(&snapshot_dir("smollm2-135m"), &device) {
        Ok(m) => m,
        Err(e) => {
            println!("cannot load the snapshot: {e}");
            return;
        }
    };
    println!(
        "restore (Q8_0 snapshot, mmap + tensors): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let prompt = match model.chat_prompt(
        "You are a Socratic tutor. Ask the learner exactly one short question.",
        "Topic: photosynthesis. The learner explained: \"Plants make food from sunlight.\" They did not mention chlorophyll. Ask one question about chlorophyll.",
    ) {
        Ok(p) => p,
        Err(e) => {
            println!("cannot render the chat prompt: {e}");
            return;
        }
    };
    for (label, temperature) in [("greedy", 0.0), ("sampled t=0.3", 0.3)] {
        let mut rates = Vec::new();
        let mut last = None;
        for seed in 0..5u64 {
            let opts = thaw_models::GenerateOptions {
                max_new_tokens: 48,
                seed,
                temperature,
                budget: std::time::Duration::from_secs(60),
                ..Default::default()
            };
            match model.generate(&prompt, &opts) {
                Ok(g) => {
                    rates.push(g.new_tokens as f64 / g.decode.as_secs_f64().max(1e-9));
                    last = Some(g);
                }
                Err(e) => println!("generation failed: {e}"),
            }
        }
        if let Some(g) = last {
            println!(
                "{label}: decode {:.1} tok/s median over {} runs; prompt {} tokens prefilled in {:.0} ms; last: {:?} ({} tokens, {:?})",
                median(&rates),
                rates.len(),
                g.prompt_tokens,
                g.prefill.as_secs_f64() * 1e3,
                g.text,
                g.new_tokens,
                g.stop
            );
        }
    }
}

/// S3 snapshot transport against a real S3 server on loopback (s3s-fs): one plain GET per
/// file against parallel ranged GETs, and embed's cold start from S3 with an empty cache
/// against a cold start from the local cache, in the same run.
fn report_s3() -> anyhow_free::Result {
    use thaw_snapshot::s3::{PullOptions, S3Config, S3Store};
    println!("== snapshots over S3 (s3s-fs 0.14.1 on loopback) ==");
    let s3 = thaw_tests::S3Server::start("snapshots");
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let config = S3Config {
        url: "s3://snapshots/thaw".into(),
        endpoint_url: Some(s3.endpoint.clone()),
        force_path_style: true,
        region: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = rt.block_on(S3Store::connect(&config))?;
    for name in ["minilm-l6", "smollm2-135m"] {
        let t = rt.block_on(store.push(&snapshot_dir(name)))?;
        println!(
            "push {name}: {:.1} MB in {:.2} s ({:.0} MB/s)",
            t.bytes as f64 / 1e6,
            t.elapsed.as_secs_f64(),
            t.bytes as f64 / 1e6 / t.elapsed.as_secs_f64()
        );
    }
    let mut rates = Vec::new();
    for (label, opts) in [
        (
            "one GET per file",
            PullOptions {
                parallel: 1,
                part_size: u64::MAX,
            },
        ),
        ("ranged GETs, 8 x 8 MiB in flight", PullOptions::default()),
    ] {
        let mut mbps = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let cache = thaw_snapshot::cache::SnapshotCache::open(dir.path())?;
            let (_, t) = rt.block_on(store.pull("smollm2-135m", &cache, opts))?;
            mbps.push(t.bytes as f64 / 1e6 / t.elapsed.as_secs_f64());
        }
        println!(
            "pull smollm2-135m (146 MB, verified), {label}: median {:.0} MB/s over 3",
            median(&mbps)
        );
        rates.push(median(&mbps));
    }
    println!("ranged / single GET: {:.2}x", rates[1] / rates[0]);

    let manifest =
        "[app]\nname = \"bench\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n";
    let first_call = |s: &thaw_tests::Serve| {
        let t = Instant::now();
        let r = s.post(
            "/fn/embed/",
            br#"{"text": "How do I reset my password?"}"#,
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        ms_since(t)
    };
    let (mut from_s3, mut local) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let empty = tempfile::tempdir()?;
        let cache = empty.path().join("snapshots");
        let s = thaw_tests::Serve::start_with_env(
            manifest,
            &[
                "--snapshots",
                cache.to_str().unwrap_or_default(),
                "--snapshot-store",
                "s3://snapshots/thaw",
                "--s3-endpoint-url",
                &s3.endpoint,
                "--s3-force-path-style",
            ],
            &s3.env(),
        );
        from_s3.push(first_call(&s));
        let s = thaw_tests::Serve::start(manifest);
        local.push(first_call(&s));
    }
    println!(
        "embed cold start, zero -> first URL response: empty cache, snapshot pulled from S3: median {:.0} ms; local cache: median {:.1} ms ({:.1}x)",
        median(&from_s3),
        median(&local),
        median(&from_s3) / median(&local)
    );
    Ok(())
}
