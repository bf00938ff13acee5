//! `thaw-bench generate`: the generate function on SmolLM2-135M (Q8_0 snapshot) through
//! a live `thaw serve`, against candle's own decode loop on the same snapshot in this
//! process, in the same run, both on one core.
//!
//! candle's loop is what candle's quantized examples do: `quantized_llama::ModelWeights`
//! from the GGUF, the prompt in one forward pass, then argmax and one forward pass per
//! token. The function adds thaw's chat template, sampling options, stop checks, the
//! Runtime API and HTTP. Both generate the same 64 greedy tokens past the end of turn.
//!
//! Three figures for the function: what generate measures inside the instance; a
//! client of the function URL asking for the whole reply; and a client asking with
//! `"stream": true`, whose first-token latency is the time until the first text line
//! reaches it over HTTP, and whose decode rate is the lines' arrival rate after that.

use std::io::{BufRead as _, BufReader, Cursor};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde_json::{json, Value};
use thaw_tests::snapshot_dir;

const RUNS: usize = 7;
const NEW_TOKENS: usize = 64;
const SNAPSHOT: &str = "smollm2-135m";
const SYSTEM: &str = "You are a Socratic tutor. Ask the learner exactly one short question.";
const USER: &str = "Topic: photosynthesis. The learner explained: \"Plants make food from sunlight.\" They did not mention chlorophyll. Ask one question about chlorophyll.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// candle's loop: (first-token ms, decode tok/s) per run.
fn raw_loop(prompt_ids: &[u32]) -> Result<Vec<(f64, f64)>, String> {
    let snapshot = thaw_snapshot::restore(&snapshot_dir(SNAPSHOT)).map_err(|e| e.to_string())?;
    let mut reader = Cursor::new(snapshot.weights());
    let content = gguf_file::Content::read(&mut reader).map_err(|e| e.to_string())?;
    let device = Device::Cpu;
    let mut model =
        ModelWeights::from_gguf(content, &mut reader, &device).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let step =
            |model: &mut ModelWeights, ids: &[u32], pos: usize| -> candle_core::Result<u32> {
                let input = Tensor::new(ids, &device)?.unsqueeze(0)?;
                let logits = model.forward(&input, pos)?.squeeze(0)?;
                logits.argmax(0)?.to_scalar::<u32>()
            };
        model.clear_kv_cache();
        let mut next = step(&mut model, prompt_ids, 0).map_err(|e| e.to_string())?;
        let first = started.elapsed();
        for pos in prompt_ids.len()..prompt_ids.len() + NEW_TOKENS - 1 {
            next = step(&mut model, &[next], pos).map_err(|e| e.to_string())?;
        }
        let decode = started.elapsed() - first;
        out.push((
            first.as_secs_f64() * 1e3,
            (NEW_TOKENS - 1) as f64 / decode.as_secs_f64(),
        ));
    }
    Ok(out)
}

