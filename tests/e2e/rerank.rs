//! The real rerank binary: cross-encoder parity with transformers, bi-encoder parity with
//! the embed function, ranking quality on a labelled set, and typed errors.

use serde_json::{json, Value};
use thaw_tests::{binary, cosine, fixture, floats, ok_json, snapshot_dir, Harness, Serve};

/// The score of each document, by its index in the request.
fn scores_by_index(reply: &Value) -> Vec<f32> {
    let results = reply["results"].as_array().expect("results");
    let mut scores = vec![f32::NAN; results.len()];
    for r in results {
        scores[r["index"].as_u64().expect("index") as usize] =
            r["score"].as_f64().expect("score") as f32;
    }
    scores
}

#[tokio::test]
async fn cross_encoder_logits_match_transformers() {
    let h = Harness::start(
        &binary("rerank"),
        Some(&snapshot_dir("tiny-cross-encoder")),
        &[],
    )
    .await;
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-cross-encoder/reference.json")).expect("fixture"),
    )
    .expect("json");
    let cases = reference["cases"].as_array().expect("cases");
    assert!(cases.len() >= 7);
    let mut worst = 0f64;
    for case in cases {
        let expected = case["logit"].as_f64().expect("logit");
        // Alone.
        let reply = ok_json(
            h.invoke(&json!({"query": case["query"], "documents": [case["passage"]]}))
                .await,
        );
        let got = f64::from(scores_by_index(&reply)[0]);
        worst = worst.max((got - expected).abs());
        assert!(
            (got - expected).abs() <= 1e-4,
            "query {:?} passage of {} chars: {got} vs {expected}",
            case["query"],
            case["passage"].as_str().map_or(0, str::len)
        );
    }
    // All passages of one query in one padded batch, as documents of one request.
    let query = cases[0]["query"].clone();
    let same: Vec<&Value> = cases.iter().filter(|c| c["query"] == query).collect();
    let docs: Vec<Value> = same.iter().map(|c| json!({"text": c["passage"]})).collect();
    let reply = ok_json(h.invoke(&json!({"query": query, "documents": docs})).await);
    for (c, got) in same.iter().zip(scores_by_index(&reply)) {
        let expected = c["logit"].as_f64().expect("logit");
        assert!(
            (f64::from(got) - expected).abs() <= 1e-4,
            "{got} vs {expected}"
        );
    }
    // normalize applies a sigmoid.
    let reply = ok_json(
        h.invoke(&json!({"query": cases[0]["query"], "documents": [cases[0]["passage"]], "normalize": true}))
            .await,
    );
    let p = f64::from(scores_by_index(&reply)[0]);
    let logit = cases[0]["logit"].as_f64().expect("logit");
    assert!((p - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-4);
    eprintln!(
        "cross-encoder: {} cases, worst |logit - transformers| = {worst:.2e}",
        cases.len()
    );
}

