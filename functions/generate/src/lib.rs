//! `generate`: text generation with GGUF chat models.
//!
//! Request (`GenerateRequest`): `messages` (rendered with the model's own chat template)
//! or a plain `prompt`; `max_tokens` (default 256), `temperature` (default 1; 0 is greedy),
//! `top_p` (default 1), `seed` (default 0: the same request gives the same text), `stop`
//! (a string or up to 4), `repetition_penalty` (default 1, off), `ignore_eos`,
//! `return_logits` (the prompt's last-position logits and token ids, for parity checks and
//! scoring), `model` (which of the function's models, when it has several) and `metadata`
//! (any JSON, returned as given: the fan-out pattern keys its results with it).
//!
//! Reply (`GenerateResponse`): `text`, `finish_reason` (`stop` or `length`, as OpenAI),
//! `usage` (prompt, completion and total tokens), the new `token_ids`, `timings`
//! (prefill, first token, decode rate), and `model`.
//!
//! **Streaming.** With `"stream": true` the reply is streamed as it is generated (Lambda
//! response streaming; through thaw's function URL, a chunked `application/x-ndjson`
//! body), one JSON object per line:
//!
//! - `{"type":"start","model":..,"prompt_tokens":..}` once, with the first text;
//! - `{"type":"delta","text":".."}` as text is decoded (held back while it could be the
//!   start of a stop sequence);
//! - `{"type":"done", ..the whole reply..}` at the end, `text` included.
//!
//! An error before the first line is answered as without streaming (a `400` for bad
//! input); after it, the stream ends with Lambda's error trailer.
//!
//! A function may serve several models (`snapshots = { qwen = "...", llama = "..." }`):
//! each loads at init and a request names one by role or snapshot name.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thaw_fn::{Chunks, FnError, Function};
use thaw_models::{ChatModel, GenerateOptions, Generated, Message, ModelError};

/// Request limits; each can be set from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most new tokens one request may ask for (`GENERATE_MAX_TOKENS`, default 4096).
    pub max_tokens: usize,
    /// Longest prompt or message list in characters (`GENERATE_MAX_CHARS`, default 200,000).
    pub max_chars: usize,
    /// Wall time one generation may take, in seconds (`GENERATE_BUDGET_S`, default 25):
    /// past it the text so far is answered with `finish_reason: "length"`. Keep it below
    /// the function's `timeout` (30 s by default), which kills the call instead.
    pub budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            max_chars: 200_000,
            budget: Duration::from_secs(25),
        }
    }
}

impl Limits {
    /// Defaults, overridden by the environment where set and valid.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            max_tokens: thaw_fn::env_limit("GENERATE_MAX_TOKENS", d.max_tokens),
            max_chars: thaw_fn::env_limit("GENERATE_MAX_CHARS", d.max_chars),
            budget: Duration::from_secs(thaw_fn::env_limit(
                "GENERATE_BUDGET_S",
                d.budget.as_secs() as usize,
            ) as u64),
        }
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A generate request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Which model, by role or snapshot name (default: the function's only one).
    #[serde(default)]
    pub model: Option<String>,
    /// A conversation, rendered with the model's chat template.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// A plain prompt, tokenized as it is.
    #[serde(default)]
    pub prompt: Option<String>,
    /// New tokens at most (default 256).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Softmax temperature, 0 to 2 (default 1; 0 is greedy).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass, 0 to 1 (default 1; 0 keeps the top token only).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sampling seed (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Penalty on recently seen tokens, 1 (off) to 2.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Generate past the end-of-turn token.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Return the prompt's token ids and last-position logits.
    #[serde(default)]
    pub return_logits: Option<bool>,
    /// Returned as given.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Stream the reply as it is generated.
    #[serde(default)]
    pub stream: Option<bool>,
}

/// One line of a streamed reply.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    /// Before the first text.
    Start {
        /// The snapshot generating.
        model: String,
        /// Tokens in the prompt.
        prompt_tokens: usize,
    },
    /// The next piece of text.
    Delta {
        /// The piece.
        text: String,
    },
    /// The whole reply.
    Done(GenerateResponse),
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Reading the prompt.
    pub prefill_ms: f64,
    /// From the start to the first new token.
    pub first_token_ms: f64,
    /// Generating the new tokens.
    pub decode_ms: f64,
    /// New tokens per second of decoding.
    pub tokens_per_s: f64,
}

