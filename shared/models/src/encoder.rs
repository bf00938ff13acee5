//! The sentence encoder: tokens -> encoder -> pooling -> (Dense) -> (L2 normalisation).
//!
//! The encoder is BERT ([`crate::bert`], on the CPU kernels or candle), XLM-RoBERTa or
//! T5's encoder ([`crate::families`]); everything after the hidden states is shared.

use std::time::Instant;

use std::sync::Arc;

use crate::bert::{Backend, Config as BertConfig};
use crate::cpu::Hidden;
use crate::families::{t5::T5Encoder, xlmr::XlmrEncoder};
use candle_core::Device;
use thaw_snapshot::{Architecture, DenseActivation, Pooling, RestoredSnapshot, Role};
use tokenizers::{Encoding, Tokenizer};

use crate::tokenize::load_tokenizer;
use crate::ModelError;

/// Per-call options.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// L2-normalise each embedding.
    pub normalize: bool,
    /// Cut over-length input at max_seq_length; when false, over-length input is an error.
    pub truncate: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            normalize: true,
            truncate: true,
        }
    }
}

/// Texts per forward pass. Larger chunks gain little on a CPU and grow the attention
/// matrices quadratically with the longest member.
const CHUNK: usize = 32;

/// The result of encoding a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// One embedding per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens each input used after truncation, special tokens included.
    pub tokens: Vec<usize>,
}

/// Where a load's time went, for the cold-start breakdown.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadTimings {
    /// Parsing tokenizer.json (on its own thread).
    pub tokenizer: std::time::Duration,
    /// Restoring (size checks, mmap) and materialising the weights into the model.
    pub weights: std::time::Duration,
    /// Wall time of the whole load: the larger of the two, plus joining.
    pub total: std::time::Duration,
}

/// The encoder a snapshot's architecture names.
enum EncoderModel {
    Bert(Backend),
    Xlmr(XlmrEncoder),
    T5(T5Encoder),
}

impl EncoderModel {
    /// Loads the model and says its hidden width.
    fn load(
        snapshot: &Arc<RestoredSnapshot>,
        device: &Device,
    ) -> Result<(Self, usize), ModelError> {
        match snapshot.meta.architecture {
            Architecture::XlmRobertaSentenceEncoder => {
                let m = XlmrEncoder::load(snapshot, device)?;
                let width = m.width;
                Ok((Self::Xlmr(m), width))
            }
            Architecture::T5SentenceEncoder => {
                let m = T5Encoder::load(snapshot, device)?;
                let width = m.width;
                Ok((Self::T5(m), width))
            }
            _ => {
                let config: BertConfig = crate::families::config(snapshot)?;
                let width = config.hidden_size;
                Ok((Self::Bert(Backend::load(snapshot, &config, device)?), width))
            }
        }
    }

    fn forward(&self, batch: &[&Encoding], pad_id: u32) -> Result<Hidden, ModelError> {
        match self {
            Self::Bert(m) => m.forward(batch, pad_id),
            Self::Xlmr(m) => m.forward(batch),
            Self::T5(m) => m.forward(batch),
        }
    }
}

/// A sentence-transformers Dense module: `act(W x + b)` on the pooled vector.
struct DenseLayer {
    /// `out × in`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    activation: DenseActivation,
}

impl DenseLayer {
    fn load(snapshot: &RestoredSnapshot) -> Result<Option<Self>, ModelError> {
        let Some(d) = snapshot.meta.dense else {
            return Ok(None);
        };
        let vb =
            crate::families::f32_weights(snapshot, &Device::Cpu)?.pp(thaw_snapshot::Dense::PREFIX);
        let weight = vb
            .get((d.out_features, d.in_features), "weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = if d.bias {
            vb.get(d.out_features, "bias")?.to_vec1::<f32>()?
        } else {
            vec![0.0; d.out_features]
        };
        Ok(Some(Self {
            weight,
            bias,
            inputs: d.in_features,
            activation: d.activation,
        }))
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.inputs)
            .zip(&self.bias)
            .map(|(row, b)| {
                let y = row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b;
                match self.activation {
                    DenseActivation::Identity => y,
                    DenseActivation::Tanh => y.tanh(),
                }
            })
            .collect()
    }
}