#[tokio::test]
async fn bi_encoder_scores_are_the_embed_cosines_and_rank_the_labelled_set() {
    let minilm = snapshot_dir("minilm-l6");
    let rerank = Harness::start(&binary("rerank"), Some(&minilm), &[]).await;
    let embed = Harness::start(&binary("embed"), Some(&minilm), &[]).await;
    let labelled: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("rerank-labelled.json")).expect("fixture"),
    )
    .expect("json");
    let cases = labelled["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    let (mut reciprocal_ranks, mut worst) = (0.0, 0f64);
    for case in cases {
        let docs = case["documents"].as_array().expect("documents");
        let reply = ok_json(
            rerank
                .invoke(
                    &json!({"query": case["query"], "documents": docs, "return_documents": true}),
                )
                .await,
        );
        let results = reply["results"].as_array().expect("results");
        assert_eq!(results.len(), docs.len());
        // Sorted by score, descending, with the document echoed.
        for pair in results.windows(2) {
            assert!(pair[0]["score"].as_f64() >= pair[1]["score"].as_f64());
        }
        let first = results[0]["index"].as_u64().expect("index") as usize;
        assert_eq!(results[0]["document"]["text"], docs[first]);
        // The same cosines the embed function's vectors give.
        let mut texts = vec![case["query"].clone()];
        texts.extend(docs.iter().cloned());
        let vectors = ok_json(embed.invoke(&json!({"texts": texts})).await);
        let vectors = vectors["embeddings"].as_array().expect("embeddings");
        let q = floats(&vectors[0]);
        for (i, got) in scores_by_index(&reply).into_iter().enumerate() {
            let expected = cosine(&q, &floats(&vectors[i + 1]));
            worst = worst.max((f64::from(got) - expected).abs());
            assert!(
                (f64::from(got) - expected).abs() <= 1e-5,
                "{got} vs {expected}"
            );
        }
        let relevant = case["relevant"].as_u64().expect("relevant");
        let rank = results
            .iter()
            .position(|r| r["index"] == relevant)
            .expect("relevant is ranked")
            + 1;
        if rank <= 3 {
            reciprocal_ranks += 1.0 / rank as f64;
        }
    }
    let mrr = reciprocal_ranks / cases.len() as f64;
    eprintln!(
        "bi-encoder: MRR@3 {mrr:.3} over {} queries; worst |score - embed cosine| = {worst:.2e}",
        cases.len()
    );
    assert!(mrr >= 0.8, "MRR@3 {mrr}");

    // top_k keeps the best k.
    let reply = ok_json(
        rerank
            .invoke(&json!({"query": "password", "documents": ["a", "reset your password", ""], "top_k": 1}))
            .await,
    );
    assert_eq!(reply["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(reply["results"][0]["index"], 1);
    assert_eq!(reply["model"], "minilm-l6");
}

#[test]
fn bad_rerank_and_analytics_input_is_a_typed_400_through_the_function_url() {
    let s = Serve::start(
        "[app]\nname = \"t\"\n[function.rerank]\nbinary = \"rerank\"\nsnapshot = \"minilm-l6\"\n\
         [function.analytics]\nbinary = \"analytics\"\n",
    );
    let post = |f: &str, body: Value| {
        s.post(
            &format!("/fn/{f}/"),
            body.to_string().as_bytes(),
            &[("content-type", "application/json")],
        )
    };
    let many: Vec<String> = (0..1001).map(|i| format!("doc {i}")).collect();
    for (body, status) in [
        (json!({"documents": ["a"]}), 400),
        (json!({"query": "q"}), 400),
        (json!({"query": 3, "documents": ["a"]}), 400),
        (json!({"query": "q", "documents": "a"}), 400),
        (json!({"query": "q", "documents": [{"body": "a"}]}), 400),
        (json!({"query": "q", "documents": []}), 400),
        (json!({"query": "q", "documents": ["a"], "top_k": 0}), 400),
        (json!({"query": "q", "documents": ["a"], "top_k": -1}), 400),
        (
            json!({"query": "q", "documents": ["a"], "batch_size": 0}),
            400,
        ),
        (
            json!({"query": "q", "documents": ["a"], "colour": "red"}),
            400,
        ),
        (json!({"query": "q", "documents": many}), 400),
    ] {
        let r = post("rerank", body.clone());
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"]["type"].is_string(), "{body}");
    }
    // Empty strings are fine.
    let r = post("rerank", json!({"query": "", "documents": ["", "x"]}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let analysis = json!({"confidence_score": 0.5, "clarity_score": 0.5, "knowledge_gaps": []});
    for body in [
        json!({}),
        json!({"turns": "none"}),
        json!({"turns": [{"analysis": {"clarity_score": 0.5}}]}),
        json!({"turns": [{"analysis": {"confidence_score": "high", "clarity_score": 0.5}}]}),
        json!({"turns": [{"analysis": {"confidence_score": 2.0, "clarity_score": 0.5}}]}),
        json!({"turns": [{"analysis": analysis, "mood": "ok"}]}),
    ] {
        let r = post("analytics", body.clone());
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["type"], "InvalidInput", "{body}");
    }
    let r = post(
        "analytics",
        json!({"session_id": "s1", "turns": [{"analysis": analysis}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total_turns"], 1);
}

#[test]
fn thaw_map_runs_analytics_over_ten_thousand_sessions() {
    let s = Serve::start(
        "[app]\nname = \"t\"\n[function.analytics]\nbinary = \"analytics\"\nmax_containers = 2\nconcurrency = 8\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("sessions.jsonl");
    let output = dir.path().join("analytics.jsonl");
    let gaps = ["recursion", "base case", "stack frames", "memoisation"];
    let mut lines = String::new();
    for i in 0..10_000usize {
        let turns: Vec<Value> = (0..(i % 7))
            .map(|t| {
                let clarity = ((i + 3 * t) % 10) as f64 / 10.0;
                json!({"analysis": {"confidence_score": (t as f64 / 10.0).min(1.0), "clarity_score": clarity,
                        "knowledge_gaps": [gaps[(i + t) % 4]]}, "timestamp": t})
            })
            .collect();
        lines.push_str(&json!({"session_id": format!("s{i}"), "turns": turns}).to_string());
        lines.push('\n');
    }
    std::fs::write(&input, lines).expect("write sessions");
    let t = std::time::Instant::now();
    let out = std::process::Command::new(binary("thaw"))
        .args(["map", "analytics", "--endpoint", &s.base, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("thaw map");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = std::fs::read_to_string(&output).expect("output");
    let mut n = 0;
    for (i, line) in results.lines().enumerate() {
        let v: Value = serde_json::from_str(line).expect("line");
        assert_eq!(v["index"], i);
        assert_eq!(v["ok"]["session_id"], format!("s{i}"));
        assert_eq!(v["ok"]["total_turns"], i % 7);
        n += 1;
    }
    assert_eq!(n, 10_000);
    eprintln!(
        "thaw map analytics: 10,000 sessions in {secs:.2} s ({:.0} items/s); {}",
        10_000.0 / secs,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
