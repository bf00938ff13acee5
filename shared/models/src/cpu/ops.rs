//! The element-wise and row-wise steps of the encoder, on slices: layer norm, softmax and
//! GELU. Each is `#[inline(always)]` so it compiles inside the dispatched forward pass
//! with that pass's target features.

use super::isa::Kernels;
use crate::bert::gelu::{exp_neg_with, gelu_with};

/// The feed-forward activation, applied in the first projection's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Exact erf GELU (`hidden_act = "gelu"`).
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `max(0, x)`.
    Relu,
}

impl Activation {
    /// The activation of `x`, with `madd` as the multiply-add (fused where the caller's
    /// instruction set has FMA).
    #[inline(always)]
    pub(crate) fn apply(self, x: f32, madd: fn(f32, f32, f32) -> f32) -> f32 {
        match self {
            Activation::Gelu => gelu_with(x, madd),
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// Layer norm over each of the `rows` rows of `width` in `x`, in place.
#[inline(always)]
pub(crate) fn layer_norm(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    let inv_width = 1.0 / width as f32;
    for row in x.chunks_exact_mut(width) {
        let mean = sum(row, |v| v) * inv_width;
        let var = sum(row, |v| (v - mean) * (v - mean)) * inv_width;
        let inv_std = 1.0 / (var + eps).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv_std * g + b;
        }
    }
}

/// Softmax over each row of `width` in `x`, in place. Rows hold one sequence's scores
/// only (sequences are never padded), so no mask is needed.
#[inline(always)]
pub(crate) fn softmax<K: Kernels>(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let max = max(row);
        for v in row.iter_mut() {
            *v = exp_neg_with(*v - max, K::madd);
        }
        let inv = 1.0 / sum(row, |v| v);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `Σ f(x)` in 16 interleaved partial sums, so the loop vectorises (a single running sum
/// is a serial dependency the compiler may not reorder).
#[inline(always)]
fn sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += f(x);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The largest value, in 16 lanes so it vectorises.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = l.max(x);
        }
    }
    lanes
        .iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}
