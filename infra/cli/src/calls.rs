//! `thaw spawn`, `thaw get`, `thaw cancel` and `thaw map`: durable calls from the shell.
//!
//! `thaw map` uploads its input with `spawn_map`, so every item is committed before it
//! starts, then pages the results in order with long-polls, writing them as NDJSON and
//! drawing progress. If the CLI is interrupted, the map runs on, and its results stay
//! at `GET /v1/maps/{id}`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{read_input, Endpoint};

/// How long one long-poll of `thaw get --wait` or `thaw map` lasts before it is renewed.
const POLL: u64 = 30;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(POLL + 30))
        .build()
}

fn http_error(e: ureq::Error, endpoint: &Endpoint) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, r) => {
            let body: Value = r.into_json().unwrap_or(Value::Null);
            let kind = body["error"]["type"].as_str().unwrap_or("Error");
            let msg = body["error"]["message"].as_str().unwrap_or("");
            anyhow::anyhow!("HTTP {code} {kind}: {msg}")
        }
        other => anyhow::anyhow!("cannot reach thaw serve at {}: {other}", endpoint.url()),
    }
}

/// `thaw spawn <fn> <input>`: prints the call id once the call is durable.
pub(crate) fn spawn(
    endpoint: &Endpoint,
    function: &str,
    input: &str,
    idempotency_key: Option<&str>,
) -> Result<()> {
    let body = read_input(input)?;
    serde_json::from_str::<Value>(&body).context("input is not valid JSON")?;
    let mut req = endpoint
        .authorize(agent().post(&format!("{}/v1/functions/{function}/spawn", endpoint.url())))
        .set("content-type", "application/json");
    if let Some(k) = idempotency_key {
        req = req.set("idempotency-key", k);
    }
    let v: Value = req
        .send_string(&body)
        .map_err(|e| http_error(e, endpoint))?
        .into_json()?;
    println!("{}", v["call_id"].as_str().unwrap_or_default());
    Ok(())
}

/// `thaw get <id> [--wait [S]]`: prints the call; exits non-zero unless it succeeded or
/// is still running. `--wait` alone waits for as long as the call takes.
pub(crate) fn get(endpoint: &Endpoint, id: &str, wait: Option<f64>) -> Result<()> {
    let until = wait.map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 1e9)));
    let record = loop {
        let left = until.map_or(0.0, |u| {
            u.saturating_duration_since(Instant::now())
                .as_secs_f64()
                .min(POLL as f64)
        });
        let v: Value = endpoint
            .authorize(agent().get(&format!("{}/v1/calls/{id}?wait={left:.3}", endpoint.url())))
            .call()
            .map_err(|e| http_error(e, endpoint))?
            .into_json()?;
        let status = v["status"].as_str().unwrap_or("");
        let finished = matches!(status, "succeeded" | "failed" | "cancelled");
        if finished || until.is_none_or(|u| Instant::now() >= u) {
            break v;
        }
    };
    println!("{}", serde_json::to_string_pretty(&record)?);
    match record["status"].as_str() {
        Some("failed") => bail!(
            "call {id} failed after {} attempt(s): {}",
            record["attempts"],
            record["error"]["message"].as_str().unwrap_or("")
        ),
        Some("cancelled") => bail!("call {id} was cancelled"),
        _ => Ok(()),
    }
}

/// `thaw cancel <id>`.
pub(crate) fn cancel(endpoint: &Endpoint, id: &str) -> Result<()> {
    let v: Value = endpoint
        .authorize(agent().delete(&format!("{}/v1/calls/{id}", endpoint.url())))
        .call()
        .map_err(|e| http_error(e, endpoint))?
        .into_json()?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `thaw map` options.
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// The function.
    function: String,
    /// NDJSON (one input per line) or a JSON array; - for stdin.
    #[arg(long, short)]
    input: PathBuf,
    /// Where the NDJSON results go [default: stdout].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Write results as they finish rather than in input order.
    #[arg(long)]
    unordered: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// `thaw map`: exits non-zero if any item failed.
pub(crate) fn map(args: &MapArgs) -> Result<()> {
    let endpoint = &args.endpoint;
    let started = Instant::now();
    let input: Box<dyn Read + Send> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            File::open(&args.input)
                .with_context(|| format!("cannot open {}", args.input.display()))?,
        )
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let upload = ProgressBar::new_spinner().with_message("uploading inputs");
    upload.enable_steady_tick(Duration::from_millis(120));
    let accepted: Value = endpoint
        .authorize(agent().post(&format!(
            "{}/v1/functions/{}/spawn_map",
            endpoint.url(),
            args.function
        )))
        .set("content-type", "application/x-ndjson")
        .send(input)
        .map_err(|e| http_error(e, endpoint))?
        .into_json()?;
    upload.finish_and_clear();
    let map_id = accepted["map_id"].as_str().unwrap_or_default().to_owned();
    let total = accepted["total"].as_u64().unwrap_or(0);
    if let Some(e) = accepted["input_error"].as_str() {
        eprintln!("warning: the input stopped early: {e}");
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done, {msg} ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("0 failed");
    let (mut offset, mut after, mut written) = (0u64, 0u64, 0u64);
    let (mut ok, mut failed) = (0u64, 0u64);
    while written < total {
        let page = if args.unordered {
            format!("order=completion&after={after}")
        } else {
            format!("offset={offset}")
        };
        let v: Value = endpoint
            .authorize(agent().get(&format!(
                "{}/v1/maps/{map_id}?{page}&limit=2000&wait={POLL}",
                endpoint.url()
            )))
            .call()
            .map_err(|e| http_error(e, endpoint))?
            .into_json()?;
        let results = v["results"].as_array().cloned().unwrap_or_default();
        for r in &results {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
            if r.get("ok").is_some() {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        written += results.len() as u64;
        offset = v["next_offset"].as_u64().unwrap_or(offset);
        after = v["next_after"].as_u64().unwrap_or(after);
        bar.set_position(written);
        bar.set_message(format!("{failed} failed"));
        if results.is_empty() && v["status"] == "done" {
            break;
        }
        if results.len() < 200 {
            // Let results accumulate rather than fetch them one by one.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "map {map_id}: {total} items, {ok} ok, {failed} failed in {secs:.1} s ({:.0} items/s)",
        total as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        bail!("{failed} of {total} items failed");
    }
    Ok(())
}
