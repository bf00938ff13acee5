//! Warm templates through a real `thaw serve`: forked embed instances against exec'd
//! ones on the golden cases, a template killed under traffic, and scale to zero
//! reaching zero processes. (The sandbox tests run again with templates on, in
//! `sandbox::with_templates`.)

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use thaw_tests::{alive, fixture, Serve};

#[derive(Debug, Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f32>,
}

fn manifest(template: bool, extra: &str) -> String {
    format!(
        "[app]\nname = \"templates\"\n\n[function.embed]\nbinary = \"embed\"\n\
         snapshot = \"minilm-l6\"\ntemplate = {template}\n{extra}"
    )
}

fn embed(s: &Serve, text: &str) -> Vec<f32> {
    let r = s.post(
        "/fn/embed/",
        json!({"texts": [text]}).to_string().as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["embeddings"][0]
        .as_array()
        .expect("embedding")
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect()
}

fn template(s: &Serve) -> Value {
    s.state("embed")["template"].clone()
}

#[test]
fn a_forked_embed_instance_matches_an_execd_one_on_every_golden_case() {
    let bytes = std::fs::read(fixture("minilm-reference.json")).expect("fixture");
    let reference: Reference = serde_json::from_slice(&bytes).expect("fixture parses");
    let exec = Serve::start(&manifest(false, ""));
    let execd: Vec<Vec<f32>> = reference
        .cases
        .iter()
        .map(|c| embed(&exec, &c.text))
        .collect();
    assert_eq!(template(&exec), Value::Null, "no template when off");
    drop(exec);
    let forked = Serve::start(&manifest(true, ""));
    let mut worst = 0f32;
    for (case, want) in reference.cases.iter().zip(&execd) {
        let got = embed(&forked, &case.text);
        assert_eq!(&got, want, "forked and exec'd differ on {:?}", case.text);
        let golden = got
            .iter()
            .zip(&case.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            golden <= 1e-4,
            "{golden} from the golden on {:?}",
            case.text
        );
        worst = worst.max(golden);
    }
    let t = template(&forked);
    assert_eq!(t["state"], "ready", "{t}");
    assert!(t["forks"].as_u64() >= Some(1), "{t}");
    assert_eq!(t["fallbacks"], 0, "{t}");
    println!(
        "{} golden cases: forked == exec'd bit for bit, worst |Δ| to sentence-transformers {worst:e}",
        reference.cases.len()
    );
}

#[test]
fn killing_the_template_under_traffic_loses_no_call_and_the_next_instance_execs() {
    let s = Serve::start(&manifest(
        true,
        "max_containers = 2\nidle_timeout = \"60s\"\n",
    ));
    let _ = embed(&s, "warm up");
    let t = template(&s);
    let pid = t["pid"].as_u64().expect("template pid");
    let stop = std::sync::atomic::AtomicBool::new(false);
    // One client keeps the forked instance busy; three more join after the kill.
    let burst = std::sync::atomic::AtomicBool::new(false);
    let (calls, failures) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (s, stop, burst) = (&s, &stop, &burst);
                scope.spawn(move || {
                    let (mut calls, mut failures) = (0u32, Vec::new());
                    while c > 0 && !burst.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let r = s.post(
                            "/fn/embed/",
                            json!({"texts": [format!("client {c} call {i}")]})
                                .to_string()
                                .as_bytes(),
                            &[("content-type", "application/json")],
                        );
                        calls += 1;
                        if r.status != 200 {
                            failures.push(String::from_utf8_lossy(&r.body).into_owned());
                        }
                        i += 1;
                    }
                    (calls, failures)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .is_ok_and(|st| st.success());
        assert!(killed, "kill -9 {pid}");
        burst.store(true, std::sync::atomic::Ordering::SeqCst);
        // The next instance can only come up by exec now.
        let scaled = s.wait_until(Duration::from_secs(20), |s| {
            template(s)["fallbacks"].as_u64() >= Some(1)
                && s.state("embed")["instances"].as_array().map(Vec::len) == Some(2)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(scaled, "no exec'd second instance: {}", s.state("embed"));
        clients.into_iter().map(|c| c.join().expect("client")).fold(
            (0, Vec::new()),
            |(n, mut f), (c, fs)| {
                f.extend(fs);
                (n + c, f)
            },
        )
    });
    assert!(!alive(pid), "the template was killed");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_template_fallbacks_total{function=\"embed\"}"),
        "{metrics}"
    );
    println!("template SIGKILLed under traffic, then 4 clients: {calls} calls, 0 failed; the next instance came up by exec");
}

#[test]
fn after_idle_neither_instances_nor_the_template_remain() {
    // A variable only this test's processes carry: the template, its spare fork and the
    // instances all have it in their environment.
    let marker = format!("idle-{}", std::process::id());
    let s = Serve::start(&manifest(
        true,
        &format!(
            "idle_timeout = \"1s\"\nmax_containers = 2\nenv = {{ TEMPLATE_TEST = \"{marker}\" }}\n"
        ),
    ));
    let _ = embed(&s, "one");
    let running = with_env(&format!("TEMPLATE_TEST={marker}"));
    assert!(
        running.len() >= 3,
        "template, spare and instance: {running:?}"
    );
    let state = s.state("embed");
    let template_pid = state["template"]["pid"].as_u64().expect("template pid");
    let instance_pid = state["instances"][0]["pid"].as_u64().expect("instance pid");
    let gone = s.wait_until(Duration::from_secs(10), |s| {
        let st = s.state("embed");
        st["instances"].as_array().is_some_and(Vec::is_empty)
            && st["template"]["state"] == "stopped"
            && !alive(template_pid)
            && !alive(instance_pid)
    });
    assert!(gone, "after idle: {}", s.state("embed"));
    let left = with_env(&format!("TEMPLATE_TEST={marker}"));
    assert!(left.is_empty(), "processes left after idle: {left:?}");
    // And the next call starts a template again.
    let _ = embed(&s, "two");
    assert_eq!(template(&s)["state"], "ready");
    println!("idle 1s: instance {instance_pid}, template {template_pid} and the spare fork gone; the next call forked from a new template");
}

/// Pids of the processes whose environment holds `var` (`NAME=value`).
fn with_env(var: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == var.as_bytes()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
