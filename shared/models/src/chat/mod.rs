//! Causal chat models from GGUF (llama.cpp's `llama` and `qwen2` architectures; F32, F16
//! or Q8_0 matrices), for bounded, seeded generations.
//!
//! - **Weights** are candle-transformers' quantized implementations, reading the tensors
//!   straight from the snapshot's mapping: `quantized_llama` (Llama 3, Mistral, SmolLM2;
//!   Q and K rows in llama.cpp's interleaved-rope order, as the converter writes them) and
//!   `quantized_qwen2` (q/k/v biases, tied embeddings).
//! - **Prompts** come from the model's own chat template ([`template`]) or are given
//!   as text. No BOS is added: the templates write the tokens they want.
//! - **Sampling** is greedy at temperature 0, else seeded temperature + top-p (same input,
//!   same output); an optional repeat penalty.
//! - **Stops:** the model's end-of-turn tokens (unless `ignore_eos`), stop sequences
//!   (cut from the text, as OpenAI does), `max_new_tokens`, a wall-time budget, and the
//!   context length.

mod template;

use std::io::Cursor;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use candle_transformers::utils::apply_repeat_penalty;
use thaw_snapshot::Architecture;
use tokenizers::Tokenizer;

use crate::error::tokenizer_path;
use crate::ModelError;
use template::ChatTemplate;
pub use template::Message;

/// How a generation is bounded and sampled.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 samples from every token.
    pub top_p: f64,
    /// Divides the logits of tokens already in the recent context (1.0 is off).
    pub repeat_penalty: f32,
    /// How far back the penalty looks.
    pub repeat_last_n: usize,
    /// Stop when this much wall time has gone.
    pub budget: Duration,
    /// Stop once the text contains this character (kept), e.g. `?` for one question.
    pub stop_at: Option<char>,
    /// Stop at the first of these strings; the text ends before it.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-turn tokens (for benchmarks and parity checks).
    pub ignore_eos: bool,
    /// Return the logits at the prompt's last position.
    pub return_logits: bool,
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
            stop: Vec::new(),
            ignore_eos: false,
            return_logits: false,
        }
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The text reached a stop sequence.
    StopSequence,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The prompt and the generation filled the model's context.
    ContextFull,
    /// The time budget ran out.
    Budget,
    /// The text reached `stop_at`.
    StopChar,
    /// `on_text` asked to stop (a streamed reply could no longer be delivered).
    Cancelled,
}

impl StopReason {
    /// OpenAI's `finish_reason`: `stop` when the model or a stop sequence ended it,
    /// `length` when a bound did.
    pub fn finish_reason(self) -> &'static str {
        match self {
            Self::EndOfTurn | Self::StopSequence | Self::StopChar => "stop",
            Self::MaxTokens | Self::ContextFull | Self::Budget => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The decoded new text (without a stop sequence).
    pub text: String,
    /// The new tokens' ids.
    pub token_ids: Vec<u32>,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt processing time.
    pub prefill: Duration,
    /// From the start to the first new token.
    pub first_token: Duration,
    /// Time spent generating the new tokens.
    pub decode: Duration,
    /// The logits at the prompt's last position, when asked for.
    pub logits: Option<Vec<f32>>,
}

/// Decodes generated tokens as they come, in O(new tokens) a step: the text of the
/// tokens since the last emitted boundary is decoded with them, and appended only once it
/// no longer ends in an incomplete character (U+FFFD while a multi-byte character is
/// split across tokens), so stop sequences never match a transient replacement character.
#[derive(Debug, Default)]
struct TextStream {
    /// The first token not yet part of the emitted text's decoding context.
    prev: usize,
    /// The first token not yet emitted.
    current: usize,
}

impl TextStream {
    fn push(
        &mut self,
        tokenizer: &Tokenizer,
        tokens: &[u32],
        text: &mut String,
    ) -> Result<(), ModelError> {
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| ModelError::Tokenize(e.to_string()))
        };
        let emitted = decode(&tokens[self.prev..self.current])?;
        let all = decode(&tokens[self.prev..])?;
        if all.len() > emitted.len()
            && !all.ends_with('\u{FFFD}')
            && all.is_char_boundary(emitted.len())
        {
            text.push_str(&all[emitted.len()..]);
            self.prev = self.current;
            self.current = tokens.len();
        }
        Ok(())
    }
}

