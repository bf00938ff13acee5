//! Which BERT implementation a model runs: the CPU encoder ([`crate::cpu`]) on CPUs, and
//! candle's tensors ([`BertModel`]) on GPUs. Both give the same [`Hidden`] rows, so pooling
//! and heads are written once.

use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use thaw_snapshot::{RestoredSnapshot, WeightDtype};
use tokenizers::Encoding;

use super::{BertModel, Config};
use crate::batch::bert_inputs;
use crate::cpu::{self, CpuBert, Hidden, Sequence};
use crate::ModelError;

/// A loaded BERT encoder.
#[derive(Debug)]
pub(crate) enum Backend {
    /// Packed weights and fused kernels on this CPU.
    Cpu(CpuBert),
    /// candle on a GPU, in `dtype`.
    Tensor { model: BertModel, device: Device },
}

impl Backend {
    /// Loads the encoder for `device`. INT8 snapshots run on CPUs only.
    pub(crate) fn load(
        snapshot: &Arc<RestoredSnapshot>,
        config: &Config,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if device.is_cpu() {
            return Ok(Backend::Cpu(cpu::load(Arc::clone(snapshot), config)?));
        }
        if snapshot.meta.dtype == WeightDtype::Int8 {
            return Err(ModelError::InvalidWeights {
                name: snapshot.meta.name.clone(),
                reason:
                    "INT8 snapshots run on the CPU encoder; build an f16 or f32 snapshot for a GPU"
                        .into(),
            });
        }
        let vb = VarBuilder::from_slice_safetensors(snapshot.weights(), DType::F16, device)?;
        Ok(Backend::Tensor {
            model: BertModel::load(vb, config)?,
            device: device.clone(),
        })
    }

    /// A VarBuilder over the snapshot's other tensors (heads, poolers), in the dtype the
    /// backend computes in.
    pub(crate) fn var_builder<'a>(
        &self,
        snapshot: &'a RestoredSnapshot,
    ) -> Result<VarBuilder<'a>, ModelError> {
        let (dtype, device) = match self {
            Backend::Cpu(_) => (DType::F32, Device::Cpu),
            Backend::Tensor { device, .. } => (DType::F16, device.clone()),
        };
        Ok(VarBuilder::from_slice_safetensors(
            snapshot.weights(),
            dtype,
            &device,
        )?)
    }

    /// The last hidden state of each encoding, unpadded.
    pub(crate) fn forward(&self, batch: &[&Encoding], pad_id: u32) -> Result<Hidden, ModelError> {
        match self {
            Backend::Cpu(bert) => {
                let seqs: Vec<Sequence<'_>> = batch
                    .iter()
                    .map(|e| Sequence {
                        ids: e.get_ids(),
                        type_ids: e.get_type_ids(),
                    })
                    .collect();
                bert.forward(&seqs)
            }
            Backend::Tensor { model, device } => {
                let (ids, type_ids, mask) = bert_inputs(batch, pad_id, device)?;
                let padded = model
                    .forward(&ids, &type_ids, Some(&mask))?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?;
                let (_, longest, width) = padded.dims3()?;
                let flat = padded.flatten_all()?.to_vec1::<f32>()?;
                let mut data = Vec::new();
                let mut starts = vec![0];
                for (row, e) in batch.iter().enumerate() {
                    let len = e.get_ids().len();
                    data.extend_from_slice(
                        &flat[row * longest * width..(row * longest + len) * width],
                    );
                    starts.push(starts[row] + len);
                }
                Ok(Hidden {
                    data,
                    width,
                    starts,
                })
            }
        }
    }
}
