//! Building a [`CpuBert`] from a snapshot's safetensors, without candle in between.
//!
//! Projection weights are read once from the memory map and packed into their kernel's
//! layout (query, key and value concatenated, the query pre-scaled by 1/√head). INT8
//! snapshots hold each projection as an `i8` `weight` with an f32 `weight_scale` per
//! output channel. The word-embedding table, the largest tensor, is not copied at all:
//! its rows are read from the map when a token needs them, so a cold start pays only for
//! the pages it touches.

use std::sync::Arc;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use thaw_snapshot::RestoredSnapshot;

use super::bert::{CpuBert, Embeddings, Layer, Linear, Norm, Rows, Weight};
use super::gemm::PackedF32;
use super::int8::PackedI8;
use super::ops::Activation;
use crate::bert::{Config, HiddenAct};
use crate::ModelError;

/// Loads the encoder under `bert.`, `<model_type>.` or no prefix.
pub fn load(snapshot: Arc<RestoredSnapshot>, config: &Config) -> Result<CpuBert, ModelError> {
    let name = snapshot.meta.name.clone();
    let invalid = |reason: String| ModelError::InvalidWeights {
        name: name.clone(),
        reason,
    };
    let st = SafeTensors::deserialize(snapshot.weights()).map_err(|e| invalid(e.to_string()))?;
    let h = config.hidden_size;
    let heads = config.num_attention_heads;
    if heads == 0 || h == 0 || !h.is_multiple_of(heads) {
        return Err(invalid(format!(
            "hidden_size {h} is not a positive multiple of num_attention_heads {heads}"
        )));
    }
    if config.intermediate_size == 0
        || config.vocab_size == 0
        || config.max_position_embeddings == 0
        || config.type_vocab_size == 0
    {
        return Err(invalid(
            "intermediate_size, vocab_size, max_position_embeddings and type_vocab_size must be positive".into(),
        ));
    }
    let prefix = [
        "bert.".to_owned(),
        config
            .model_type
            .clone()
            .map(|t| format!("{t}."))
            .unwrap_or_default(),
        String::new(),
    ]
    .into_iter()
    .find(|p| {
        st.tensor(&format!("{p}embeddings.word_embeddings.weight"))
            .is_ok()
    })
    .ok_or_else(|| invalid("no embeddings.word_embeddings.weight".into()))?;
    let w = Weights {
        st: &st,
        prefix: &prefix,
        invalid: &invalid,
    };
    let eps = config.layer_norm_eps as f32;
    let words = w.view("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
    let words: Box<dyn Rows> = if words.dtype() == Dtype::F32 {
        let base = snapshot.weights().as_ptr() as usize;
        Box::new(MappedRows {
            offset: words.data().as_ptr() as usize - base,
            rows: config.vocab_size,
            width: h,
            snapshot: Arc::clone(&snapshot),
        })
    } else {
        let values = w.f32s("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        Box::new(OwnedRows::new(values, h))
    };
    let embeddings = Embeddings {
        words,
        positions: Box::new(OwnedRows::new(
            w.f32s(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            h,
        )),
        types: Box::new(OwnedRows::new(
            w.f32s(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            h,
        )),
        norm: w.norm("embeddings.LayerNorm", h, eps)?,
    };
    let scale = 1.0 / ((h / heads) as f32).sqrt();
    let layer = |i: usize| -> Result<Layer, ModelError> {
        let p = format!("encoder.layer.{i}.");
        let inter = config.intermediate_size;
        Ok(Layer {
            qkv: w.qkv(&format!("{p}attention.self."), h, scale)?,
            attention_out: w.linear(&format!("{p}attention.output.dense"), h, h)?,
            attention_norm: w.norm(&format!("{p}attention.output.LayerNorm"), h, eps)?,
            intermediate: w.linear(&format!("{p}intermediate.dense"), inter, h)?,
            output: w.linear(&format!("{p}output.dense"), h, inter)?,
            output_norm: w.norm(&format!("{p}output.LayerNorm"), h, eps)?,
        })
    };
    // Packing is most of a cold start's weight time: the second half of the layers is
    // packed on a second thread (the tokenizer's thread is the only other work then).
    let n = config.num_hidden_layers;
    let (first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| (n / 2..n).map(layer).collect::<Result<Vec<_>, _>>());
        let first = (0..n / 2).map(layer).collect::<Result<Vec<_>, _>>();
        (first, second.join())
    });
    let mut layers = first?;
    layers.extend(second.map_err(|_| invalid("the packing thread panicked".into()))??);
    let activation = match config.hidden_act {
        HiddenAct::Gelu => Activation::Gelu,
        HiddenAct::GeluApproximate => Activation::GeluTanh,
        HiddenAct::Relu => Activation::Relu,
    };
    Ok(CpuBert::new(embeddings, layers, h, heads, activation))
}

struct Weights<'a, F> {
    st: &'a SafeTensors<'a>,
    prefix: &'a str,
    invalid: &'a F,
}

impl<'a, F: Fn(String) -> ModelError> Weights<'a, F> {
    fn view(&self, name: &str, shape: &[usize]) -> Result<TensorView<'a>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .st
            .tensor(&full)
            .map_err(|_| (self.invalid)(format!("missing tensor {full}")))?;
        if view.shape() != shape {
            return Err((self.invalid)(format!(
                "{full} has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        Ok(view)
    }

    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let view = self.view(name, shape)?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err((self.invalid)(format!(
                "{}{name} is {:?}, expected a float dtype",
                self.prefix,
                view.dtype()
            )));
        }
        Ok(to_f32(&view))
    }

    fn norm(&self, name: &str, h: usize, eps: f32) -> Result<Norm, ModelError> {
        Ok(Norm {
            gamma: self.f32s(&format!("{name}.weight"), &[h])?,
            beta: self.f32s(&format!("{name}.bias"), &[h])?,
            eps,
        })
    }

    fn bias(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let full = format!("{}{name}.bias", self.prefix);
        if self.st.tensor(&full).is_err() {
            return Ok(vec![0.0; n]);
        }
        self.f32s(&format!("{name}.bias"), &[n])
    }

    /// The weight of `name` (`n × k`): f32 rows (read in place when the snapshot is
    /// f32), or INT8 rows with their scales.
    fn rows(&self, name: &str, n: usize, k: usize) -> Result<RowMajor<'a>, ModelError> {
        let view = self.view(&format!("{name}.weight"), &[n, k])?;
        if view.dtype() == Dtype::F32 && cfg!(target_endian = "little") {
            if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(view.data()) {
                return Ok(RowMajor::F32(Floats::Mapped(values)));
            }
        }
        if view.dtype() != Dtype::I8 {
            let owned = self.f32s(&format!("{name}.weight"), &[n, k])?;
            return Ok(RowMajor::F32(Floats::Owned(owned)));
        }
        let scales = self.f32s(&format!("{name}.weight_scale"), &[n])?;
        let q = view.data().iter().map(|&b| b as i8).collect();
        Ok(RowMajor::Int8(q, scales))
    }

    fn linear(&self, name: &str, n: usize, k: usize) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: self.rows(name, n, k)?.pack(n, k),
            bias: self.bias(name, n)?,
        })
    }

    /// Query, key and value as one `3h × h` projection, the query scaled by `scale`.
    fn qkv(&self, prefix: &str, h: usize, scale: f32) -> Result<Linear, ModelError> {
        let parts = ["query", "key", "value"].map(|p| self.rows(&format!("{prefix}{p}"), h, h));
        let [q, k, v] = parts;
        let weight = match (q?, k?, v?) {
            (RowMajor::F32(q), RowMajor::F32(k), RowMajor::F32(v)) => {
                // Output column j of the fused projection is row j % h of part j / h.
                let parts = [(q.values(), scale), (k.values(), 1.0), (v.values(), 1.0)];
                Weight::F32(PackedF32::pack_rows(h, 3 * h, |j| {
                    let (w, s) = parts[j / h];
                    (&w[(j % h) * h..(j % h + 1) * h], s)
                }))
            }
            (RowMajor::Int8(q, mut qs), RowMajor::Int8(k, ks), RowMajor::Int8(v, vs)) => {
                // Scaling a channel's dequantization scale scales the channel exactly.
                qs.iter_mut().for_each(|x| *x *= scale);
                RowMajor::Int8([q, k, v].concat(), [qs, ks, vs].concat()).pack(3 * h, h)
            }
            _ => {
                return Err((self.invalid)(format!(
                    "{prefix}query, key and value mix INT8 and float weights"
                )))
            }
        };
        let mut bias = Vec::with_capacity(3 * h);
        for (i, p) in ["query", "key", "value"].iter().enumerate() {
            let b = self.bias(&format!("{prefix}{p}"), h)?;
            let s = if i == 0 { scale } else { 1.0 };
            bias.extend(b.iter().map(|x| x * s));
        }
        Ok(Linear { weight, bias })
    }
}