/// A sentence encoder restored from a snapshot.
pub struct SentenceEncoder {
    model: EncoderModel,
    dense: Option<DenseLayer>,
    tokenizer: Tokenizer,
    pad_id: u32,
    pooling: Pooling,
    max_seq_length: usize,
    dims: usize,
    name: String,
    timings: LoadTimings,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("name", &self.name)
            .field("dims", &self.dims)
            .field("pooling", &self.pooling)
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Restores the snapshot at `dir` and builds the encoder: the cold-start path.
    ///
    /// A cold start is three costs of similar size: mapping the weights, copying them into
    /// tensors, and parsing tokenizer.json. The tokenizer needs only snapshot.json, so it
    /// is parsed on a second thread from the start, overlapping both weight steps; a cold
    /// start pays the larger side rather than the sum.
    pub fn restore(dir: &std::path::Path, device: &Device) -> Result<Self, ModelError> {
        let started = Instant::now();
        let meta = thaw_snapshot::SnapshotMeta::read(dir)?;
        check_architecture(&meta)?;
        let tokenizer_path = meta
            .file(thaw_snapshot::TOKENIZER_FILE)
            .map(|f| dir.join(&f.path))
            .ok_or_else(|| thaw_snapshot::SnapshotError::MissingFile {
                path: dir.join(thaw_snapshot::TOKENIZER_FILE),
            })?;
        let max_seq_length = meta.max_seq_length;
        std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| {
                let t = Instant::now();
                load_tokenizer(&tokenizer_path, max_seq_length).map(|tok| (tok, t.elapsed()))
            });
            let model = Self::build_model(dir, device);
            let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                Err(ModelError::Tokenizer {
                    path: tokenizer_path.clone(),
                    reason: "tokenizer thread panicked".into(),
                })
            });
            let (snapshot, model, width, dense, weights) = model?;
            let ((tokenizer, pad_id), tokenizer_time) = tokenizer?;
            let timings = LoadTimings {
                tokenizer: tokenizer_time,
                weights,
                total: started.elapsed(),
            };
            let meta = &snapshot.meta;
            Ok(Self {
                dims: dense.as_ref().map_or(width, |d| d.bias.len()),
                model,
                dense,
                tokenizer,
                pad_id: crate::families::pad_id(&snapshot, pad_id),
                pooling: meta.pooling.unwrap_or(Pooling::Mean),
                max_seq_length: meta.max_seq_length,
                name: meta.name.clone(),
                timings,
            })
        })
    }

    /// Builds the encoder from an already restored snapshot.
    pub fn load(snapshot: &RestoredSnapshot, device: &Device) -> Result<Self, ModelError> {
        Self::restore(&snapshot.dir, device)
    }

    #[allow(clippy::type_complexity)]
    fn build_model(
        dir: &std::path::Path,
        device: &Device,
    ) -> Result<
        (
            Arc<RestoredSnapshot>,
            EncoderModel,
            usize,
            Option<DenseLayer>,
            std::time::Duration,
        ),
        ModelError,
    > {
        let t = Instant::now();
        let snapshot = Arc::new(thaw_snapshot::restore(dir)?);
        let (model, width) = EncoderModel::load(&snapshot, device)?;
        let dense = DenseLayer::load(&snapshot)?;
        if let Some(d) = &dense {
            if d.inputs != width {
                return Err(ModelError::InvalidConfig {
                    name: snapshot.meta.name.clone(),
                    reason: format!(
                        "the Dense layer takes {} values; the encoder gives {width}",
                        d.inputs
                    ),
                });
            }
        }
        let elapsed = t.elapsed();
        Ok((snapshot, model, width, dense, elapsed))
    }

    /// Where the load's time went.
    pub fn load_timings(&self) -> LoadTimings {
        self.timings
    }

    /// Embedding width.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The longest input in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Encodes texts. They are sorted by length and run in chunks of up to 32; results
    /// come back in input order. BERT on a CPU and T5 never pad a chunk's sequences; the
    /// others pad each chunk to its own longest member, with attention and pooling masked.
    /// Either way an embedding does not depend on its neighbours.
    pub fn encode(&self, texts: &[&str], opts: EncodeOptions) -> Result<Encoded, ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        let tokens: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        if !opts.truncate {
            if let Some((index, enc)) = encodings
                .iter()
                .enumerate()
                .find(|(_, e)| !e.get_overflowing().is_empty())
            {
                let overflow: usize = enc
                    .get_overflowing()
                    .iter()
                    .map(|o| o.get_ids().len())
                    .sum();
                return Err(ModelError::InputTooLong {
                    index,
                    tokens: tokens[index] + overflow,
                    max: self.max_seq_length,
                });
            }
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| tokens[i]);
        let mut embeddings = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(CHUNK) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, row) in chunk.iter().zip(self.forward(&batch, opts.normalize)?) {
                embeddings[i] = row;
            }
        }
        Ok(Encoded { embeddings, tokens })
    }

    /// One forward pass, then pooling and (optionally) L2 normalisation per sequence.
    fn forward(&self, batch: &[&Encoding], normalize: bool) -> Result<Vec<Vec<f32>>, ModelError> {
        let hidden = self.model.forward(batch, self.pad_id)?;
        Ok((0..hidden.len())
            .map(|i| {
                let mut v = pool(&hidden, i, self.pooling);
                if let Some(dense) = &self.dense {
                    v = dense.apply(&v);
                }
                if normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect())
    }
}

/// One sequence's vector: the mean of its token rows, or its `[CLS]` row.
fn pool(hidden: &Hidden, i: usize, pooling: Pooling) -> Vec<f32> {
    let rows = hidden.rows(i);
    let width = hidden.width;
    match pooling {
        Pooling::Cls => rows[..width].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f32; width];
            for row in rows.chunks_exact(width) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
            }
            // sentence-transformers clamps the token count at 1e-9; a sequence here
            // always has at least one token.
            let count = (rows.len() / width) as f32;
            sum.iter_mut().for_each(|s| *s /= count.max(1e-9));
            sum
        }
    }
}

/// Divides by the L2 norm, clamped as torch's `F.normalize` does.
fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

fn check_architecture(meta: &thaw_snapshot::SnapshotMeta) -> Result<(), ModelError> {
    if meta.architecture.role() == Role::Embedder {
        return Ok(());
    }
    Err(ModelError::WrongArchitecture {
        name: meta.name.clone(),
        found: meta.architecture,
        expected: "a sentence encoder (bert-, xlm-roberta- or t5-sentence-encoder)",
    })
}
