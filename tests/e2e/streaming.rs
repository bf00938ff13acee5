//! Lambda response streaming end to end: a function's chunks reach the HTTP client of its
//! function URL as the function writes them, an error mid-stream cuts the body off, a
//! caller that goes away frees the instance, a buffered caller (Invoke) gets the whole
//! body under the buffered limit, and generate streams its tokens.

use std::io::{BufRead as _, BufReader, Read as _};
use std::time::Duration;

use serde_json::{json, Value};
use thaw_tests::Serve;

fn manifest(side: &std::path::Path) -> String {
    format!(
        "[app]\nname = \"streaming\"\n\n[function.fault]\nbinary = \"thaw-fault\"\nmax_containers = 1\n{}\n\
         [function.generate]\nbinary = \"generate\"\nsnapshot = \"tiny-qwen2\"\n",
        thaw_tests::side_keys(side, &[("FAULT_STATE", "")])
    )
}

/// POSTs `body` to `path` and returns the response, its body unread.
fn open(s: &Serve, path: &str, body: &Value) -> ureq::Response {
    // A fresh connection each time: a connection the server cut off (as it does to end a
    // failed stream) is never reused for the next request.
    let agent = ureq::AgentBuilder::new().max_idle_connections(0).build();
    match agent
        .post(&format!("{}{path}", s.base))
        .timeout(Duration::from_secs(120))
        .send_string(&body.to_string())
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path} {body}: {e}"),
    }
}

#[track_caller]
fn line(reader: &mut impl std::io::BufRead) -> String {
    let mut l = String::new();
    if let Err(e) = reader.read_line(&mut l) {
        panic!("a line at {}: {e}", std::panic::Location::caller());
    }
    l
}

#[test]
fn a_function_url_streams_each_chunk_before_the_next_exists_and_cuts_off_on_error() {
    let side = thaw_tests::side_dir();
    let s = Serve::start(&manifest(side.path()));
    let gate = |key: &str, i: usize| {
        std::fs::write(side.path().join(format!("{key}.{i}")), b"").expect("gate file");
    };

    // Each part is produced only once the file for it exists, which the test writes only
    // after it has read the part before: a buffered response would never arrive.
    let r = open(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "key": "a", "parts": ["one\n", "two\n", "three\n"]}),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let mut body = BufReader::new(r.into_reader());
    assert_eq!(line(&mut body), "one\n");
    gate("a", 1);
    assert_eq!(line(&mut body), "two\n");
    gate("a", 2);
    assert_eq!(line(&mut body), "three\n");
    let mut rest = String::new();
    body.read_to_string(&mut rest)
        .expect("the body ends cleanly");
    assert_eq!(rest, "");

    // An error after the first chunk cuts the body off: the client never sees a whole one.
    // (Read off the wire: a client library may take a cut at a chunk boundary for an end.)
    let raw = raw_post(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "parts": ["a\n", "b\n"], "fail_after": 1}),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("a\n"), "{text}");
    assert!(
        !text.ends_with("\r\n0\r\n\r\n"),
        "a stream that failed must not end like a whole one: {text}"
    );
    // So does a crash.
    let r = open(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "key": "c", "parts": ["a\n", "b\n"], "crash_after": 1}),
    );
    assert_eq!(r.status(), 200);
    let mut body = BufReader::new(r.into_reader());
    assert_eq!(line(&mut body), "a\n");
    // Only now may it crash: a process's last bytes can be lost with its connection.
    gate("c", 1);
    let mut rest = String::new();
    assert!(body.read_to_string(&mut rest).is_err(), "read {rest:?}");
    // An error before the first chunk is the request's own error.
    let r = open(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "parts": ["a"], "fail_after": 0}),
    );
    assert_eq!(r.status(), 400);
    assert!(r.into_string().expect("body").contains("InvalidInput"));

    // A client that goes away mid-stream frees the (only) instance once the function
    // ends: the next call is served.
    let r = open(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "key": "b", "parts": ["x\n", "y\n"]}),
    );
    let mut body = BufReader::new(r.into_reader());
    assert_eq!(line(&mut body), "x\n");
    drop(body);
    gate("b", 1);
    let r = open(&s, "/fn/fault/", &json!({"action": "echo", "echo": 7}));
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.into_string().expect("body")).expect("json");
    assert_eq!(v["echo"], 7);

    // Past the streamed-response limit (20 MiB) the body is cut off there.
    // (Read off the wire: a client library may take a cut at a chunk boundary for an end.)
    let raw = raw_post(
        &s,
        "/fn/fault/",
        &json!({"action": "stream", "bytes": 21 << 20}),
    );
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &raw[..raw.len().min(200)]
    );
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "an over-limit stream must not end with the last chunk"
    );
    assert!(
        raw.len() < (20 << 20) + (1 << 20),
        "{} bytes delivered",
        raw.len()
    );
}

