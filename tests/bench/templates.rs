//! `thaw-bench templates`: warm templates against exec, in one run, on a real
//! `thaw serve` with the sandbox on and the real embed function (MiniLM-L6).
//!
//! - **Cold start through the URL:** zero instances → the first response, over ≥ 20
//!   runs. The function's `idle_timeout` is 1 s: the bench waits until the instance has
//!   gone, then calls at once, while a template (if any) is still warm, as it is for a
//!   function whose instances come and go under traffic. A template stops one
//!   `idle_timeout` after the last instance; the first cold start after that pays the
//!   template's own start, reported separately.
//! - **Scale-up decision → first `next`:** thaw's own `thaw_cold_start_seconds`, read
//!   per cold start as the change in its sum.
//! - **Memory:** PSS of every process of the function, each counted once (the
//!   template, the spare fork it keeps ready, and each instance's supervisor or
//!   bubblewrap monitor and everything under it) with 1, 2 and 4 warm instances, each of
//!   which has served calls.

use std::time::{Duration, Instant};

use thaw_tests::Serve;

const COLD_RUNS: usize = 20;

fn manifest(template: bool, extra: &str) -> String {
    format!(
        "[app]\nname = \"bench\"\n[function.embed]\nbinary = \"embed\"\nsnapshot = \"minilm-l6\"\n\
         template = {template}\n{extra}"
    )
}

fn call(s: &Serve, text: &str) {
    let r = s.post(
        "/fn/embed/",
        serde_json::json!({"text": text}).to_string().as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `thaw_cold_start_seconds_sum` for embed.
fn cold_start_sum(s: &Serve) -> f64 {
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    metrics
        .lines()
        .find(|l| l.starts_with("thaw_cold_start_seconds_sum{function=\"embed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn no_instances(s: &Serve) -> bool {
    s.state("embed")["instances"]
        .as_array()
        .is_some_and(Vec::is_empty)
}

/// Cold starts through the URL and scale-up → first `next`, both in ms.
struct Cold {
    url: Vec<f64>,
    first_next: Vec<f64>,
    /// With no template running either (the first call, and after a full idle).
    from_nothing_url: Vec<f64>,
}

fn cold_starts(template: bool) -> Cold {
    let s = Serve::start(&manifest(template, "idle_timeout = \"1s\"\n"));
    let mut cold = Cold {
        url: Vec::new(),
        first_next: Vec::new(),
        from_nothing_url: Vec::new(),
    };
    for run in 0..=COLD_RUNS {
        s.wait_until(Duration::from_secs(10), no_instances);
        let before = cold_start_sum(&s);
        let t = Instant::now();
        call(&s, "How do I reset my password?");
        let url = t.elapsed().as_secs_f64() * 1e3;
        let first_next = (cold_start_sum(&s) - before) * 1e3;
        if run == 0 {
            cold.from_nothing_url.push(url);
        } else {
            cold.url.push(url);
            cold.first_next.push(first_next);
        }
    }
    if template {
        // Twice more with the template stopped too: the cost of a start from nothing.
        for _ in 0..2 {
            s.wait_until(Duration::from_secs(10), |s| {
                no_instances(s) && s.state("embed")["template"]["state"] == "stopped"
            });
            let t = Instant::now();
            call(&s, "How do I reset my password?");
            cold.from_nothing_url.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    cold
}

/// Proportional set size of `roots` and all their descendants, each process counted
/// once (a fork's supervisor is both an instance's pid and the template's child), bytes.
fn tree_pss(roots: &[u32]) -> u64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent is the second field after the parenthesised command.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    total
}

/// PSS of the whole function with `n` warm instances that have each served calls, MB.
fn function_pss(template: bool, n: usize) -> f64 {
    let s = Serve::start(&manifest(
        template,
        &format!("min_containers = {n}\nmax_containers = {n}\nidle_timeout = \"10m\"\n"),
    ));
    let ready = s.wait_until(Duration::from_secs(60), |s| {
        s.state("embed")["idle"].as_u64() == Some(n as u64)
    });
    assert!(ready, "{n} instances: {}", s.state("embed"));
    // Rounds of n concurrent calls, so that each instance computes.
    for round in 0..8 {
        std::thread::scope(|scope| {
            for i in 0..n {
                let s = &s;
                scope.spawn(move || {
                    call(
                        s,
                        &format!("round {round}, client {i}: {}", crate::PARAGRAPH),
                    )
                });
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let state = s.state("embed");
    let mut roots: Vec<u32> = state["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    if let Some(t) = state["template"]["pid"].as_u64() {
        roots.push(t as u32);
    }
    tree_pss(&roots) as f64 / 1e6
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// Runs both launchers and prints the comparison.
pub fn report() {
    println!("\n## Warm templates against exec (embed, MiniLM-L6, sandbox on, same run)\n");
    let exec = cold_starts(false);
    let forked = cold_starts(true);
    println!("| | exec | template | template / exec |");
    println!("|---|---|---|---|");
    let row = |what: &str, e: &[f64], t: &[f64], p: f64| {
        let (e, t) = (percentile(e, p), percentile(t, p));
        println!("| {what} | {e:.1} ms | {t:.1} ms | {:.2}x |", t / e);
    };
    row(
        &format!("cold start through the URL, median of {COLD_RUNS}"),
        &exec.url,
        &forked.url,
        0.5,
    );
    row(
        "cold start through the URL, p95",
        &exec.url,
        &forked.url,
        0.95,
    );
    row(
        "scale-up decision → first `next`, median",
        &exec.first_next,
        &forked.first_next,
        0.5,
    );
    row(
        "scale-up decision → first `next`, p95",
        &exec.first_next,
        &forked.first_next,
        0.95,
    );
    println!(
        "\nFrom nothing (no instance and no template): exec {:.1} ms; template started, then forked: {:?} ms",
        exec.from_nothing_url[0],
        forked
            .from_nothing_url
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!("\n| warm instances | exec PSS | template PSS (template included) |");
    println!("|---|---|---|");
    let mut totals = Vec::new();
    for n in [1usize, 2, 4] {
        let (e, t) = (function_pss(false, n), function_pss(true, n));
        println!("| {n} | {e:.1} MB | {t:.1} MB |");
        totals.push((n, e, t));
    }
    if let Some(&(_, e1, t1)) = totals.first() {
        for &(n, e, t) in totals.iter().skip(1) {
            let extra = (n - 1) as f64;
            println!(
                "PSS per additional instance, 1 → {n}: exec {:.1} MB, template {:.1} MB",
                (e - e1) / extra,
                (t - t1) / extra
            );
        }
    }
}