/// A generate reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateResponse {
    /// The snapshot that generated it.
    pub model: String,
    /// The new text (without a stop sequence).
    pub text: String,
    /// `stop` (end of turn or a stop sequence) or `length` (a bound).
    pub finish_reason: String,
    /// Token counts.
    pub usage: Usage,
    /// The new tokens' ids.
    pub token_ids: Vec<u32>,
    /// Where the time went.
    pub timings: Timings,
    /// With `return_logits`: the prompt's token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    /// With `return_logits`: the logits at the prompt's last position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    /// The request's `metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A validated request.
#[derive(Debug)]
struct Job {
    model: Option<String>,
    input: Input,
    opts: GenerateOptions,
    metadata: Option<Value>,
}

#[derive(Debug)]
enum Input {
    Prompt(String),
    Messages(Vec<Message>),
}

fn range<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    default: T,
    ok: impl Fn(T) -> bool,
    rule: &str,
) -> Result<T, FnError> {
    let v = value.unwrap_or(default);
    if ok(v) {
        Ok(v)
    } else {
        Err(FnError::invalid_input(format!(
            "\"{name}\" is {v}; it must be {rule}"
        )))
    }
}

impl GenerateRequest {
    fn validate(self, limits: Limits) -> Result<Job, FnError> {
        let input = match (self.prompt, self.messages) {
            (Some(_), Some(_)) => {
                return Err(FnError::invalid_input(
                    "give either \"prompt\" or \"messages\", not both",
                ))
            }
            (None, None) => {
                return Err(FnError::invalid_input(
                    "missing \"messages\" (a list of {role, content}) or \"prompt\"",
                ))
            }
            (Some(p), None) => Input::Prompt(p),
            (None, Some(m)) => Input::Messages(m),
        };
        let chars = match &input {
            Input::Prompt(p) => p.chars().count(),
            Input::Messages(m) => m.iter().map(|m| m.content.chars().count()).sum(),
        };
        if chars > limits.max_chars {
            return Err(FnError::payload_too_large(format!(
                "the input has {chars} characters; the limit is {}",
                limits.max_chars
            )));
        }
        match &input {
            Input::Prompt(p) if p.is_empty() => {
                return Err(FnError::invalid_input("\"prompt\" is empty"))
            }
            Input::Messages(m) if m.is_empty() => {
                return Err(FnError::invalid_input("\"messages\" is empty"))
            }
            Input::Messages(m) => {
                if let Some((i, bad)) = m
                    .iter()
                    .enumerate()
                    .find(|(_, m)| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
                {
                    return Err(FnError::invalid_input(format!(
                        "message {i} has role {:?}; roles are system, user and assistant",
                        bad.role
                    )));
                }
            }
            Input::Prompt(_) => {}
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(FnError::invalid_input(
                "\"stop\" takes up to 4 non-empty strings",
            ));
        }
        let max = limits.max_tokens;
        let opts = GenerateOptions {
            max_new_tokens: range(
                "max_tokens",
                self.max_tokens,
                256.min(max),
                |n| (1..=max).contains(&n),
                &format!("between 1 and {max}"),
            )?,
            temperature: range(
                "temperature",
                self.temperature,
                1.0,
                |t| (0.0..=2.0).contains(&t),
                "between 0 and 2",
            )?,
            top_p: range(
                "top_p",
                self.top_p,
                1.0,
                |p| (0.0..=1.0).contains(&p),
                "between 0 and 1",
            )?,
            repeat_penalty: range(
                "repetition_penalty",
                self.repetition_penalty,
                1.0,
                |p| (1.0..=2.0).contains(&p),
                "between 1 and 2",
            )?,
            seed: self.seed.unwrap_or(0),
            repeat_last_n: 64,
            budget: limits.budget,
            stop_at: None,
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            return_logits: self.return_logits.unwrap_or(false),
        };
        Ok(Job {
            model: self.model,
            input,
            opts,
            metadata: self.metadata,
        })
    }
}

/// One model the function serves, with the role the manifest gave it.
#[derive(Debug)]
pub struct Served {
    /// `snapshots = { role = ".." }`'s key; `None` for `snapshot = ".."`.
    pub role: Option<String>,
    /// The model.
    pub model: ChatModel,
}

/// The generate function.
#[derive(Debug)]
pub struct Generate {
    models: Vec<Served>,
    limits: Limits,
}

impl Generate {
    /// Serves `models` (at least one).
    pub fn new(models: Vec<Served>, limits: Limits) -> Self {
        Self { models, limits }
    }