/// A weight before packing: `n × k`, row `n` one output channel.
enum RowMajor<'a> {
    F32(Floats<'a>),
    Int8(Vec<i8>, Vec<f32>),
}

impl RowMajor<'_> {
    fn pack(self, n: usize, k: usize) -> Weight {
        match self {
            // Element (kk, j) of B = Wᵀ is W[j][kk].
            RowMajor::F32(w) => {
                let w = w.values();
                Weight::F32(PackedF32::pack_rows(k, n, |j| {
                    (&w[j * k..(j + 1) * k], 1.0)
                }))
            }
            RowMajor::Int8(w, s) => Weight::Int8(PackedI8::pack(n, k, &w, &s)),
        }
    }
}

/// f32 values: the snapshot's own bytes where they are aligned f32 (read in place, so
/// packing is the only copy), or converted (f16, bf16, an unaligned tensor).
enum Floats<'a> {
    Mapped(&'a [f32]),
    Owned(Vec<f32>),
}

impl Floats<'_> {
    fn values(&self) -> &[f32] {
        match self {
            Floats::Mapped(v) => v,
            Floats::Owned(v) => v,
        }
    }
}

fn to_f32(view: &TensorView<'_>) -> Vec<f32> {
    let data = view.data();
    match view.dtype() {
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// An f32 table read in place from the snapshot's memory map.
struct MappedRows {
    snapshot: Arc<RestoredSnapshot>,
    offset: usize,
    rows: usize,
    width: usize,
}

impl std::fmt::Debug for MappedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRows")
            .field("rows", &self.rows)
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl Rows for MappedRows {
    fn add_row(&self, i: usize, out: &mut [f32]) {
        let start = self.offset + i * self.width * 4;
        let bytes = &self.snapshot.weights()[start..start + self.width * 4];
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }
}

/// An f32 table held in memory.
#[derive(Debug)]
struct OwnedRows {
    data: Vec<f32>,
    width: usize,
}

impl OwnedRows {
    fn new(data: Vec<f32>, width: usize) -> Self {
        Self { data, width }
    }
}

impl Rows for OwnedRows {
    fn add_row(&self, i: usize, out: &mut [f32]) {
        for (o, &v) in out
            .iter_mut()
            .zip(&self.data[i * self.width..(i + 1) * self.width])
        {
            *o += v;
        }
    }

    fn rows(&self) -> usize {
        self.data.len() / self.width.max(1)
    }
}
