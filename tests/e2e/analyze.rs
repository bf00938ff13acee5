//! The real analyze binary (MiniLM, wordfreq and SmolLM2 snapshots) on a labelled set of
//! explanations written for these tests, and its typed errors through a function URL.

use serde_json::{json, Value};
use thaw_tests::{binary, fixture, ok_json, snapshot_dir, Harness, Serve};

const VARIANTS: [&str; 4] = ["clear", "muddled", "hedged", "jargon"];

/// A JSON array of strings, lower-cased.
fn lower_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_lowercase))
        .collect()
}

/// The analyze binary with its three snapshots, plus `extra` environment.
async fn analyze_with(extra: &[(&str, &str)]) -> Harness {
    let dirs = [
        ("THAW_SNAPSHOT_DIR_ENCODER", snapshot_dir("minilm-l6")),
        ("THAW_SNAPSHOT_DIR_WORDS", snapshot_dir("wordfreq-en")),
        ("THAW_SNAPSHOT_DIR_LLM", snapshot_dir("smollm2-135m")),
    ];
    let mut env: Vec<(&str, &str)> = dirs
        .iter()
        .map(|(k, d)| (*k, d.to_str().expect("utf-8")))
        .collect();
    env.extend_from_slice(extra);
    Harness::start(&binary("analyze"), None, &env).await
}

#[tokio::test]
async fn scores_order_the_labelled_set_find_planted_jargon_and_ask_a_question() {
    let h = analyze_with(&[]).await;
    let set: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("analyze-labelled.json")).expect("fixture"),
    )
    .expect("json");
    let topics = set["topics"].as_array().expect("topics");
    let modes = ["socratic", "curious", "skeptical", "beginner"];
    let (mut clarity_ok, mut clarity_n, mut confidence_ok, mut confidence_n) = (0, 0, 0, 0);
    let (mut planted_found, mut planted_n, mut from_model, mut asked) = (0, 0, 0, 0);
    let mut explanations = 0;
    for (t, topic) in topics.iter().enumerate() {
        let mut replies = std::collections::HashMap::new();
        for (v, variant) in VARIANTS.iter().enumerate() {
            let mode = modes[(t + v) % modes.len()];
            let reply = ok_json(
                h.invoke(&json!({
                    "explanation": topic[*variant],
                    "topic": topic["topic"],
                    "key_concepts": topic["key_concepts"],
                    "mode": mode,
                }))
                .await,
            );
            explanations += 1;
            let q = reply["question"].as_str().unwrap_or("");
            let gaps = lower_strings(&reply["knowledge_gaps"]);
            let jargon = lower_strings(&reply["unexplained_jargon"]);
            eprintln!(
                "{:<18} {:<8} {:<9} clarity {:.3} confidence {:.3} gaps {:?} jargon {:?}\n    [{}] {q}",
                topic["topic"].as_str().unwrap_or(""),
                variant,
                mode,
                reply["clarity_score"].as_f64().unwrap_or(-1.0),
                reply["confidence_score"].as_f64().unwrap_or(-1.0),
                gaps,
                jargon,
                reply["question_source"].as_str().unwrap_or("")
            );
            // The question: non-empty, a question, about the topic or a gap or the jargon.
            assert!(q.len() > 3 && q.ends_with('?'), "{q:?}");
            let ql = q.to_lowercase();
            let topic_l = topic["topic"].as_str().unwrap_or("").to_lowercase();
            assert!(
                ql.contains(&topic_l)
                    || gaps.iter().any(|g| ql.contains(g))
                    || jargon.iter().any(|j| ql.contains(j)),
                "question {q:?} names neither {topic_l:?} nor a gap {gaps:?}"
            );
            asked += 1;
            if reply["question_source"] == "model" {
                from_model += 1;
            }
            if *variant == "jargon" {
                for p in topic["planted"].as_array().expect("planted") {
                    planted_n += 1;
                    if jargon.iter().any(|j| Some(j.as_str()) == p.as_str()) {
                        planted_found += 1;
                    }
                }
            }
            replies.insert(*variant, reply);
        }
        let score = |v: &str, key: &str| replies[v][key].as_f64().unwrap_or(-1.0);
        for (a, b) in [
            ("clear", "muddled"),
            ("hedged", "muddled"),
            ("clear", "jargon"),
        ] {
            clarity_n += 1;
            if score(a, "clarity_score") > score(b, "clarity_score") {
                clarity_ok += 1;
            } else {
                eprintln!("clarity misordered: {} {a} <= {b}", topic["topic"]);
            }
        }
        for (a, b) in [
            ("clear", "hedged"),
            ("jargon", "hedged"),
            ("clear", "muddled"),
        ] {
            confidence_n += 1;
            if score(a, "confidence_score") > score(b, "confidence_score") {
                confidence_ok += 1;
            } else {
                eprintln!("confidence misordered: {} {a} <= {b}", topic["topic"]);
            }
        }
    }
    let clarity_acc = f64::from(clarity_ok) / f64::from(clarity_n);
    let confidence_acc = f64::from(confidence_ok) / f64::from(confidence_n);
    let recall = f64::from(planted_found) / f64::from(planted_n);
    eprintln!(
        "analyze: {explanations} explanations; clarity pairs {clarity_ok}/{clarity_n}, confidence pairs {confidence_ok}/{confidence_n}, planted jargon {planted_found}/{planted_n}, questions from the model {from_model}/{asked}"
    );
    assert!(explanations >= 20);
    assert!(
        clarity_acc >= 0.9,
        "clarity pairwise accuracy {clarity_acc}"
    );
    assert!(
        confidence_acc >= 0.9,
        "confidence pairwise accuracy {confidence_acc}"
    );
    assert!(recall >= 0.9, "planted-jargon recall {recall}");

    // Same input, same question (seeded), and "ask": false skips the model.
    let req = json!({"explanation": topics[0]["hedged"], "topic": topics[0]["topic"]});
    let a = ok_json(h.invoke(&req).await);
    let b = ok_json(h.invoke(&req).await);
    assert_eq!(a["question"], b["question"]);
    assert_eq!(a["details"]["concepts_from"], "derived");
    let mut quiet = req.clone();
    quiet["ask"] = json!(false);
    let c = ok_json(h.invoke(&quiet).await);
    assert_eq!(c["question_source"], "none");
    assert_eq!(c["clarity_score"], a["clarity_score"]);
}

