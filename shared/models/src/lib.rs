//! candle models restored from thaw snapshots.
//!
//! - [`SentenceEncoder`]: BERT, XLM-RoBERTa or T5's encoder, then pooling, an optional
//!   Dense layer and L2 normalisation: the model behind `embed` and the bi-encoder `rerank`.
//! - [`CrossEncoder`]: BERT, XLM-RoBERTa or DeBERTa-v2 sequence classification over
//!   (query, passage) pairs, the model behind the cross-encoder `rerank`.
//! - [`ChatModel`]: a GGUF chat model (llama.cpp's `llama` and `qwen2` architectures) with
//!   its own chat template, for seeded, bounded generations.
//! - [`WordFrequencies`]: English word rarity (Zipf) from a `word-frequencies` snapshot.
//! - [`device`]: which candle device an instance computes on.
//!
//! Both BERT models run on [`cpu`] on a CPU: BERT's forward pass on slices with packed
//! f32 or INT8 weights and kernels for the CPU's widest instruction set, over unpadded
//! sequences. On a GPU they run `bert`: candle-transformers' weights and function on
//! candle tensors, with one QKV projection per layer.
//!
//! Every model here is blocking CPU (or GPU) work. Functions run it on the dedicated
//! inference thread that `thaw-fn` owns, never on the async executor.

mod batch;
mod bert;
mod chat;
pub mod cpu;
mod cross_encoder;
pub mod device;
mod encoder;
pub(crate) mod error;
mod families;
mod tokenize;
mod words;

pub use chat::{ChatModel, GenerateOptions, Generated, Message, StopReason};
pub use cross_encoder::CrossEncoder;
pub use encoder::{EncodeOptions, Encoded, LoadTimings, SentenceEncoder};
pub use error::ModelError;
pub use tokenize::{load_tokenizer, load_tokenizer_truncating};
pub use words::WordFrequencies;
