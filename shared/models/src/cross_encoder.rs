//! Cross-encoders (`*ForSequenceClassification` with one label): a (query, passage) pair
//! in, one relevance logit out.
//!
//! The pair is tokenized together by the model's own tokenizer template (BERT and
//! DeBERTa: `[CLS] query [SEP] passage [SEP]` with token types 0 then 1; XLM-R:
//! `<s> query </s></s> passage </s>`), and only the passage is truncated. The head is the
//! family's: BERT's pooler (dense + tanh over `[CLS]`) and classifier; XLM-R's
//! classification head (dense + tanh + projection over `<s>`); DeBERTa's context pooler
//! (dense + GELU) and classifier. The output is the raw logit transformers reports.

use std::sync::Arc;

use crate::bert::{Backend, Config as BertConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use thaw_snapshot::Architecture;
use tokenizers::{EncodeInput, Encoding, Tokenizer, TruncationStrategy};

use crate::error::tokenizer_path;
use crate::families::{deberta::DebertaClassifier, xlmr::XlmrClassifier};
use crate::tokenize::load_tokenizer_truncating;
use crate::ModelError;

/// The family's model and head.
enum Scorer {
    Bert {
        bert: Backend,
        pooler: Linear,
        classifier: Linear,
        device: Device,
    },
    Xlmr(XlmrClassifier),
    Deberta(Box<DebertaClassifier>),
}

/// A cross-encoder restored from a snapshot.
pub struct CrossEncoder {
    scorer: Scorer,
    tokenizer: Tokenizer,
    pad_id: u32,
    max_seq_length: usize,
    name: String,
}

impl std::fmt::Debug for CrossEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossEncoder")
            .field("name", &self.name)
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

/// Loads a linear layer under the first prefix that has it: Hugging Face checkpoints put
/// the pooler under `bert.pooler.dense` or, saved from a bare BertModel, `pooler.dense`.
fn linear_at(
    vb: &VarBuilder<'_>,
    prefixes: &[&str],
    in_dim: usize,
    out_dim: usize,
) -> Result<Linear, ModelError> {
    for p in prefixes {
        if vb.contains_tensor(&format!("{p}.weight")) {
            return Ok(candle_nn::linear(in_dim, out_dim, vb.pp(*p))?);
        }
    }
    Err(ModelError::InvalidConfig {
        name: String::new(),
        reason: format!("no weights for any of {prefixes:?}"),
    })
}

impl CrossEncoder {
    /// Restores the snapshot at `dir`.
    pub fn restore(dir: &std::path::Path, device: &Device) -> Result<Self, ModelError> {
        let snapshot = Arc::new(thaw_snapshot::restore(dir)?);
        let meta = &snapshot.meta;
        let invalid = |reason: String| ModelError::InvalidConfig {
            name: meta.name.clone(),
            reason,
        };
        let labels = meta
            .model_config
            .get("id2label")
            .and_then(|m| m.as_object())
            .map_or(1, |m| m.len());
        if labels != 1 {
            return Err(invalid(format!(
                "a reranking cross-encoder has one output label; this one has {labels}"
            )));
        }
        let tokenizer_path = tokenizer_path(&snapshot)?;
        let (tokenizer, tokenizer_pad) = load_tokenizer_truncating(
            &tokenizer_path,
            meta.max_seq_length,
            TruncationStrategy::OnlySecond,
        )?;
        let pad_id = crate::families::pad_id(&snapshot, tokenizer_pad);
        let scorer = match meta.architecture {
            Architecture::BertCrossEncoder => {
                let config: BertConfig = crate::families::config(&snapshot)?;
                let bert = Backend::load(&snapshot, &config, device)?;
                let vb = bert.var_builder(&snapshot)?;
                let h = config.hidden_size;
                let pooler = linear_at(&vb, &["bert.pooler.dense", "pooler.dense"], h, h)
                    .map_err(|e| invalid(e.to_string()))?;
                let classifier =
                    linear_at(&vb, &["classifier"], h, 1).map_err(|e| invalid(e.to_string()))?;
                Scorer::Bert {
                    bert,
                    pooler,
                    classifier,
                    device: device.clone(),
                }
            }
            Architecture::XlmRobertaCrossEncoder => {
                Scorer::Xlmr(XlmrClassifier::load(&snapshot, device)?)
            }
            Architecture::DebertaV2CrossEncoder => {
                Scorer::Deberta(Box::new(DebertaClassifier::load(&snapshot, device)?))
            }
            found => {
                return Err(ModelError::WrongArchitecture {
                    name: meta.name.clone(),
                    found,
                    expected: "a cross-encoder (bert-, xlm-roberta- or deberta-v2-cross-encoder)",
                })
            }
        };
        Ok(Self {
            scorer,
            tokenizer,
            pad_id,
            max_seq_length: meta.max_seq_length,
            name: meta.name.clone(),
        })
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw logits for `(query, passage)` pairs, in passage order. Pairs are sorted by
    /// length and scored `batch_size` at a time, each chunk padded to its own longest.
    pub fn score(
        &self,
        query: &str,
        passages: &[&str],
        batch_size: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let inputs: Vec<EncodeInput<'_>> = passages
            .iter()
            .map(|p| EncodeInput::Dual(query.into(), (*p).into()))
            .collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| {
            // tokenizers refuses when the query alone leaves no room for the passage.
            ModelError::Tokenize(format!(
                "{e} (the query must leave room for the passage within {} tokens)",
                self.max_seq_length
            ))
        })?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut scores = vec![0f32; encodings.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, s) in chunk.iter().zip(self.forward(&batch)?) {
                scores[i] = s;
            }
        }
        Ok(scores)
    }

    fn forward(&self, batch: &[&Encoding]) -> Result<Vec<f32>, ModelError> {
        let logits = match &self.scorer {
            Scorer::Bert {
                bert,
                pooler,
                classifier,
                device,
            } => {
                let hidden = bert.forward(batch, self.pad_id)?;
                let width = hidden.width;
                let cls: Vec<f32> = (0..hidden.len())
                    .flat_map(|i| hidden.rows(i)[..width].to_vec())
                    .collect();
                let cls = Tensor::from_vec(cls, (hidden.len(), width), device)?
                    .to_dtype(pooler.weight().dtype())?;
                let pooled = pooler.forward(&cls)?.tanh()?;
                classifier.forward(&pooled)?
            }
            Scorer::Xlmr(m) => m.forward(batch)?,
            Scorer::Deberta(m) => m.forward(batch)?,
        };
        Ok(logits
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .squeeze(1)?
            .to_vec1::<f32>()?)
    }
}
