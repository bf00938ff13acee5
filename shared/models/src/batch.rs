//! Padding a chunk of tokenized inputs into the three tensors BERT takes.

use candle_core::{Device, Tensor};
use tokenizers::Encoding;

use crate::ModelError;

/// `input_ids`, `token_type_ids` and `attention_mask`, each `(rows, longest)`, padded with
/// `pad_id` to the longest member of `batch` only.
pub(crate) fn bert_inputs(
    batch: &[&Encoding],
    pad_id: u32,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor), ModelError> {
    let rows = batch.len();
    let cols = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; rows * cols];
    let mut type_ids = vec![0u32; rows * cols];
    let mut mask = vec![0u32; rows * cols];
    for (r, enc) in batch.iter().enumerate() {
        let n = enc.get_ids().len();
        ids[r * cols..r * cols + n].copy_from_slice(enc.get_ids());
        type_ids[r * cols..r * cols + n].copy_from_slice(enc.get_type_ids());
        mask[r * cols..r * cols + n].fill(1);
    }
    Ok((
        Tensor::from_vec(ids, (rows, cols), device)?,
        Tensor::from_vec(type_ids, (rows, cols), device)?,
        Tensor::from_vec(mask, (rows, cols), device)?,
    ))
}