#[tokio::test]
async fn a_zero_budget_falls_back_to_the_template() {
    let h = analyze_with(&[("ANALYZE_QUESTION_BUDGET_MS", "0")]).await;
    let r = ok_json(
        h.invoke(
            &json!({"explanation": "A function calls itself.", "topic": "recursion",
                         "key_concepts": ["base case"], "mode": "beginner"}),
        )
        .await,
    );
    assert_eq!(r["question_source"], "template", "{r}");
    assert_eq!(
        r["question"],
        "What is base case, and why does it matter for recursion?"
    );
    assert!(r["details"]["question_fallback"]
        .as_str()
        .unwrap_or("")
        .contains("budget"));
}

#[test]
fn bad_analyze_input_is_a_typed_400_through_the_function_url() {
    let s = Serve::start(
        "[app]\nname = \"t\"\n[function.analyze]\nbinary = \"analyze\"\n\
         snapshots = { encoder = \"minilm-l6\", words = \"wordfreq-en\", llm = \"smollm2-135m\" }\n\
         startup_timeout = \"60s\"\ntimeout = \"60s\"\n",
    );
    let post = |body: Value| {
        s.post(
            "/fn/analyze/",
            body.to_string().as_bytes(),
            &[("content-type", "application/json")],
        )
    };
    let many: Vec<String> = (0..40).map(|i| format!("concept {i}")).collect();
    for (body, status) in [
        (json!({"topic": "t"}), 400),
        (json!({"explanation": "x"}), 400),
        (json!({"explanation": 5, "topic": "t"}), 400),
        (json!({"explanation": "", "topic": "t"}), 400),
        (json!({"explanation": "x", "topic": "  "}), 400),
        (
            json!({"explanation": "x", "topic": "t", "mode": "angry"}),
            400,
        ),
        (
            json!({"explanation": "x", "topic": "t", "key_concepts": "a"}),
            400,
        ),
        (
            json!({"explanation": "x", "topic": "t", "key_concepts": [""]}),
            400,
        ),
        (
            json!({"explanation": "x", "topic": "t", "key_concepts": many}),
            400,
        ),
        (
            json!({"explanation": "x", "topic": "t", "conversation_history": [{"role": "cat", "text": "x"}]}),
            400,
        ),
        (json!({"explanation": "x", "topic": "t", "colour": 1}), 400),
    ] {
        let r = post(body.clone());
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"]["type"].is_string(), "{body}");
    }
    let r = post(
        json!({"explanation": "Recursion is a function calling itself.", "topic": "recursion", "ask": false}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
