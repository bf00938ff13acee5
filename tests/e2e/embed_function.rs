//! The real embed binary, driven through thaw's real Runtime API: raw events, function URL
//! events (base64 too), malformed bodies and batch envelopes.

use base64::Engine as _;
use serde_json::{json, Value};
use thaw_runtime::runtime_api::Outcome;
use thaw_tests::{binary, ok_json, snapshot_dir, Harness};

async fn embed() -> Harness {
    Harness::start(
        &binary("embed"),
        Some(&snapshot_dir("minilm-l6")),
        &[("EMBED_MAX_TEXTS", "8")],
    )
    .await
}

fn url_event(body: &[u8], base64: bool) -> Value {
    let body = if base64 {
        base64::engine::general_purpose::STANDARD.encode(body)
    } else {
        String::from_utf8(body.to_vec()).expect("utf8")
    };
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
                           "requestId": "r1", "routeKey": "$default", "stage": "$default", "timeEpoch": 0},
        "body": body, "isBase64Encoded": base64
    })
}

fn error_of(outcome: Outcome) -> thaw_protocol::Diagnostic {
    match outcome.buffered() {
        Err(d) => d,
        Ok(b) => panic!("expected an error, got {}", String::from_utf8_lossy(&b)),
    }
}

#[tokio::test]
async fn raw_url_base64_malformed_and_batch_events() {
    let h = embed().await;

    // Raw event, one text and several.
    let one = ok_json(h.invoke(&json!({"text": "A man is eating food."})).await);
    assert_eq!(one["dims"], 384);
    assert_eq!(one["model"], "minilm-l6");
    assert_eq!(one["tokens"], json!([8]));
    let norm: f64 = one["embeddings"][0]
        .as_array()
        .expect("vec")
        .iter()
        .map(|x| x.as_f64().unwrap_or(0.0).powi(2))
        .sum();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "normalised by default, norm² {norm}"
    );
    let two = ok_json(
        h.invoke(&json!({"texts": ["a", "b"], "normalize": false}))
            .await,
    );
    assert_eq!(two["embeddings"].as_array().map(Vec::len), Some(2));

    // Function URL event, plain and base64; the reply is the URL response shape.
    for b64 in [false, true] {
        let reply = ok_json(
            h.invoke(&url_event(br#"{"texts": ["hello", "world"]}"#, b64))
                .await,
        );
        assert_eq!(reply["statusCode"], 200, "base64={b64}: {reply}");
        let body: Value =
            serde_json::from_str(reply["body"].as_str().expect("body")).expect("json body");
        assert_eq!(body["embeddings"].as_array().map(Vec::len), Some(2));
        assert_eq!(one["embeddings"][0].as_array().map(Vec::len), Some(384));
    }

    // Malformed JSON through a URL: 400 with a typed body.
    let reply = ok_json(h.invoke(&url_event(b"{not json", false)).await);
    assert_eq!(reply["statusCode"], 400);
    let body: Value =
        serde_json::from_str(reply["body"].as_str().expect("body")).expect("json body");
    assert_eq!(body["error"]["type"], "InvalidInput");

    // Wrong types, empty lists, over-limit counts and refused truncation: typed errors.
    assert_eq!(
        error_of(h.invoke(&json!({"texts": "not a list"})).await).error_type,
        "InvalidInput"
    );
    assert_eq!(
        error_of(h.invoke(&json!({"texts": []})).await).error_type,
        "InvalidInput"
    );
    assert_eq!(
        error_of(h.invoke(&json!({"nope": 1})).await).error_type,
        "InvalidInput"
    );
    let nine: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
    assert_eq!(
        error_of(h.invoke(&json!({"texts": nine})).await).error_type,
        "PayloadTooLarge"
    );
    let huge = "x".repeat(100_001);
    assert_eq!(
        error_of(h.invoke(&json!({"text": huge})).await).error_type,
        "PayloadTooLarge"
    );
    let long = "word ".repeat(400);
    let e = error_of(h.invoke(&json!({"text": long, "truncate": false})).await);
    assert_eq!(e.error_type, "InvalidInput");
    assert!(e.error_message.contains("256"), "{}", e.error_message);

    // Batch envelope with one bad item: it alone fails, in place.
    let reply = ok_json(
        h.invoke(&json!({"thaw_batch": [{"text": "first"}, {"texts": 42}, {"texts": ["third", "fourth"]}]})).await,
    );
    let items = reply["thaw_batch"].as_array().expect("batch");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["ok"]["tokens"], json!([3]));
    assert_eq!(items[1]["error"]["errorType"], "InvalidInput");
    assert_eq!(
        items[2]["ok"]["embeddings"].as_array().map(Vec::len),
        Some(2)
    );
    // The batched answer equals the single one: batching never changes a result.
    let single = ok_json(h.invoke(&json!({"text": "first"})).await);
    let (a, b) = (&items[0]["ok"]["embeddings"][0], &single["embeddings"][0]);
    let cos = thaw_tests::cosine(&to_vec(a), &to_vec(b));
    assert!(cos > 0.99999, "batched vs single cosine {cos}");
}

fn to_vec(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_corrupt_snapshot_fails_init_before_the_first_next() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("snap");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("snapshot.json"), b"{broken").expect("write");
    let api = thaw_runtime::runtime_api::InstanceApi::on_host_loopback()
        .await
        .expect("bind");
    let addr = api.addr().expect("address");
    let out = tokio::process::Command::new(binary("embed"))
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "embed")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("THAW_SNAPSHOT_DIR", &dir)
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("malformed JSON") && stderr.contains("snapshot.json"),
        "{stderr}"
    );
    assert_eq!(
        *api.lifecycle().borrow(),
        thaw_runtime::runtime_api::Lifecycle::Initialising
    );
}