    /// The index of the model a request names.
    fn pick(&self, wanted: Option<&str>) -> Result<usize, FnError> {
        let names = || {
            self.models
                .iter()
                .map(|s| s.role.clone().unwrap_or_else(|| s.model.name().to_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let index = match wanted {
            None if self.models.len() == 1 => 0,
            None => {
                return Err(FnError::invalid_input(format!(
                    "this function serves {} models ({}); name one with \"model\"",
                    self.models.len(),
                    names()
                )))
            }
            Some(w) => self
                .models
                .iter()
                .position(|s| s.role.as_deref() == Some(w) || s.model.name() == w)
                .ok_or_else(|| {
                    FnError::invalid_input(format!(
                        "no model {w:?} here; this function serves {}",
                        names()
                    ))
                })?,
        };
        Ok(index)
    }
}

/// The caller's input errors are `InvalidInput`; anything else is the model's.
fn model_error(e: ModelError) -> FnError {
    if e.is_input_error() {
        FnError::invalid_input(e.to_string())
    } else {
        FnError::model(e.to_string())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Generate {
    /// Validates a request and renders its prompt: everything that can fail before the
    /// first token.
    fn prepare(&mut self, request: GenerateRequest) -> Result<(usize, String, Job), FnError> {
        let job = request.validate(self.limits)?;
        let index = self.pick(job.model.as_deref())?;
        let model = &self.models[index].model;
        let prompt = match &job.input {
            Input::Prompt(p) => p.clone(),
            Input::Messages(m) => model.render(m).map_err(model_error)?,
        };
        Ok((index, prompt, job))
    }
}

/// The reply for a finished generation.
fn reply(model: &ChatModel, g: Generated, job: Job) -> GenerateResponse {
    let decode_s = g.decode.as_secs_f64();
    GenerateResponse {
        model: model.name().to_owned(),
        finish_reason: g.stop.finish_reason().to_owned(),
        usage: Usage {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.new_tokens,
            total_tokens: g.prompt_tokens + g.new_tokens,
        },
        timings: Timings {
            prefill_ms: ms(g.prefill),
            first_token_ms: ms(g.first_token),
            decode_ms: ms(g.decode),
            tokens_per_s: if decode_s > 0.0 {
                g.new_tokens as f64 / decode_s
            } else {
                0.0
            },
        },
        prompt_token_ids: job.opts.return_logits.then_some(g.prompt_ids),
        logits: g.logits,
        text: g.text,
        token_ids: g.token_ids,
        metadata: job.metadata,
    }
}

impl Function for Generate {
    type Request = GenerateRequest;
    type Response = GenerateResponse;

    fn handle(&mut self, request: GenerateRequest) -> Result<GenerateResponse, FnError> {
        let (index, prompt, job) = self.prepare(request)?;
        let model = &mut self.models[index].model;
        let g = model.generate(&prompt, &job.opts).map_err(model_error)?;
        Ok(reply(model, g, job))
    }

    fn streams(request: &GenerateRequest) -> bool {
        request.stream == Some(true)
    }

    fn handle_stream(&mut self, request: GenerateRequest, out: &mut Chunks) -> Result<(), FnError> {
        let (index, prompt, job) = self.prepare(request)?;
        let model = &mut self.models[index].model;
        let name = model.name().to_owned();
        let prompt_tokens = model.tokenize(&prompt).map_err(model_error)?.len();
        // The start line goes with the first line after it, so that everything that can
        // fail before the first token is still answered as a whole reply's error.
        let mut started = false;
        let mut send = |out: &mut Chunks, event: &StreamEvent| {
            if !std::mem::replace(&mut started, true) {
                let start = StreamEvent::Start {
                    model: name.clone(),
                    prompt_tokens,
                };
                if !out.send_json_line(&start) {
                    return false;
                }
            }
            out.send_json_line(event)
        };
        // A line that cannot be sent means the response can no longer be delivered (the
        // post to the platform failed): stop generating. A caller hanging up is not that:
        // the generation runs to its bounds, as a Lambda function does.
        let g = model
            .generate_streaming(&prompt, &job.opts, &mut |text| {
                send(
                    out,
                    &StreamEvent::Delta {
                        text: text.to_owned(),
                    },
                )
            })
            .map_err(model_error)?;
        send(out, &StreamEvent::Done(reply(model, g, job)));
        Ok(())
    }
}
