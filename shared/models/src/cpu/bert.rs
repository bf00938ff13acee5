//! BERT's encoder on the CPU: the forward pass over packed weights and plain slices.
//!
//! Sequences are never padded. The token rows of a whole batch are stacked into one
//! `tokens × hidden` matrix, so every projection is one matrix multiply over real tokens
//! only; attention runs per sequence and per head on that sequence's own rows. A batch of
//! one long and many short texts pays for its real tokens, not for `rows × longest`.
//!
//! Per layer: one QKV projection (query pre-scaled by 1/√head, bias in the epilogue);
//! per sequence and head, `Q Kᵀ`, an in-place softmax, and `P V` written straight into
//! its head's columns of the context; the output projection adds its bias and the
//! residual in its epilogue, then layer norm in place; the feed-forward's first multiply
//! applies GELU in its epilogue, its second adds bias and residual, then layer norm.
//! Buffers live in a [`Scratch`] that calls reuse.

use std::sync::Mutex;

use super::gemm::{self, Epilogue, PackedF32};
use super::int8::{self, PackedI8, QuantizedRows};
use super::isa::{Avx2, Avx512, Isa, Kernels, Portable};
use super::ops::{self, Activation};
use crate::ModelError;

/// A projection's weight, in the precision the snapshot holds.
#[derive(Debug)]
pub(crate) enum Weight {
    /// f32, packed for [`gemm::matmul`].
    F32(PackedF32),
    /// INT8 per output channel, packed for [`int8::matmul`].
    Int8(PackedI8),
}

impl Weight {
    fn k(&self) -> usize {
        match self {
            Weight::F32(w) => w.k(),
            Weight::Int8(w) => w.k(),
        }
    }

    fn n(&self) -> usize {
        match self {
            Weight::F32(w) => w.n(),
            Weight::Int8(w) => w.n(),
        }
    }
}

/// `y = x Wᵀ + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub weight: Weight,
    /// One per output column (zeros where the checkpoint has none).
    pub bias: Vec<f32>,
}

/// Layer norm's scale and shift.
#[derive(Debug)]
pub(crate) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

#[derive(Debug)]
pub(crate) struct Layer {
    /// Query (pre-scaled), key and value: `hidden → 3 × hidden`.
    pub qkv: Linear,
    pub attention_out: Linear,
    pub attention_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: Norm,
}

/// A row table, `rows × width` f32: token, position and type embeddings.
pub(crate) trait Rows: Send + Sync + std::fmt::Debug {
    /// Adds row `i` into `out`.
    fn add_row(&self, i: usize, out: &mut [f32]);
    /// Row count.
    fn rows(&self) -> usize;
}

#[derive(Debug)]
pub(crate) struct Embeddings {
    pub words: Box<dyn Rows>,
    pub positions: Box<dyn Rows>,
    pub types: Box<dyn Rows>,
    pub norm: Norm,
}

/// One input sequence: token ids and token type ids, the same length.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

/// The last hidden state of a batch: every sequence's token rows, stacked.
#[derive(Debug, Clone)]
pub struct Hidden {
    /// `tokens × width`.
    pub data: Vec<f32>,
    /// Row width (the hidden size).
    pub width: usize,
    /// Sequence `i` is rows `starts[i]..starts[i + 1]`.
    pub starts: Vec<usize>,
}

impl Hidden {
    /// The rows of sequence `i`.
    pub fn rows(&self, i: usize) -> &[f32] {
        &self.data[self.starts[i] * self.width..self.starts[i + 1] * self.width]
    }

    /// Sequences held.
    pub fn len(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Whether no sequence is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The largest scratch kept for the next call: 32 MiB holds MiniLM's buffers for 32 ×
/// 256 tokens.
const MAX_POOLED_SCRATCH: usize = 32 << 20;

/// Buffers one forward pass needs, kept between calls.
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    inner: Vec<f32>,
    scores: Vec<f32>,
    keys: PackedF32,
    values: PackedF32,
    quantized: QuantizedRows,
}

impl Scratch {
    /// Bytes the buffers hold.
    fn bytes(&self) -> usize {
        4 * (self.x.capacity()
            + self.qkv.capacity()
            + self.context.capacity()
            + self.inner.capacity()
            + self.scores.capacity())
            + self.keys.bytes()
            + self.values.bytes()
            + self.quantized.bytes()
    }
}

/// The CPU BERT encoder.
#[derive(Debug)]
pub struct CpuBert {
    pub(crate) embeddings: Embeddings,
    pub(crate) layers: Vec<Layer>,
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) activation: Activation,
    scratch: Mutex<Vec<Scratch>>,
}

