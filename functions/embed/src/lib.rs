//! `embed`: text in, L2-normalised sentence embeddings out.
//!
//! Request: `{"texts": [..]}` or `{"text": ".."}`, with `normalize` (default true),
//! `truncate` (default true; when false, over-length input is an `InvalidInput` error) and
//! `instruction` (alias `prefix`): text put before every input, as INSTRUCTOR
//! (`"Represent the question for retrieving supporting documents: "`) and e5 (`"query: "`,
//! `"passage: "`) models are trained to see. It is part of the input: it counts towards
//! the length limits and is pooled with the rest.
//! Reply: `{"embeddings", "dims", "model", "tokens"}`, `tokens` per text.
//!
//! Under dynamic batching, every valid request of a batch shares the forward passes.

use serde::{Deserialize, Serialize};
use thaw_fn::{FnError, Function};
use thaw_models::{EncodeOptions, ModelError, SentenceEncoder};

/// An embed request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Several texts.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// One text.
    #[serde(default)]
    pub text: Option<String>,
    /// L2-normalise (default true).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Truncate over-length input (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Put before every text (INSTRUCTOR instructions, e5's `query: `).
    #[serde(default, alias = "prefix")]
    pub instruction: Option<String>,
}

/// An embed reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbedResponse {
    /// One vector per text, in order.
    pub embeddings: Vec<Vec<f32>>,
    /// Vector width.
    pub dims: usize,
    /// The snapshot name.
    pub model: String,
    /// Tokens per text after truncation, special tokens included.
    pub tokens: Vec<usize>,
}

/// Request limits; each can be set from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most texts in one request (`EMBED_MAX_TEXTS`, default 256).
    pub max_texts: usize,
    /// Longest text in characters (`EMBED_MAX_CHARS`, default 100,000).
    pub max_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_texts: 256,
            max_chars: 100_000,
        }
    }
}

impl Limits {
    /// Defaults, overridden by the environment where set and valid.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            max_texts: thaw_fn::env_limit("EMBED_MAX_TEXTS", d.max_texts),
            max_chars: thaw_fn::env_limit("EMBED_MAX_CHARS", d.max_chars),
        }
    }
}

/// A validated request.
#[derive(Debug)]
struct Job {
    texts: Vec<String>,
    opts: EncodeOptions,
}

impl EmbedRequest {
    fn validate(self, limits: Limits) -> Result<Job, FnError> {
        let texts = match (self.texts, self.text) {
            (Some(_), Some(_)) => {
                return Err(FnError::invalid_input(
                    "give either \"text\" or \"texts\", not both",
                ))
            }
            (Some(texts), None) => texts,
            (None, Some(text)) => vec![text],
            (None, None) => {
                return Err(FnError::invalid_input(
                    "missing \"texts\" (array of strings) or \"text\"",
                ))
            }
        };
        if texts.is_empty() {
            return Err(FnError::invalid_input("\"texts\" is empty"));
        }
        let texts = match self.instruction.as_deref() {
            None | Some("") => texts,
            Some(instruction) => texts
                .into_iter()
                .map(|t| format!("{instruction}{t}"))
                .collect(),
        };
        if texts.len() > limits.max_texts {
            return Err(FnError::payload_too_large(format!(
                "{} texts in one request; the limit is {}",
                texts.len(),
                limits.max_texts
            )));
        }
        if let Some((i, t)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.chars().count() > limits.max_chars)
        {
            return Err(FnError::payload_too_large(format!(
                "text {i} has {} characters; the limit is {}",
                t.chars().count(),
                limits.max_chars
            )));
        }
        let opts = EncodeOptions {
            normalize: self.normalize.unwrap_or(true),
            truncate: self.truncate.unwrap_or(true),
        };
        Ok(Job { texts, opts })
    }
}

/// The embed function: a sentence encoder and its limits.
#[derive(Debug)]
pub struct Embed {
    encoder: SentenceEncoder,
    limits: Limits,
}

impl Embed {
    /// Wraps a loaded encoder.
    pub fn new(encoder: SentenceEncoder, limits: Limits) -> Self {
        Self { encoder, limits }
    }

    fn run(&self, job: &Job) -> Result<EmbedResponse, FnError> {
        let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
        let encoded = self.encoder.encode(&texts, job.opts).map_err(model_error)?;
        Ok(EmbedResponse {
            embeddings: encoded.embeddings,
            dims: self.encoder.dims(),
            model: self.encoder.name().to_owned(),
            tokens: encoded.tokens,
        })
    }
}

/// Over-length input is the caller's error; anything else is the model's.
pub fn model_error(e: ModelError) -> FnError {
    match e {
        ModelError::InputTooLong { .. } => FnError::invalid_input(e.to_string()),
        other => FnError::model(other.to_string()),
    }
}

impl Function for Embed {
    type Request = EmbedRequest;
    type Response = EmbedResponse;

    fn handle(&mut self, request: EmbedRequest) -> Result<EmbedResponse, FnError> {
        let job = request.validate(self.limits)?;
        self.run(&job)
    }

    fn handle_batch(&mut self, requests: Vec<EmbedRequest>) -> Vec<Result<EmbedResponse, FnError>> {
        let jobs: Vec<Result<Job, FnError>> = requests
            .into_iter()
            .map(|r| r.validate(self.limits))
            .collect();
        // Requests that share options share forward passes: concatenate their texts,
        // encode once, and split the result back.
        let mut results: Vec<Option<Result<EmbedResponse, FnError>>> =
            Vec::with_capacity(jobs.len());
        let mut groups: Vec<(bool, bool, Vec<usize>)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            match job {
                Err(e) => results.push(Some(Err(e.clone()))),
                Ok(job) => {
                    results.push(None);
                    let key = (job.opts.normalize, job.opts.truncate);
                    match groups.iter_mut().find(|g| (g.0, g.1) == key) {
                        Some(g) => g.2.push(i),
                        None => groups.push((key.0, key.1, vec![i])),
                    }
                }
            }
        }
        for (normalize, truncate, members) in groups {
            let valid: Vec<&Job> = members
                .iter()
                .filter_map(|&i| jobs[i].as_ref().ok())
                .collect();
            if valid.len() == 1 || !truncate {
                // A non-truncating request can fail alone; keep its neighbours out of it.
                for (&i, job) in members.iter().zip(valid) {
                    results[i] = Some(self.run(job));
                }
                continue;
            }
            let texts: Vec<String> = valid.iter().flat_map(|j| j.texts.iter().cloned()).collect();
            let merged = Job {
                texts,
                opts: EncodeOptions {
                    normalize,
                    truncate,
                },
            };
            match self.run(&merged) {
                Ok(all) => {
                    let mut embeddings = all.embeddings.into_iter();
                    let mut tokens = all.tokens.into_iter();
                    for (&i, job) in members.iter().zip(valid) {
                        let n = job.texts.len();
                        results[i] = Some(Ok(EmbedResponse {
                            embeddings: embeddings.by_ref().take(n).collect(),
                            dims: all.dims,
                            model: all.model.clone(),
                            tokens: tokens.by_ref().take(n).collect(),
                        }));
                    }
                }
                Err(e) => {
                    for &i in &members {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(FnError::invalid_input("request was not processed"))))
            .collect()
    }
}
