//! A small quantized chat model (Llama family, GGUF Q8_0), for short bounded generations.
//!
//! Generation is seeded (same input, same output), bounded in new tokens and in wall
//! time, stops at the end of the assistant's turn, and penalises repeated tokens. The
//! prompt uses ChatML (`<|im_start|>role … <|im_end|>`), which SmolLM2-Instruct was trained on.

use std::io::Cursor;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use candle_transformers::utils::apply_repeat_penalty;
use thaw_snapshot::Architecture;
use tokenizers::Tokenizer;

use crate::error::{expect_architecture, tokenizer_path};
use crate::ModelError;

/// How a generation is bounded and sampled.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Divides the logits of tokens already in the recent context (1.0 is off).
    pub repeat_penalty: f32,
    /// How far back the penalty looks.
    pub repeat_last_n: usize,
    /// Stop when this much wall time has gone.
    pub budget: Duration,
    /// Stop once the text contains this character (kept), e.g. `?` for one question.
    pub stop_at: Option<char>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 48,
            seed: 42,
            temperature: 0.3,
            top_p: 0.9,
            repeat_penalty: 1.2,
            repeat_last_n: 64,
            budget: Duration::from_secs(5),
            stop_at: None,
        }
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The time budget ran out.
    Budget,
    /// The text reached `stop_at`.
    StopChar,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The decoded new text.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt processing time.
    pub prefill: Duration,
    /// Time spent generating the new tokens.
    pub decode: Duration,
}

/// A chat model restored from a `llama-gguf` snapshot.
pub struct ChatModel {
    model: ModelWeights,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    name: String,
    device: Device,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ChatModel {
    /// Restores the snapshot at `dir`: the GGUF tensors come straight from the mapping.
    pub fn restore(dir: &std::path::Path, device: &Device) -> Result<Self, ModelError> {
        let snapshot = thaw_snapshot::restore(dir)?;
        let meta = &snapshot.meta;
        expect_architecture(meta, Architecture::LlamaGguf, "llama-gguf")?;
        let tokenizer_path = tokenizer_path(&snapshot)?;
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let mut reader = Cursor::new(snapshot.weights());
        let content = gguf_file::Content::read(&mut reader)?;
        let model = ModelWeights::from_gguf(content, &mut reader, device)?;
        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        if let Some(eos) = meta
            .model_config
            .get("eos_token_id")
            .and_then(serde_json::Value::as_u64)
        {
            stop_ids.push(eos as u32);
        }
        Ok(Self {
            model,
            tokenizer,
            stop_ids,
            name: meta.name.clone(),
            device: device.clone(),
        })
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A ChatML prompt of a system and a user message, ready for the assistant's turn.
    pub fn chat_prompt(system: &str, user: &str) -> String {
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
    }

    /// Generates the assistant's reply to `prompt`.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: GenerateOptions,
    ) -> Result<Generated, ModelError> {
        let started = Instant::now();
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        let mut context: Vec<u32> = encoding.get_ids().to_vec();
        let prompt_tokens = context.len();
        let sampling = if opts.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            Sampling::TopP {
                p: opts.top_p,
                temperature: opts.temperature,
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(opts.seed, sampling);
        self.model.clear_kv_cache();
        let input = Tensor::new(context.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut logits = self.model.forward(&input, 0)?;
        let prefill = started.elapsed();
        let mut generated: Vec<u32> = Vec::new();
        let stop = loop {
            let last = logits.squeeze(0)?.to_dtype(DType::F32)?;
            let last = if opts.repeat_penalty == 1.0 {
                last
            } else {
                let from = context.len().saturating_sub(opts.repeat_last_n);
                apply_repeat_penalty(&last, opts.repeat_penalty, &context[from..])?
            };
            let next = sampler.sample(&last)?;
            if self.stop_ids.contains(&next) {
                break StopReason::EndOfTurn;
            }
            generated.push(next);
            context.push(next);
            if let Some(c) = opts.stop_at {
                let text = self
                    .tokenizer
                    .decode(&generated, true)
                    .map_err(|e| ModelError::Tokenize(e.to_string()))?;
                if text.contains(c) {
                    break StopReason::StopChar;
                }
            }
            if generated.len() >= opts.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if started.elapsed() >= opts.budget {
                break StopReason::Budget;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = self.model.forward(&input, context.len() - 1)?;
        };
        let text = self
            .tokenizer
            .decode(&generated, true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(Generated {
            text,
            prompt_tokens,
            new_tokens: generated.len(),
            stop,
            prefill,
            decode: started.elapsed() - prefill,
        })
    }
}