pub(crate) fn report() {
    println!(
        "== generate: SmolLM2-135M Q8_0, one core, {NEW_TOKENS} greedy tokens, median of {RUNS} =="
    );
    let chat = match thaw_models::ChatModel::restore(&snapshot_dir(SNAPSHOT), &Device::Cpu) {
        Ok(m) => m,
        Err(e) => {
            println!("cannot load {SNAPSHOT}: {e}");
            return;
        }
    };
    let prompt = match chat.chat_prompt(SYSTEM, USER) {
        Ok(p) => p,
        Err(e) => {
            println!("cannot render the chat prompt: {e}");
            return;
        }
    };
    let prompt_ids = match chat.tokenize(&prompt) {
        Ok(ids) => ids,
        Err(e) => {
            println!("cannot tokenize: {e}");
            return;
        }
    };
    drop(chat);

    let s = thaw_tests::Serve::start(&format!(
        "[app]\nname = \"bench-generate\"\n\n[function.generate]\nbinary = \"generate\"\nsnapshot = \"{SNAPSHOT}\"\nmax_containers = 1\ntimeout = \"120s\"\n"
    ));
    let body = json!({
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": true,
    })
    .to_string();
    let ask = || -> Result<(Duration, Value), String> {
        let t = Instant::now();
        let r = s.post("/fn/generate/", body.as_bytes(), &[]);
        if r.status != 200 {
            return Err(String::from_utf8_lossy(&r.body).into_owned());
        }
        Ok((t.elapsed(), r.json()))
    };
    let streamed_body = {
        let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["stream"] = json!(true);
        v.to_string()
    };
    // Client-side: (ms to the first text line, ms to the done line, new tokens).
    let ask_streaming = || -> Result<(f64, f64, f64), String> {
        let t = Instant::now();
        let r = ureq::post(&format!("{}/fn/generate/", s.base))
            .timeout(Duration::from_secs(120))
            .send_string(&streamed_body)
            .map_err(|e| e.to_string())?;
        let mut first = None;
        for line in BufReader::new(r.into_reader()).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            match v["type"].as_str() {
                Some("delta") => {
                    first.get_or_insert_with(|| t.elapsed());
                }
                Some("done") => {
                    let first = first.unwrap_or_else(|| t.elapsed());
                    return Ok((
                        first.as_secs_f64() * 1e3,
                        t.elapsed().as_secs_f64() * 1e3,
                        v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0),
                    ));
                }
                _ => {}
            }
        }
        Err("the stream ended without its done line".into())
    };
    // The cold start, then the warm runs.
    if let Err(e) = ask() {
        println!("generate failed: {e}");
        return;
    }
    let mut function = Vec::new();
    for _ in 0..RUNS {
        match ask() {
            Ok((wall, v)) => {
                let t = &v["timings"];
                let tokens = v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0);
                function.push((
                    t["first_token_ms"].as_f64().unwrap_or(f64::NAN),
                    t["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                    wall.as_secs_f64() * 1e3,
                    tokens / wall.as_secs_f64(),
                ));
            }
            Err(e) => {
                println!("generate failed: {e}");
                return;
            }
        }
    }
    let mut streamed = Vec::new();
    for _ in 0..RUNS {
        match ask_streaming() {
            Ok(r) => streamed.push(r),
            Err(e) => {
                println!("generate (streaming) failed: {e}");
                return;
            }
        }
    }
    drop(s);
    let raw = match raw_loop(&prompt_ids) {
        Ok(r) => r,
        Err(e) => {
            println!("candle's loop failed: {e}");
            return;
        }
    };
    let raw_first = median(raw.iter().map(|r| r.0).collect());
    let raw_rate = median(raw.iter().map(|r| r.1).collect());
    let fn_first = median(function.iter().map(|r| r.0).collect());
    let fn_rate = median(function.iter().map(|r| r.1).collect());
    let wall = median(function.iter().map(|r| r.2).collect());
    let wall_rate = median(function.iter().map(|r| r.3).collect());
    println!(
        "prompt: {} tokens (the model's chat template)",
        prompt_ids.len()
    );
    println!("candle's raw loop:        first token {raw_first:.1} ms, decode {raw_rate:.0} tok/s");
    println!(
        "generate (in the instance): first token {fn_first:.1} ms ({:.2}x candle), decode {fn_rate:.0} tok/s ({:.2}x candle)",
        fn_first / raw_first,
        fn_rate / raw_rate
    );
    println!(
        "generate (client, whole reply over HTTP): {wall:.1} ms, {wall_rate:.0} tok/s end to end"
    );
    let client_first = median(streamed.iter().map(|r| r.0).collect());
    // The first line carries the first piece of text; the rest arrive as decoded.
    let client_rate = median(
        streamed
            .iter()
            .map(|(first, done, tokens)| (tokens - 1.0) / ((done - first) / 1e3))
            .collect(),
    );
    println!(
        "generate (client, streamed over HTTP): first token {client_first:.1} ms ({:.2}x candle), decode {client_rate:.0} tok/s ({:.2}x candle)",
        client_first / raw_first,
        client_rate / raw_rate
    );
}
