//! DeBERTa-v2/v3 cross-encoders (mxbai-rerank): candle-transformers' model, with its
//! disentangled relative attention (log-bucketed positions, c2p and p2c terms), over
//! right-padded batches with an attention mask.

use candle_core::{Device, Tensor};
use candle_transformers::models::debertav2::{Config, DebertaV2SeqClassificationModel};
use thaw_snapshot::RestoredSnapshot;
use tokenizers::Encoding;

use super::{config, f32_weights, pad_id};
use crate::batch::bert_inputs;
use crate::ModelError;

/// DebertaV2ForSequenceClassification with one label.
pub(crate) struct DebertaClassifier {
    model: DebertaV2SeqClassificationModel,
    device: Device,
    pub(crate) pad_id: u32,
}

impl DebertaClassifier {
    pub(crate) fn load(snapshot: &RestoredSnapshot, device: &Device) -> Result<Self, ModelError> {
        let cfg: Config = config(snapshot)?;
        let vb = f32_weights(snapshot, device)?;
        Ok(Self {
            model: DebertaV2SeqClassificationModel::load(vb.pp("deberta"), &cfg, None)?,
            device: device.clone(),
            pad_id: pad_id(snapshot, 0),
        })
    }

    /// One logit per encoding.
    pub(crate) fn forward(&self, batch: &[&Encoding]) -> Result<Tensor, ModelError> {
        let (ids, type_ids, mask) = bert_inputs(batch, self.pad_id, &self.device)?;
        Ok(self.model.forward(&ids, Some(type_ids), Some(mask))?)
    }
}
