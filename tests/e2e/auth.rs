//! Authentication end to end: a token function is guarded on every route that reaches
//! it, the control-plane token guards `/v1`, the Invoke API and `/metrics`, the CLI sends
//! the token, and thaw will not serve an open control plane on a public address.

use std::process::{Command, Stdio};

use serde_json::{json, Value};
use thaw_tests::{Reply, Serve};

const URL_TOKEN: &str = "url-token-0123456789abcdef";
const CONTROL_TOKEN: &str = "control-token-0123456789abcdef";

fn manifest() -> String {
    "[app]\nname = \"test\"\n\n\
     [function.locked]\nbinary = \"thaw-fault\"\nurl = { auth = \"token\" }\n\n\
     [function.open]\nbinary = \"thaw-fault\"\nenv = { DB_PASSWORD = \"hunter2\" }\n"
        .to_owned()
}

/// Every route that reaches `function`, each called once with `auth` (or none).
fn every_route(s: &Serve, function: &str, auth: Option<&str>) -> Vec<(String, Reply)> {
    let header = auth.map(|a| ("authorization", a));
    let headers: Vec<(&str, &str)> = header.into_iter().collect();
    let mut json_headers = headers.clone();
    json_headers.push(("content-type", "application/json"));
    let one = br#"{"echo": 1}"#;
    let routes = [
        format!("/fn/{function}/"),
        format!("/fn/{function}/some/path"),
        format!("/2015-03-31/functions/{function}/invocations"),
        format!("/v1/functions/{function}/spawn"),
        format!("/v1/functions/{function}/map"),
        format!("/v1/functions/{function}/spawn_map"),
    ];
    routes
        .into_iter()
        .map(|path| {
            let body: &[u8] = if path.ends_with("map") {
                b"[{\"echo\": 1}, {\"echo\": 2}]"
            } else {
                one
            };
            let r = s.post(&path, body, &json_headers);
            (path, r)
        })
        .collect()
}

fn assert_unauthorized(path: &str, r: &Reply) {
    assert_eq!(
        r.status,
        401,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.headers
            .get("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{path}: {:?}",
        r.headers
    );
    if path.starts_with("/2015-03-31/") {
        assert_eq!(
            r.headers.get("x-amzn-errortype").map(String::as_str),
            Some("UnrecognizedClientException"),
            "{path}: the Invoke API answers in AWS's shape"
        );
    } else {
        assert_eq!(r.json()["error"]["type"], "Unauthorized", "{path}");
    }
}

fn assert_served(path: &str, r: &Reply) {
    assert!(
        matches!(r.status, 200 | 202),
        "{path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn a_token_function_is_guarded_on_every_route_that_reaches_it() {
    let s = Serve::start_with_env(&manifest(), &[], &[("THAW_URL_TOKEN", URL_TOKEN)]);
    for (path, r) in every_route(&s, "locked", None) {
        assert_unauthorized(&path, &r);
    }
    for (path, r) in every_route(&s, "locked", Some("Bearer not-the-token")) {
        assert_unauthorized(&path, &r);
    }
    // Basic is not Bearer, even with the right token in it.
    for (path, r) in every_route(&s, "locked", Some(&format!("Basic {URL_TOKEN}"))) {
        assert_unauthorized(&path, &r);
    }
    // The scheme in any case (RFC 7235).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        for (path, r) in every_route(&s, "locked", Some(&format!("{scheme} {URL_TOKEN}"))) {
            assert_served(&path, &r);
        }
    }
    // A function without url.auth is open on every route (no control-plane token here).
    for (path, r) in every_route(&s, "open", None) {
        assert_served(&path, &r);
    }
}

