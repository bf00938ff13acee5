//! `thaw invoke`, `thaw status` and `thaw logs`: clients of a running `thaw serve`.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub(crate) struct Endpoint {
    /// thaw serve's address.
    #[arg(long, env = "THAW_ENDPOINT", default_value = "http://127.0.0.1:8787")]
    endpoint: String,
    /// The control-plane token thaw serve was started with, sent as a bearer token.
    #[arg(long, env = "THAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Endpoint {
    /// The base URL, without a trailing slash.
    pub(crate) fn url(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }

    /// `req` with the token, if there is one.
    pub(crate) fn authorize(&self, req: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }
}

/// An input argument: inline JSON, `@file`, or `-` for stdin.
pub(crate) fn read_input(input: &str) -> Result<String> {
    Ok(match input {
        "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        s if s.starts_with('@') => {
            std::fs::read_to_string(&s[1..]).with_context(|| format!("read {}", &s[1..]))?
        }
        s => s.to_owned(),
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .build()
}

/// `thaw invoke <fn> <json|@file|->`: prints the payload; exits non-zero on any error.
pub(crate) fn invoke(endpoint: &Endpoint, function: &str, input: &str) -> Result<()> {
    let body = read_input(input)?;
    serde_json::from_str::<Value>(&body).context("input is not valid JSON")?;
    let url = format!(
        "{}/2015-03-31/functions/{function}/invocations",
        endpoint.url()
    );
    let resp = match endpoint
        .authorize(agent().post(&url))
        .set("content-type", "application/json")
        .send_string(&body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!("{function}: HTTP {code}: {text}");
        }
        Err(e) => bail!("cannot reach thaw serve at {}: {e}", endpoint.endpoint),
    };
    let function_error = resp.header("x-amz-function-error").map(str::to_owned);
    let text = resp.into_string()?;
    println!("{text}");
    if let Some(kind) = function_error {
        bail!("{function} returned a function error ({kind})");
    }
    Ok(())
}

fn get_json(endpoint: &Endpoint, path: &str) -> Result<Value> {
    let url = format!("{}{path}", endpoint.url());
    match endpoint.authorize(agent().get(&url)).call() {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            bail!("HTTP {code}: {}", r.into_string().unwrap_or_default())
        }
        Err(e) => bail!("cannot reach thaw serve at {}: {e}", endpoint.endpoint),
    }
}

/// `thaw status`: a table of functions and instances.
pub(crate) fn status(endpoint: &Endpoint) -> Result<()> {
    let v = get_json(endpoint, "/v1/functions")?;
    println!(
        "{:<12} {:>5} {:>5} {:>5} {:>8} {:>6} {:>6} {:>5} {:>15}",
        "FUNCTION", "MIN", "MAX", "CONC", "STARTING", "IDLE", "BUSY", "QUEUE", "DURABLE Q/RUN"
    );
    for f in v["functions"].as_array().into_iter().flatten() {
        let (c, s) = (&f["config"], &f["state"]);
        let n = |v: &Value| v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
        let durable = format!(
            "{}/{}",
            n(&f["durable"]["queued"]),
            n(&f["durable"]["running"])
        );
        println!(
            "{:<12} {:>5} {:>5} {:>5} {:>8} {:>6} {:>6} {:>5} {:>15}",
            f["name"].as_str().unwrap_or("?"),
            n(&c["min_containers"]),
            n(&c["max_containers"]),
            n(&c["concurrency"]),
            n(&s["starting"]),
            n(&s["idle"]),
            n(&s["busy"]),
            n(&s["queue_depth"]),
            durable
        );
        for i in s["instances"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:<9} pid {:<8} in flight {}",
                i["id"].as_str().unwrap_or("?"),
                i["state"].as_str().unwrap_or("?"),
                i["pid"].as_u64().unwrap_or(0),
                i["in_flight"].as_u64().unwrap_or(0)
            );
        }
        println!("  sandbox: {}", sandbox_line(&f["sandbox"]));
        if let Some(e) = s["init_error"].as_str() {
            println!("  init error: {e}");
        }
    }
    Ok(())
}

/// One line saying which sandbox parts a function's instances get.
fn sandbox_line(s: &Value) -> String {
    if s["enabled"] != Value::Bool(true) {
        return "OFF (--no-sandbox): bare processes, no limits".to_owned();
    }
    let on = |b: &Value| {
        if b.as_bool() == Some(true) {
            "on"
        } else {
            "OFF"
        }
    };
    let mib = |v: &Value| {
        v.as_u64()
            .map_or_else(|| "none".to_owned(), |b| format!("{} MiB", b >> 20))
    };
    let mut line = format!(
        "pid ns {}, mount ns {}, user {}, network {}, cgroup {} (memory {}, pids {}, cpu {})",
        on(&s["pid_namespace"]),
        on(&s["mount_namespace"]),
        s["user"].as_str().unwrap_or("?"),
        s["network"].as_str().unwrap_or("?"),
        s["cgroup"].as_str().unwrap_or("?"),
        mib(&s["memory_limit"]),
        s["pids_limit"]
            .as_u64()
            .map_or_else(|| "none".to_owned(), |n| n.to_string()),
        s["cpu_limit"]
            .as_f64()
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
    );
    for m in s["missing"].as_array().into_iter().flatten() {
        line.push_str(&format!("\n    missing: {}", m.as_str().unwrap_or("?")));
    }
    line
}

/// `thaw logs <fn> [--follow]`.
pub(crate) fn logs(endpoint: &Endpoint, function: &str, follow: bool, tail: usize) -> Result<()> {
    let mut since = 0u64;
    let mut first = true;
    loop {
        let n = if first { tail } else { 2000 };
        let v = get_json(
            endpoint,
            &format!("/v1/functions/{function}/logs?tail={n}&since={since}"),
        )?;
        for l in v["lines"].as_array().into_iter().flatten() {
            since = since.max(l["ts_ms"].as_u64().unwrap_or(0));
            println!(
                "[{}] {}",
                l["instance"].as_str().unwrap_or("?"),
                l["line"].as_str().unwrap_or("")
            );
        }
        first = false;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