impl CpuBert {
    pub(crate) fn new(
        embeddings: Embeddings,
        layers: Vec<Layer>,
        hidden: usize,
        heads: usize,
        activation: Activation,
    ) -> Self {
        Self {
            embeddings,
            layers,
            hidden,
            heads,
            activation,
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Whether the projections are INT8.
    pub fn is_int8(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|l| matches!(l.qkv.weight, Weight::Int8(_)))
    }

    /// The last hidden state of every sequence, on the widest instruction set this CPU
    /// has ([`Isa::current`]).
    pub fn forward(&self, seqs: &[Sequence<'_>]) -> Result<Hidden, ModelError> {
        self.forward_with(Isa::current(), seqs)
    }

    /// [`CpuBert::forward`] on a chosen instruction set (capped at what the CPU has).
    pub fn forward_with(&self, isa: Isa, seqs: &[Sequence<'_>]) -> Result<Hidden, ModelError> {
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        starts.push(0);
        for (index, s) in seqs.iter().enumerate() {
            self.check(index, s)?;
            starts.push(starts[index] + s.ids.len());
        }
        let mut scratch = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
        self.embed(seqs, &mut scratch.x);
        #[allow(unsafe_code)]
        match isa.min(Isa::detected()) {
            // SAFETY: `Isa::detected` found AVX-512 F/BW/VL, VNNI, AVX2 and FMA on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { layers_avx512(self, &lens, &mut scratch) },
            // SAFETY: `Isa::detected` found AVX2 and FMA on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { layers_avx2(self, &lens, &mut scratch) },
            // SAFETY: the portable copy uses no instruction beyond the target's baseline.
            _ => unsafe { layers::<Portable>(self, &lens, &mut scratch) },
        }
        let data = std::mem::take(&mut scratch.x);
        // A scratch grown by an unusually large batch is dropped, not kept for the life of
        // the process.
        if scratch.bytes() <= MAX_POOLED_SCRATCH {
            if let Ok(mut pool) = self.scratch.lock() {
                pool.push(scratch);
            }
        }
        Ok(Hidden {
            data,
            width: self.hidden,
            starts,
        })
    }

    fn check(&self, index: usize, s: &Sequence<'_>) -> Result<(), ModelError> {
        let e = &self.embeddings;
        let bad = |reason: String| Err(ModelError::BadInput { index, reason });
        if s.ids.is_empty() || s.ids.len() != s.type_ids.len() {
            return bad(format!(
                "{} token ids and {} type ids; both must be the same, non-zero length",
                s.ids.len(),
                s.type_ids.len()
            ));
        }
        if s.ids.len() > e.positions.rows() {
            return bad(format!(
                "{} tokens, more than the model's {} positions",
                s.ids.len(),
                e.positions.rows()
            ));
        }
        if let Some(id) = s.ids.iter().find(|&&id| id as usize >= e.words.rows()) {
            return bad(format!(
                "token id {id} is outside the vocabulary of {}",
                e.words.rows()
            ));
        }
        if let Some(t) = s.type_ids.iter().find(|&&t| t as usize >= e.types.rows()) {
            return bad(format!(
                "token type {t} is outside the model's {} types",
                e.types.rows()
            ));
        }
        Ok(())
    }

    /// Word + position + type embeddings, then layer norm, into `x`.
    fn embed(&self, seqs: &[Sequence<'_>], x: &mut Vec<f32>) {
        let h = self.hidden;
        let e = &self.embeddings;
        x.clear();
        x.resize(seqs.iter().map(|s| s.ids.len()).sum::<usize>() * h, 0.0);
        let mut rows = x.chunks_exact_mut(h);
        for s in seqs {
            for (pos, (&id, &ty)) in s.ids.iter().zip(s.type_ids).enumerate() {
                if let Some(row) = rows.next() {
                    e.words.add_row(id as usize, row);
                    e.positions.add_row(pos, row);
                    e.types.add_row(ty as usize, row);
                }
            }
        }
        ops::layer_norm(x, h, &e.norm.gamma, &e.norm.beta, e.norm.eps);
    }
}

/// # Safety
/// The CPU must have every feature enabled here.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn layers_avx512(m: &CpuBert, lens: &[usize], s: &mut Scratch) {
    layers::<Avx512>(m, lens, s);
}

/// # Safety
/// The CPU must have every feature enabled here.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn layers_avx2(m: &CpuBert, lens: &[usize], s: &mut Scratch) {
    layers::<Avx2>(m, lens, s);
}

/// Every encoder layer over `s.x` (`tokens × hidden`), in place.
///
/// # Safety
/// The CPU must have `K`'s instruction set.
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn layers<K: Kernels>(m: &CpuBert, lens: &[usize], s: &mut Scratch) {
    let h = m.hidden;
    let tokens = s.x.len() / h;
    for layer in &m.layers {
        resize(&mut s.qkv, tokens * 3 * h);
        resize(&mut s.context, tokens * h);
        resize(&mut s.inner, tokens * layer.intermediate.weight.n());
        project::<K>(
            &layer.qkv,
            tokens,
            &s.x,
            &mut s.qkv,
            None,
            false,
            &mut s.quantized,
        );
        attention::<K>(m, lens, s);
        project::<K>(
            &layer.attention_out,
            tokens,
            &s.context,
            &mut s.x,
            None,
            true,
            &mut s.quantized,
        );
        let n = &layer.attention_norm;
        ops::layer_norm(&mut s.x, h, &n.gamma, &n.beta, n.eps);
        project::<K>(
            &layer.intermediate,
            tokens,
            &s.x,
            &mut s.inner,
            Some(m.activation),
            false,
            &mut s.quantized,
        );
        project::<K>(
            &layer.output,
            tokens,
            &s.inner,
            &mut s.x,
            None,
            true,
            &mut s.quantized,
        );
        let n = &layer.output_norm;
        ops::layer_norm(&mut s.x, h, &n.gamma, &n.beta, n.eps);
    }
}

fn resize(v: &mut Vec<f32>, len: usize) {
    if v.len() != len {
        v.resize(len, 0.0);
    }
}

/// `out = act(a Wᵀ + b (+ out))` over `rows` rows.
///
/// # Safety
/// The CPU must have `K`'s instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments, unsafe_code)]
unsafe fn project<K: Kernels>(
    linear: &Linear,
    rows: usize,
    a: &[f32],
    out: &mut [f32],
    activation: Option<Activation>,
    accumulate: bool,
    quantized: &mut QuantizedRows,
) {
    let (k, n) = (linear.weight.k(), linear.weight.n());
    let epi = Epilogue {
        bias: Some(&linear.bias),
        accumulate,
        activation,
    };
    match &linear.weight {
        Weight::F32(w) => gemm::matmul::<K>(rows, a, k, w, out, n, epi),
        Weight::Int8(w) => {
            quantized.quantize(rows, k, a, k);
            int8::matmul::<K>(rows, quantized, w, out, n, epi);
        }
    }
}

/// Self-attention of every sequence and head, from `s.qkv` into `s.context`.
///
/// # Safety
/// The CPU must have `K`'s instruction set.
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn attention<K: Kernels>(m: &CpuBert, lens: &[usize], s: &mut Scratch) {
    let h = m.hidden;
    let head = h / m.heads;
    let ld = 3 * h;
    let mut start = 0;
    for &len in lens {
        let qkv = &s.qkv[start * ld..];
        // Score rows are padded to whole vectors, the padding -inf, so softmax runs
        // without scalar tails; `P V` reads only the `len` real columns.
        let stride = len.next_multiple_of(16);
        resize(&mut s.scores, len * stride);
        for hd in 0..m.heads {
            let col = hd * head;
            // Kᵀ: column j is key j, a contiguous run of `head` values.
            s.keys.repack_rows(head, len, |j| {
                (&qkv[j * ld + h + col..j * ld + h + col + head], 1.0)
            });
            gemm::matmul::<K>(
                len,
                &qkv[col..],
                ld,
                &s.keys,
                &mut s.scores,
                stride,
                Epilogue::default(),
            );
            for row in s.scores.chunks_exact_mut(stride) {
                row[len..].fill(f32::NEG_INFINITY);
            }
            ops::softmax::<K>(&mut s.scores, stride);
            // V: element (j, d) is value j's component d.
            s.values.repack(len, head, &qkv[2 * h + col..], ld, 1);
            gemm::matmul::<K>(
                len,
                &s.scores,
                stride,
                &s.values,
                &mut s.context[start * h + col..],
                h,
                Epilogue::default(),
            );
        }
        start += len;
    }
}