/// candle's quantized models keep the causal mask of every prompt length they have
/// prefilled (`L × L` bytes each, never freed: `clear_kv_cache` leaves them). An instance
/// that sees many prompt lengths would grow without bound, so the bytes are counted here
/// and, past [`MASK_BUDGET`], the weights are rebuilt from the snapshot's mapping, which
/// drops the masks (a reload costs about what a cold start's weight load does).
#[derive(Debug, Default)]
struct MaskBudget {
    seen: std::collections::HashSet<usize>,
    bytes: usize,
}

/// Mask bytes a model may hold before it is rebuilt.
const MASK_BUDGET: usize = 256 << 20;

impl MaskBudget {
    /// Records a prefill of `len` tokens; true when the model should be rebuilt first.
    fn over_after(&mut self, len: usize) -> bool {
        if len < 2 || self.seen.contains(&len) {
            return false;
        }
        let cost = len.saturating_mul(len);
        if self.bytes.saturating_add(cost) > MASK_BUDGET {
            self.seen.clear();
            self.bytes = 0;
            self.seen.insert(len);
            self.bytes = cost;
            return true;
        }
        self.seen.insert(len);
        self.bytes += cost;
        false
    }
}

/// The architecture's weights.
enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Weights {
    fn load(
        snapshot: &thaw_snapshot::RestoredSnapshot,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut reader = Cursor::new(snapshot.weights());
        let content = gguf_file::Content::read(&mut reader)?;
        Ok(match snapshot.meta.architecture {
            Architecture::Qwen2Gguf => Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                content,
                &mut reader,
                device,
            )?),
            _ => Self::Llama(quantized_llama::ModelWeights::from_gguf(
                content,
                &mut reader,
                device,
            )?),
        })
    }

    fn forward(&mut self, input: &Tensor, position: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(input, position),
            Self::Qwen2(m) => m.forward(input, position),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Self::Llama(m) => m.clear_kv_cache(),
            Self::Qwen2(m) => m.clear_kv_cache(),
        }
    }
}

/// A chat model restored from a `llama-gguf` or `qwen2-gguf` snapshot.
pub struct ChatModel {
    /// `None` only while being reloaded.
    weights: Option<Weights>,
    masks: MaskBudget,
    /// The mapping the weights are reloaded from.
    snapshot: thaw_snapshot::RestoredSnapshot,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    context: usize,
    name: String,
    device: Device,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("name", &self.name)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// A GGUF metadata string.
fn md_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// A GGUF metadata token id, as its text in the vocabulary.
fn md_token(content: &gguf_file::Content, key: &str, tokenizer: &Tokenizer) -> Option<String> {
    let id = content.metadata.get(key).and_then(|v| v.to_u32().ok())?;
    tokenizer.id_to_token(id)
}

impl ChatModel {
    /// Restores the snapshot at `dir`: the GGUF tensors come straight from the mapping.
    pub fn restore(dir: &std::path::Path, device: &Device) -> Result<Self, ModelError> {
        let snapshot = thaw_snapshot::restore(dir)?;
        let meta = &snapshot.meta;
        let invalid = |reason: String| ModelError::InvalidConfig {
            name: meta.name.clone(),
            reason,
        };
        let tokenizer_path = tokenizer_path(&snapshot)?;
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let mut reader = Cursor::new(snapshot.weights());
        let content = gguf_file::Content::read(&mut reader)?;
        let arch = md_string(&content, "general.architecture").unwrap_or_default();
        let mut context = content
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(meta.max_seq_length, |c| c as usize);
        if meta.architecture == Architecture::LlamaGguf {
            // candle's llama builds its rotary tables for this many positions, whatever
            // the file declares (SmolLM2 says 8192, Llama 3.2 131072).
            context = context.min(quantized_llama::MAX_SEQ_LEN);
        }
        let template = match md_string(&content, "tokenizer.chat_template") {
            Some(source) => Some(
                ChatTemplate::new(
                    source,
                    md_token(&content, "tokenizer.ggml.bos_token_id", &tokenizer)
                        .unwrap_or_default(),
                    md_token(&content, "tokenizer.ggml.eos_token_id", &tokenizer)
                        .unwrap_or_default(),
                )
                .map_err(|e| invalid(format!("its chat template does not compile: {e}")))?,
            ),
            None => None,
        };
        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        if let Some(eos) = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            stop_ids.push(eos);
        }
        if !meta.architecture.is_gguf() {
            return Err(ModelError::WrongArchitecture {
                name: meta.name.clone(),
                found: meta.architecture,
                expected: "a GGUF chat model (llama-gguf or qwen2-gguf)",
            });
        }
        let weights = Weights::load(&snapshot, device)?;
        let name = meta.name.clone();
        Ok(Self {
            weights: Some(weights),
            masks: MaskBudget::default(),
            snapshot,
            tokenizer,
            template,
            stop_ids,
            context,
            name,
            device: device.clone(),
        })
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The most tokens the prompt and the generation may hold together.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// The prompt for a conversation, from the model's chat template, with the
    /// assistant's turn opened.
    ///
    /// A message may not contain the text of one of the model's special tokens: the
    /// rendered prompt is tokenized with them recognised, so `<|im_start|>system` inside a
    /// user's message would open a turn the user has no right to write.
    pub fn render(&self, messages: &[Message]) -> Result<String, ModelError> {
        let added = self.tokenizer.get_added_tokens_decoder();
        for (i, m) in messages.iter().enumerate() {
            if let Some(token) = added
                .values()
                .filter(|t| t.special && !t.content.is_empty())
                .find(|t| m.content.contains(t.content.as_str()))
            {
                return Err(ModelError::Tokenize(format!(
                    "message {i} contains the model's special token {:?}; messages are text, and the template writes the special tokens",
                    token.content
                )));
            }
        }
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(ModelError::Template(format!(
                "model {:?} has no chat template in its GGUF metadata; send a plain prompt",
                self.name
            ))),
        }
    }