#[test]
fn the_control_plane_token_guards_v1_invoke_and_metrics_and_opens_everything() {
    let s = Serve::start_with_env(
        &manifest(),
        &[],
        &[("THAW_URL_TOKEN", URL_TOKEN), ("THAW_TOKEN", CONTROL_TOKEN)],
    );
    let control = format!("Bearer {CONTROL_TOKEN}");
    let url = format!("Bearer {URL_TOKEN}");
    let get = |path: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        s.request("GET", path, b"", &h)
    };
    // The control plane: nothing without the token, not with the function token.
    for path in [
        "/v1/functions",
        "/v1/models",
        "/info",
        "/2015-03-31/functions/",
        "/2015-03-31/functions/open",
        "/2015-03-31/functions/open/configuration",
        "/v1/functions/open/logs",
        "/v1/calls/0190a6e0-0000-7000-8000-000000000000",
        "/v1/maps/0190a6e0-0000-7000-8000-000000000000",
        "/metrics",
    ] {
        assert_unauthorized(path, &get(path, None));
        assert_unauthorized(path, &get(path, Some(&url)));
        let r = get(path, Some(&control));
        assert!(
            matches!(r.status, 200 | 404),
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = s.request(
        "DELETE",
        "/v1/calls/0190a6e0-0000-7000-8000-000000000000",
        b"",
        &[],
    );
    assert_unauthorized("DELETE /v1/calls", &r);
    // Health stays open: it is what load balancers probe.
    assert_eq!(get("/healthz", None).status, 200);
    // Every route into a function is control plane but the URL.
    for (path, r) in every_route(&s, "open", None) {
        if path.starts_with("/fn/") {
            assert_served(&path, &r);
        } else {
            assert_unauthorized(&path, &r);
        }
    }
    for (path, r) in every_route(&s, "locked", Some(&url)) {
        if path.starts_with("/fn/") {
            assert_served(&path, &r);
        } else {
            assert_unauthorized(&path, &r);
        }
    }
    // The control-plane token opens everything, token functions included.
    for f in ["open", "locked"] {
        for (path, r) in every_route(&s, f, Some(&control)) {
            assert_served(&path, &r);
        }
    }
    // /v1/functions shows env names, never values.
    let all = get("/v1/functions", Some(&control));
    assert!(
        !String::from_utf8_lossy(&all.body).contains("hunter2"),
        "an env value leaked"
    );
    let open = all.json()["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "open").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(open["config"]["env"], json!(["DB_PASSWORD"]));

    // The CLI sends the token from THAW_TOKEN (or --token).
    let cli = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(thaw_tests::binary("thaw"));
        c.args(args)
            .env("THAW_ENDPOINT", &s.base)
            .env_remove("THAW_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            c.env("THAW_TOKEN", t);
        }
        c.output().expect("run thaw")
    };
    for args in [
        &["status"][..],
        &["logs", "open"],
        &["invoke", "locked", r#"{"echo": 1}"#],
    ] {
        let out = cli(args, None);
        assert!(!out.status.success(), "{args:?} without a token succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("401"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cli(args, Some(CONTROL_TOKEN));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&["spawn", "locked", r#"{"echo": 2}"#], Some(CONTROL_TOKEN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = cli(&["get", &id, "--wait", "60"], Some(CONTROL_TOKEN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(input.path(), "{\"echo\": 1}\n{\"echo\": 2}\n").expect("write input");
    let input_path = input.path().display().to_string();
    let out = cli(
        &["map", "locked", "--input", &input_path],
        Some(CONTROL_TOKEN),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

/// The routes that name their function in the body (`model`), by a route table
/// (`[routes]`), or by ARN reach a token function only with the token. A function not
/// routed to a family is not reached through it at all (`model` = `open`: 404).
#[test]
fn a_token_function_stays_locked_by_model_route_table_and_arn() {
    // Routed to every family: only a function with a route's contract (the routed one, or
    // thaw's own binary for it) is reached through it.
    let manifest = format!(
        "{}\n[routes]\nembeddings = \"locked\"\nrerank = \"locked\"\nchat = \"locked\"\n",
        manifest()
    );
    let s = Serve::start_with_env(&manifest, &[], &[("THAW_URL_TOKEN", URL_TOKEN)]);
    let json_ct = ("content-type", "application/json");
    let url = format!("Bearer {URL_TOKEN}");
    let by_body = [
        ("/v1/embeddings", r#"{"model": "locked", "input": "x"}"#),
        (
            "/v1/rerank",
            r#"{"model": "locked", "query": "q", "documents": ["a"]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "locked", "messages": [{"role": "user", "content": "x"}]}"#,
        ),
        ("/embed", r#"{"inputs": "x"}"#),
        ("/", r#"{"inputs": "x"}"#),
    ];
    for (path, body) in by_body {
        let r = s.post(path, body.as_bytes(), &[json_ct]);
        assert_eq!(
            r.status,
            401,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.headers.contains_key("www-authenticate"),
            "{path}: {:?}",
            r.headers
        );
        let r = s.post(path, body.as_bytes(), &[json_ct, ("authorization", &url)]);
        assert_ne!(r.status, 401, "{path} with the token");
    }
    assert_eq!(s.get("/info").status, 401);
    let r = s.post(
        "/v1/embeddings",
        br#"{"model": "open", "input": "x"}"#,
        &[json_ct],
    );
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    for name in [
        "arn:aws:lambda:us-east-1:123456789012:function:locked",
        "123456789012:function:locked",
        "locked:$LATEST",
    ] {
        let path = format!("/2015-03-31/functions/{name}/invocations");
        assert_unauthorized(&path, &s.post(&path, br#"{"echo": 1}"#, &[]));
        assert_served(
            &path,
            &s.post(&path, br#"{"echo": 1}"#, &[("authorization", &url)]),
        );
    }
}

#[test]
fn public_metrics_need_no_token_when_asked_for() {
    let s = Serve::start_with_env(
        &manifest(),
        &["--public-metrics"],
        &[("THAW_TOKEN", CONTROL_TOKEN)],
    );
    assert_eq!(s.get("/metrics").status, 200);
    assert_eq!(s.get("/v1/functions").status, 401);
}

/// Runs `thaw serve` on 0.0.0.0:0 and returns whether it came up, and its stderr if not.
fn serve_publicly(args: &[&str], token: Option<&str>) -> Result<String, String> {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest_path = dir.path().join("functions.toml");
    std::fs::write(&manifest_path, manifest()).expect("write manifest");
    let thaw = thaw_tests::binary("thaw");
    let mut cmd = Command::new(&thaw);
    cmd.args(["serve", "--listen", "0.0.0.0:0", "--manifest"])
        .arg(&manifest_path)
        .arg("--snapshots")
        .arg(thaw_tests::snapshot_cache())
        .arg("--bin-dir")
        .arg(thaw.parent().expect("bin dir"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(args)
        .env_remove("THAW_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("THAW_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn thaw serve");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let _ = std::io::BufReader::new(stdout).read_line(&mut first);
    let up = first.contains("listening on http://0.0.0.0:");
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    if up {
        Ok(first)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn thaw_refuses_a_public_address_without_a_control_plane_token() {
    let refused = serve_publicly(&[], None).expect_err("served 0.0.0.0 with no token");
    assert!(
        refused.contains("refusing to listen on 0.0.0.0")
            && refused.contains("THAW_TOKEN")
            && refused.contains("--insecure-no-token"),
        "{refused}"
    );
    serve_publicly(&["--insecure-no-token"], None).expect("told explicitly");
    serve_publicly(&[], Some(CONTROL_TOKEN)).expect("with a token");
    // A token that cannot travel in a header is refused up front.
    let bad = serve_publicly(&[], Some("has spaces in it")).expect_err("bad token");
    assert!(bad.contains("visible ASCII"), "{bad}");
}
