//! XLM-RoBERTa (multilingual-e5, bge-m3, bge-reranker): candle-transformers' model over
//! right-padded batches with an attention mask. Its position ids count only non-padding
//! tokens from `padding_idx + 1`, as transformers does, so padding changes nothing.

use candle_core::{Device, Tensor};
use candle_transformers::models::xlm_roberta::{
    Config, XLMRobertaForSequenceClassification, XLMRobertaModel,
};
use thaw_snapshot::RestoredSnapshot;
use tokenizers::Encoding;

use super::{config, f32_weights, pad_id, unpad};
use crate::batch::bert_inputs;
use crate::cpu::Hidden;
use crate::ModelError;

/// The bare encoder, for embeddings.
pub(crate) struct XlmrEncoder {
    model: XLMRobertaModel,
    device: Device,
    pub(crate) pad_id: u32,
    pub(crate) width: usize,
}

impl XlmrEncoder {
    /// Loads the encoder's weights, saved bare (e5, bge) or under `roberta.`.
    pub(crate) fn load(snapshot: &RestoredSnapshot, device: &Device) -> Result<Self, ModelError> {
        let cfg: Config = config(snapshot)?;
        let vb = f32_weights(snapshot, device)?;
        let vb = if vb.contains_tensor("roberta.embeddings.word_embeddings.weight") {
            vb.pp("roberta")
        } else {
            vb
        };
        Ok(Self {
            model: XLMRobertaModel::new(&cfg, vb)?,
            device: device.clone(),
            pad_id: pad_id(snapshot, cfg.pad_token_id),
            width: cfg.hidden_size,
        })
    }

    /// The last hidden state of each encoding, unpadded.
    pub(crate) fn forward(&self, batch: &[&Encoding]) -> Result<Hidden, ModelError> {
        let (ids, type_ids, mask) = bert_inputs(batch, self.pad_id, &self.device)?;
        let out = self
            .model
            .forward(&ids, &mask, &type_ids.zeros_like()?, None, None, None)?;
        unpad(&out, batch)
    }
}

/// XLMRobertaForSequenceClassification with one label.
pub(crate) struct XlmrClassifier {
    model: XLMRobertaForSequenceClassification,
    device: Device,
    pub(crate) pad_id: u32,
}

impl XlmrClassifier {
    pub(crate) fn load(snapshot: &RestoredSnapshot, device: &Device) -> Result<Self, ModelError> {
        let cfg: Config = config(snapshot)?;
        let vb = f32_weights(snapshot, device)?;
        Ok(Self {
            model: XLMRobertaForSequenceClassification::new(1, &cfg, vb)?,
            device: device.clone(),
            pad_id: pad_id(snapshot, cfg.pad_token_id),
        })
    }

    /// One logit per encoding.
    pub(crate) fn forward(&self, batch: &[&Encoding]) -> Result<Tensor, ModelError> {
        let (ids, type_ids, mask) = bert_inputs(batch, self.pad_id, &self.device)?;
        Ok(self.model.forward(&ids, &mask, &type_ids.zeros_like()?)?)
    }
}