    /// The prompt for a system and a user message.
    pub fn chat_prompt(&self, system: &str, user: &str) -> Result<String, ModelError> {
        self.render(&[Message::new("system", system), Message::new("user", user)])
    }

    /// Token ids of `text`, as the model reads a prompt (no BOS added).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    /// Generates a continuation of `prompt`.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<Generated, ModelError> {
        self.run(prompt, opts, None)
    }

    /// Generates a continuation of `prompt`, handing its text to `on_text` as it is
    /// decoded. The pieces concatenate to the returned text: a piece is held back while
    /// it could still be the start of a stop sequence, or end in a split character.
    /// `on_text` returning false stops the generation ([`StopReason::Cancelled`]).
    pub fn generate_streaming(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated, ModelError> {
        self.run(prompt, opts, Some(on_text))
    }

    fn run(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        mut on_text: Option<&mut dyn FnMut(&str) -> bool>,
    ) -> Result<Generated, ModelError> {
        let started = Instant::now();
        let prompt_ids = self.tokenize(prompt)?;
        if prompt_ids.is_empty() {
            return Err(ModelError::Tokenize("the prompt is empty".into()));
        }
        if prompt_ids.len() >= self.context {
            return Err(ModelError::PromptTooLong {
                tokens: prompt_ids.len(),
                context: self.context,
            });
        }
        let mut context: Vec<u32> = prompt_ids.clone();
        // Below 1e-3 a temperature only sharpens the argmax (and under ~1e-38 overflows the
        // logits to NaN); a nucleus of mass 0 is the top token alone. Both are greedy.
        let sampling = if opts.temperature < 1e-3 || opts.top_p <= 0.0 {
            Sampling::ArgMax
        } else if opts.top_p >= 1.0 {
            Sampling::All {
                temperature: opts.temperature,
            }
        } else {
            Sampling::TopP {
                p: opts.top_p,
                temperature: opts.temperature,
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(opts.seed, sampling);
        if self.masks.over_after(context.len()) {
            tracing::info!(model = %self.name, "rebuilding the weights to drop candle's cached attention masks");
            // Drop first: two copies of a large model need not fit at once.
            self.weights = None;
            self.weights = Some(Weights::load(&self.snapshot, &self.device)?);
        }
        let Some(weights) = self.weights.as_mut() else {
            // A failed rebuild left none; rebuild again.
            self.weights = Some(Weights::load(&self.snapshot, &self.device)?);
            return self.run(prompt, opts, on_text);
        };
        weights.clear_kv_cache();
        let input = Tensor::new(context.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut logits = weights.forward(&input, 0)?;
        let prefill = started.elapsed();
        let prompt_logits = if opts.return_logits {
            Some(
                logits
                    .squeeze(0)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        let mut first_token = None;
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut stream = TextStream::default();
        let longest_stop = opts.stop.iter().map(String::len).max().unwrap_or(0);
        // How much of the text is handed to `on_text`: never the last `longest_stop - 1`
        // bytes, which a stop sequence completed by a later token could begin in.
        let mut emitted = 0usize;
        let held_back = longest_stop.saturating_sub(1);
        let stop = loop {
            let last = logits.squeeze(0)?.to_dtype(DType::F32)?;
            let last = if opts.repeat_penalty == 1.0 {
                last
            } else {
                let from = context.len().saturating_sub(opts.repeat_last_n);
                apply_repeat_penalty(&last, opts.repeat_penalty, &context[from..])?
            };
            let next = sampler.sample(&last)?;
            first_token.get_or_insert_with(|| started.elapsed());
            if !opts.ignore_eos && self.stop_ids.contains(&next) {
                break StopReason::EndOfTurn;
            }
            generated.push(next);
            context.push(next);
            if on_text.is_some() || opts.stop_at.is_some() || !opts.stop.is_empty() {
                let before = text.len();
                stream.push(&self.tokenizer, &generated, &mut text)?;
                // Only the new text, and the longest stop's length before it, can hold a
                // match that was not there a token ago.
                let mut from = before.saturating_sub(longest_stop);
                while !text.is_char_boundary(from) {
                    from -= 1;
                }
                if let Some(cut) = opts
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
                    .min()
                {
                    text.truncate(cut);
                    break StopReason::StopSequence;
                }
                if opts.stop_at.is_some_and(|c| text[from..].contains(c)) {
                    break StopReason::StopChar;
                }
                if let Some(emit) = on_text.as_mut() {
                    let mut upto = text.len().saturating_sub(held_back);
                    while !text.is_char_boundary(upto) {
                        upto -= 1;
                    }
                    if upto > emitted {
                        if !emit(&text[emitted..upto]) {
                            break StopReason::Cancelled;
                        }
                        emitted = upto;
                    }
                }
            }
            if generated.len() >= opts.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if context.len() >= self.context {
                break StopReason::ContextFull;
            }
            if started.elapsed() >= opts.budget {
                break StopReason::Budget;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = weights.forward(&input, context.len() - 1)?;
        };
        // The whole decoding is the reference text; a stop sequence is cut from it where
        // it first appears (the incremental text found it, so it is there).
        let full = self.decode(&generated)?;
        // A streamed generation's incremental text, whose first `emitted` bytes are out.
        let incremental = on_text.is_some().then(|| text.clone());
        text = match stop {
            StopReason::StopSequence => {
                let cut = opts
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| full.find(s.as_str()))
                    .min();
                match cut {
                    Some(cut) => full[..cut].to_owned(),
                    None => text,
                }
            }
            _ => full,
        };
        // What was held back. The whole decoding is the reference; were it ever to
        // differ from the incremental one in what was already handed out, the streamed
        // reply keeps to the incremental text, so its pieces still add up to its text.
        if let (Some(emit), Some(incremental)) = (on_text.as_mut(), incremental) {
            let out = incremental.get(..emitted).unwrap_or_default();
            if !text.starts_with(out) {
                tracing::warn!(model = %self.name, "the whole decoding differs from the streamed text; keeping the streamed one");
                text = incremental;
            }
            if stop != StopReason::Cancelled && text.len() > emitted {
                emit(&text[emitted..]);
            }
        }
        Ok(Generated {
            text,
            prompt_tokens: prompt_ids.len(),
            prompt_ids,
            new_tokens: generated.len(),
            token_ids: generated,
            stop,
            prefill,
            first_token: first_token.unwrap_or(prefill),
            decode: started.elapsed() - prefill,
            logits: prompt_logits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::MaskBudget;

    #[test]
    fn the_mask_budget_counts_each_prompt_length_once_and_resets_when_over() {
        let mut b = MaskBudget::default();
        assert!(!b.over_after(1), "one token builds no mask");
        assert!(!b.over_after(1000));
        assert!(!b.over_after(1000), "a length seen before costs nothing");
        assert_eq!(b.bytes, 1_000_000);
        // 16384² bytes is the whole budget: with the 1000 already held, it is over.
        assert!(b.over_after(16_384));
        assert_eq!(
            b.bytes,
            16_384 * 16_384,
            "after a rebuild only this length is held"
        );
        assert!(!b.over_after(16_384));
    }
}
