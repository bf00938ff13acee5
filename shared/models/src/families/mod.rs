//! Encoder families beyond BERT, on candle-transformers' implementations: XLM-RoBERTa,
//! DeBERTa-v2 and T5's encoder.
//!
//! They compute in f32 on every device: their attention masks are built in f32, and the
//! reranking and embedding models people run with them are small enough that a GPU's
//! f16 speed-up matters less than matching transformers' numbers. Each returns the same
//! [`Hidden`] rows as the BERT backend, so pooling, the Dense layer, normalisation and the
//! heads are written once.

pub(crate) mod deberta;
pub(crate) mod t5;
pub(crate) mod xlmr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use thaw_snapshot::RestoredSnapshot;
use tokenizers::Encoding;

use crate::cpu::Hidden;
use crate::ModelError;

/// A VarBuilder over the snapshot's tensors, in f32 on `device`.
pub(crate) fn f32_weights<'a>(
    snapshot: &'a RestoredSnapshot,
    device: &Device,
) -> Result<VarBuilder<'a>, ModelError> {
    Ok(VarBuilder::from_slice_safetensors(
        snapshot.weights(),
        DType::F32,
        device,
    )?)
}

/// Parses the snapshot's `model_config` as a candle-transformers config.
pub(crate) fn config<T: serde::de::DeserializeOwned>(
    snapshot: &RestoredSnapshot,
) -> Result<T, ModelError> {
    serde_json::from_value(snapshot.meta.model_config.clone()).map_err(|e| {
        ModelError::InvalidConfig {
            name: snapshot.meta.name.clone(),
            reason: e.to_string(),
        }
    })
}

/// The padding id config.json declares (`pad_token_id`), which the tokenizer file alone
/// does not say for every family (XLM-R pads with 1, T5 and DeBERTa with 0).
pub(crate) fn pad_id(snapshot: &RestoredSnapshot, fallback: u32) -> u32 {
    snapshot
        .meta
        .model_config
        .get("pad_token_id")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(fallback)
}

/// Cuts a padded `(rows, longest, width)` output back to each sequence's own rows.
pub(crate) fn unpad(padded: &Tensor, batch: &[&Encoding]) -> Result<Hidden, ModelError> {
    let padded = padded.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (_, longest, width) = padded.dims3()?;
    let flat = padded.flatten_all()?.to_vec1::<f32>()?;
    let mut data = Vec::with_capacity(flat.len());
    let mut starts = vec![0];
    for (row, e) in batch.iter().enumerate() {
        let len = e.get_ids().len();
        data.extend_from_slice(&flat[row * longest * width..(row * longest + len) * width]);
        starts.push(starts[row] + len);
    }
    Ok(Hidden {
        data,
        width,
        starts,
    })
}