/// POSTs `body` over a fresh connection and returns every byte of the response, to the
/// connection's close.
fn raw_post(s: &Serve, path: &str, body: &Value) -> Vec<u8> {
    use std::io::Write as _;
    let addr = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connects");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.to_string();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("writes");
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    out
}

/// Invokes `fault` through the AWS Invoke API.
fn invoke(s: &Serve, body: Value) -> thaw_tests::Reply {
    s.post(
        "/2015-03-31/functions/fault/invocations",
        body.to_string().as_bytes(),
        &[],
    )
}

#[test]
fn a_buffered_caller_gets_a_streamed_response_whole_under_the_buffered_limit() {
    let side = thaw_tests::side_dir();
    let s = Serve::start(&manifest(side.path()));
    let r = invoke(&s, json!({"action": "stream", "parts": ["a", "b", "c"]}));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abc");
    assert!(!r.headers.contains_key("x-amz-function-error"));
    // The error trailer is the call's error.
    let r = invoke(
        &s,
        json!({"action": "stream", "parts": ["a", "b"], "fail_after": 2}),
    );
    assert_eq!(
        r.headers.get("x-amz-function-error").map(String::as_str),
        Some("Unhandled")
    );
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("failed at the end of the stream"), "{text}");
    // The error trailer keeps the function's own type (thaw-fn writes the error document).
    let doc: Value = serde_json::from_slice(&r.body).expect("an error document");
    assert_eq!(doc["errorType"], "InvalidInput", "{doc}");
    // A crash mid-stream is a crash, with the instance's last words.
    let r = invoke(
        &s,
        json!({"action": "stream", "parts": ["a", "b"], "crash_after": 1}),
    );
    let doc: Value = serde_json::from_slice(&r.body).expect("an error document");
    assert_eq!(doc["errorType"], "FunctionCrashed", "{doc}");
    assert!(
        doc["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("crashed mid-stream")),
        "{doc}"
    );
    // 7 MiB streamed to a buffered caller is over its 6 MiB.
    let r = invoke(&s, json!({"action": "stream", "bytes": 7 << 20}));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("ResponseTooLarge"), "{text}");
}

#[test]
fn generate_streams_its_tokens_and_they_add_up_to_the_whole_reply() {
    let side = thaw_tests::side_dir();
    let s = Serve::start(&manifest(side.path()));
    let ask = json!({"prompt": "The", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let whole = s.post("/fn/generate/", ask.to_string().as_bytes(), &[]);
    assert_eq!(whole.status, 200);
    let whole: Value = serde_json::from_slice(&whole.body).expect("json");

    let mut streamed_ask = ask.clone();
    streamed_ask["stream"] = json!(true);
    let r = open(&s, "/fn/generate/", &streamed_ask);
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = BufReader::new(r.into_reader())
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json line"))
        .collect();
    assert_eq!(lines[0]["type"], "start", "{lines:?}");
    assert_eq!(lines[0]["prompt_tokens"], whole["usage"]["prompt_tokens"]);
    let done = lines.last().expect("a done line");
    assert_eq!(done["type"], "done");
    let deltas: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "delta")
        .map(|l| l["text"].as_str().expect("text"))
        .collect();
    assert!(deltas.len() > 1, "one delta per piece of text: {deltas:?}");
    assert_eq!(deltas.concat(), done["text"].as_str().expect("text"));
    assert_eq!(done["text"], whole["text"]);
    assert_eq!(done["token_ids"], whole["token_ids"]);
    assert_eq!(done["usage"], whole["usage"]);

    // A stop sequence is never streamed, even when it arrives a token at a time.
    let text = whole["text"].as_str().expect("text");
    let stop: String = text.chars().skip(4).take(3).collect();
    let mut stopped = streamed_ask.clone();
    stopped["stop"] = json!(stop);
    let r = open(&s, "/fn/generate/", &stopped);
    let body = r.into_string().expect("body");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let streamed: String = lines
        .iter()
        .filter(|l| l["type"] == "delta")
        .map(|l| l["text"].as_str().expect("text"))
        .collect();
    let done = lines.last().expect("done");
    assert_eq!(done["finish_reason"], "stop", "{body}");
    assert_eq!(streamed, done["text"].as_str().expect("text"));
    assert!(!streamed.contains(&stop), "{streamed:?} holds {stop:?}");

    // Bad input is still a plain 400 before anything streams.
    let r = open(&s, "/fn/generate/", &json!({"prompt": "", "stream": true}));
    assert_eq!(r.status(), 400);
}
