//! T5's encoder (sentence-t5, GTR, INSTRUCTOR): candle-transformers' stack.
//!
//! candle's `T5EncoderModel::forward` takes no attention mask, so a padded batch would let
//! every token attend to the padding. T5 has no absolute positions (only relative biases),
//! so an unpadded sequence computes exactly what a masked, padded one does: sequences of
//! the same length run together as one unpadded batch, and each length is its own pass.
//! The encoder is behind a mutex because candle's forward takes `&mut self`; the model runs
//! on one inference thread, so the lock is never contended.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use candle_transformers::models::t5::{Config, T5EncoderModel};
use thaw_snapshot::RestoredSnapshot;
use tokenizers::Encoding;

use super::{config, f32_weights, unpad};
use crate::cpu::Hidden;
use crate::ModelError;

/// The encoder half of a T5.
pub(crate) struct T5Encoder {
    model: Mutex<T5EncoderModel>,
    device: Device,
    pub(crate) width: usize,
}

impl T5Encoder {
    pub(crate) fn load(snapshot: &RestoredSnapshot, device: &Device) -> Result<Self, ModelError> {
        let mut cfg: Config = config(snapshot)?;
        // An encoder pass keeps nothing for the next one.
        cfg.use_cache = false;
        let vb = f32_weights(snapshot, device)?;
        Ok(Self {
            model: Mutex::new(T5EncoderModel::load(vb, &cfg)?),
            device: device.clone(),
            width: cfg.d_model,
        })
    }

    /// The last hidden state of each encoding.
    pub(crate) fn forward(&self, batch: &[&Encoding]) -> Result<Hidden, ModelError> {
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, e) in batch.iter().enumerate() {
            by_len.entry(e.get_ids().len()).or_default().push(i);
        }
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); batch.len()];
        let mut model = self
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (len, members) in by_len {
            let ids: Vec<u32> = members
                .iter()
                .flat_map(|&i| batch[i].get_ids().iter().copied())
                .collect();
            let ids = Tensor::from_vec(ids, (members.len(), len), &self.device)?;
            model.clear_kv_cache();
            let group: Vec<&Encoding> = members.iter().map(|&i| batch[i]).collect();
            let out = unpad(&model.forward(&ids)?, &group)?;
            for (k, &i) in members.iter().enumerate() {
                rows[i] = out.rows(k).to_vec();
            }
        }
        let mut data = Vec::new();
        let mut starts = vec![0];
        for (i, r) in rows.iter().enumerate() {
            data.extend_from_slice(r);
            starts.push(starts[i] + r.len() / self.width.max(1));
        }
        Ok(Hidden {
            data,
            width: self.width,
            starts,
        })
    }
}
