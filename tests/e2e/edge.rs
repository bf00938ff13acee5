//! The HTTP edge end to end, over raw sockets where a well-behaved client library would
//! hide what is tested: slow and idle connections are closed after the header timeout,
//! an error does not cost a keep-alive connection, every error is JSON, function URL
//! events follow AWS's rules, and a call still answers under slowloris plus long-polls.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::Serve;

fn manifest(functions: &str) -> String {
    format!("[app]\nname = \"test\"\n\n{functions}")
}

fn connect(s: &Serve) -> TcpStream {
    let addr = s.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, head, body).
fn read_response(stream: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((status, head, body))
}

/// Whether the server has closed `stream`: a read sees EOF or a reset.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let s = Serve::start_with_args(
        &manifest("[function.f]\nbinary = \"thaw-fault\"\n"),
        &["--header-timeout", "1s"],
    );
    // Slowloris: a head that never ends, one byte at a time.
    let mut slow: Vec<TcpStream> = (0..20).map(|_| connect(&s)).collect();
    for c in &mut slow {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
    }
    let started = Instant::now();
    let mut closed = 0;
    'outer: while started.elapsed() < Duration::from_secs(30) {
        for c in &mut slow {
            if c.write_all(b"X").is_err() {
                closed += 1;
            }
        }
        if closed > 0 {
            break 'outer;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let all_closed = slow
        .iter_mut()
        .all(|c| closed_within(c, Duration::from_secs(30)));
    assert!(all_closed, "a slowloris connection was held open");
    println!(
        "slowloris connections closed after {:?} (header timeout 1 s)",
        started.elapsed()
    );
    // Idle keep-alive: one request answered, then nothing; the connection is closed.
    let mut idle = connect(&s);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (status, _, _) = read_response(&mut idle).expect("response");
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut idle, Duration::from_secs(30)),
        "an idle keep-alive connection was held open"
    );
    // A prompt client is unaffected.
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn an_error_before_the_body_arrives_keeps_the_connection() {
    let s = Serve::start_with_env(
        &manifest("[function.locked]\nbinary = \"thaw-fault\"\nurl = { auth = \"token\" }\n"),
        &[],
        &[("THAW_URL_TOKEN", "url-token-0123456789abcdef")],
    );
    let body = vec![b'{'; 64 * 1024];
    for (path, status) in [
        ("/2015-03-31/functions/nope/invocations", 404),
        ("/fn/nope/", 404),
        ("/v1/functions/nope/spawn", 404),
        ("/fn/locked/", 401),
        ("/nothing/here", 404),
    ] {
        let mut c = connect(&s);
        // The head first, the body a moment later, as botocore sends them.
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("write head");
        c.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(&body).expect("write body");
        let (got, head, _) = read_response(&mut c).expect("a response");
        assert_eq!(got, status, "{path}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{path}: {head}"
        );
        // The same connection serves the next request.
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("second request");
        let (next, head, _) = read_response(&mut c)
            .unwrap_or_else(|| panic!("{path}: the connection was closed after the error"));
        assert_eq!(next, 200, "{head}");
    }
}

#[test]
fn every_error_on_the_thaw_surface_is_json() {
    let s = Serve::start(&manifest("[function.f]\nbinary = \"thaw-fault\"\n"));
    for (method, path, status, kind) in [
        ("GET", "/v1/calls/%ff", 400, "BadRequest"),
        ("GET", "/v1/maps/%ff", 400, "BadRequest"),
        ("GET", "/v1/functions/f/logs?tail=lots", 400, "BadRequest"),
        ("GET", "/v1/calls/x?wait=soon", 400, "BadRequest"),
        ("DELETE", "/v1/functions", 405, "MethodNotAllowed"),
        ("POST", "/healthz", 405, "MethodNotAllowed"),
        ("GET", "/v1/functions/f/spawn", 405, "MethodNotAllowed"),
        ("GET", "/no/such/route", 404, "NotFound"),
        (
            "GET",
            "/v1/calls/0190a6e0-0000-7000-8000-000000000000",
            404,
            "CallNotFound",
        ),
    ] {
        let r = s.request(method, path, b"", &[]);
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(r.json()["error"]["type"], kind, "{method} {path}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {path}"
        );
    }
    // The Invoke API answers in AWS's JSON shape, a bad path segment included.
    let r = s.post("/2015-03-31/functions/%ff/invocations", b"{}", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.headers.get("x-amzn-errortype").map(String::as_str),
        Some("InvalidParameterValueException")
    );
    assert!(r.json()["message"].is_string());
}

#[test]
fn url_events_keep_raw_paths_decode_queries_and_base64_binary_types() {
    let s = Serve::start(&manifest(
        "[function.raw]\nbinary = \"thaw-fault\"\nenv = { FAULT_MODE = \"raw\" }\n",
    ));
    let r = s.post(
        "/fn/raw/a%2Fb/%ff?q=hello%20world&x=a+b&q=2&raw=%2F",
        b"plain utf-8 text",
        &[("content-type", "application/octet-stream")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"plain utf-8 text");
    let header = |name: &str| r.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("x-raw-path"), "/a%2Fb/%ff", "rawPath is as sent");
    let query: Value = serde_json::from_str(&header("x-query")).expect("x-query is JSON");
    assert_eq!(
        query,
        json!({"q": "hello world,2", "x": "a b", "raw": "/"}),
        "queryStringParameters are decoded"
    );
    assert_eq!(
        header("x-base64"),
        "true",
        "an octet-stream body travels as base64 even when it is UTF-8"
    );
    let r = s.post(
        "/fn/raw/",
        br#"{"a": 1}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.headers.get("x-base64").map(String::as_str), Some("false"));
    assert_eq!(r.body, br#"{"a": 1}"#);
}
