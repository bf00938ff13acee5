//! INT8 matrix multiply: weights quantized per output channel when the snapshot is built,
//! activations quantized per row when they are used, products summed in i32.
//!
//! - **Weights** (`thaw snapshot build --dtype int8`): each output channel `n` keeps
//!   `w_q = round(w / s_w[n])` in `[-127, 127]` with `s_w[n] = max |w[n, :]| / 127`.
//! - **Activations**: each row `m` of A gets its own affine map onto `[0, 255]`, scale
//!   `s_a[m]` and zero point `z[m]`, from that row's own minimum and maximum (zero always
//!   representable). Per-row ranges are what keep quality: one outlier token cannot
//!   flatten every other token's resolution, which is what a per-tensor scale does.
//! - **Product**: `C[m, n] = s_a[m] s_w[n] (Σ_k a_q[m, k] w_q[n, k] − z[m] Σ_k w_q[n, k])`,
//!   exact in i32 (255 · 127 · k stays below 2³¹ for k up to 66,000).
//!
//! B is packed into panels of 32 columns; within a panel each step of 4 along k is 128
//! bytes, column `j`'s 4 bytes at `4j`: the operand layout of AVX-512 VNNI's `vpdpbusd`,
//! which multiplies 64 unsigned by 64 signed bytes and adds each group of 4 into an i32
//! lane. Without VNNI the same layout is summed in plain i32 arithmetic.

// The micro-kernels index with raw pointers inside bounds their callers assert once per
// call; a bounds check per multiply-add would cost more than the multiply-add.
#![allow(unsafe_code)]

use super::gemm::{finish, for_each_tile, Epilogue, Tiles, NR};
use super::isa::Kernels;

/// Bytes per packed k-step of a panel: 32 columns × 4.
const STEP: usize = NR * 4;

/// B (`k × n`, signed 8-bit, one scale per column), packed for [`matmul`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedI8 {
    k: usize,
    n: usize,
    data: Vec<i8>,
    /// Σ_k w_q[n, k] per column, for the zero-point correction.
    col_sums: Vec<i32>,
    /// s_w per column.
    scales: Vec<f32>,
}

impl PackedI8 {
    /// Packs a row-major `n × k` weight (output channel `n` is row `n`) and its scales.
    pub(crate) fn pack(n: usize, k: usize, weight: &[i8], scales: &[f32]) -> Self {
        assert!(
            weight.len() >= n * k && scales.len() >= n,
            "pack: weight too short"
        );
        let k4 = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * k4 * STEP];
        for (p, panel) in data.chunks_exact_mut((k4 * STEP).max(1)).enumerate() {
            for j in 0..NR.min(n - p * NR) {
                let row = &weight[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &w) in row.iter().enumerate() {
                    panel[(kk / 4) * STEP + j * 4 + kk % 4] = w;
                }
            }
        }
        // Padded to whole panels (zero sums, unit scales), so the dequantization of every
        // tile reads 32 of each and vectorises with a constant trip count.
        let mut col_sums: Vec<i32> = weight[..n * k]
            .chunks_exact(k.max(1))
            .map(|row| row.iter().map(|&w| i32::from(w)).sum())
            .collect();
        col_sums.resize(panels * NR, 0);
        let mut scales = scales[..n].to_vec();
        scales.resize(panels * NR, 1.0);
        Self {
            k,
            n,
            data,
            col_sums,
            scales,
        }
    }

    /// The inner dimension.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// The output width.
    pub(crate) fn n(&self) -> usize {
        self.n
    }
}

/// A, quantized per row, its rows padded to a multiple of 4 bytes; reused across calls.
#[derive(Debug, Default)]
pub(crate) struct QuantizedRows {
    data: Vec<u8>,
    stride: usize,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

impl QuantizedRows {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.capacity() + 4 * (self.scales.capacity() + self.zeros.capacity())
    }

    /// Quantizes rows `0..m` (k columns, stride lda) of `a`.
    #[inline(always)]
    pub(crate) fn quantize(&mut self, m: usize, k: usize, a: &[f32], lda: usize) {
        self.stride = k.div_ceil(4) * 4;
        self.data.clear();
        self.data.resize(m * self.stride, 0);
        self.scales.clear();
        self.zeros.clear();
        for (r, out) in self
            .data
            .chunks_exact_mut(self.stride.max(1))
            .take(m)
            .enumerate()
        {
            let row = &a[r * lda..r * lda + k];
            let (lo, hi) = min_max(row);
            let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
            let inv = 1.0 / scale;
            // Round to nearest by adding 1.5 · 2²³ and reading the low mantissa bits: no
            // saturating float-to-int cast, so the loop vectorises.
            const SHIFT: f32 = 12_582_912.0;
            for (q, &x) in out.iter_mut().zip(row) {
                let v = (x * inv + zero).clamp(0.0, 255.0) + SHIFT;
                *q = (v.to_bits() & 0xff) as u8;
            }
            self.scales.push(scale);
            self.zeros.push(zero as i32);
        }
    }
}

/// The row's minimum and maximum, widened to include 0, in 16 lanes so it vectorises.
#[inline(always)]
fn min_max(row: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = l.min(x);
            *h = h.max(x);
        }
    }
    let fold = |init: f32, lanes: &[f32], f: fn(f32, f32) -> f32| {
        lanes
            .iter()
            .chain(chunks.remainder())
            .fold(init, |a, &b| f(a, b))
    };
    (fold(0.0, &lo, f32::min), fold(0.0, &hi, f32::max))
}

/// `C[m × n] = dequant(A_q · B_q)`, then the epilogue; A must hold `m` quantized rows of
/// B's `k`.
///
/// # Safety
/// The CPU must have `K`'s instruction set (the AVX-512 copy runs `vpdpbusd` unchecked):
/// call it only from a function dispatched on [`super::isa::Isa::detected`].
#[inline(always)]
pub(crate) unsafe fn matmul<K: Kernels>(
    m: usize,
    a: &QuantizedRows,
    b: &PackedI8,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue<'_>,
) {
    let (k4, n) = (b.k.div_ceil(4), b.n);
    if m == 0 || n == 0 || k4 == 0 {
        return;
    }
    assert!(
        a.stride == k4 * 4 && a.scales.len() >= m,
        "int8 matmul: A not quantized for B"
    );
    assert!(c.len() >= (m - 1) * ldc + n, "int8 matmul: C too short");
    assert!(
        epi.bias.is_none_or(|bias| bias.len() >= n),
        "int8 matmul: bias too short"
    );
    let mut tiles = Int8Tiles::<K> {
        k4,
        a,
        b,
        c,
        ldc,
        epi,
        isa: std::marker::PhantomData,
    };
    // SAFETY: rows below m are inside A's m quantized rows of stride 4·k4 and inside C's
    // asserted length; panels are k4 steps; the caller vouches for K's instruction set.
    unsafe { for_each_tile::<K, _>(m, n.div_ceil(NR), &mut tiles) }
}

/// The INT8 product's state for [`for_each_tile`].
struct Int8Tiles<'a, 'e, K> {
    k4: usize,
    a: &'a QuantizedRows,
    b: &'a PackedI8,
    c: &'a mut [f32],
    ldc: usize,
    epi: Epilogue<'e>,
    isa: std::marker::PhantomData<K>,
}

impl<K: Kernels> Tiles for Int8Tiles<'_, '_, K> {
    /// The i32 inner products, then dequantization into the f32 epilogue.
    #[inline(always)]
    unsafe fn tile<const R: usize>(&mut self, row0: usize, p: usize) {
        let (a, b, k4) = (self.a, self.b, self.k4);
        let n0 = p * NR;
        let panel = b.data.as_ptr().add(p * k4 * STEP);
        let rows = a.data.as_ptr().add(row0 * a.stride);
        let sums: [[i32; NR]; R] = if K::VNNI {
            #[cfg(target_arch = "x86_64")]
            {
                vnni::dot::<R>(k4, rows, a.stride, panel)
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                dot_plain::<R>(k4, rows, a.stride, panel)
            }
        } else {
            dot_plain::<R>(k4, rows, a.stride, panel)
        };
        let mut acc = [[0f32; NR]; R];
        let col_sums: &[i32; NR] = b.col_sums[n0..n0 + NR].try_into().unwrap_or(&[0; NR]);
        let col_scales: &[f32; NR] = b.scales[n0..n0 + NR].try_into().unwrap_or(&[0.0; NR]);
        for (r, (out, sum)) in acc.iter_mut().zip(&sums).enumerate() {
            let (scale, zero) = (a.scales[row0 + r], a.zeros[row0 + r]);
            for j in 0..NR {
                let corrected = sum[j] - zero * col_sums[j];
                out[j] = corrected as f32 * (scale * col_scales[j]);
            }
        }
        finish::<K, R>(&acc, self.c, row0, self.ldc, n0, NR.min(b.n - n0), self.epi);
    }
}

/// The i32 inner products in plain arithmetic.
///
/// # Safety
/// `a` must hold R rows of stride `lda` ≥ 4·k4 bytes; `panel` k4 steps.
#[inline(always)]
unsafe fn dot_plain<const R: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    panel: *const i8,
) -> [[i32; NR]; R] {
    let mut acc = [[0i32; NR]; R];
    for kk in 0..k4 {
        let b: [i8; STEP] = std::ptr::read_unaligned(panel.add(kk * STEP).cast::<[i8; STEP]>());
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x: [u8; 4] = std::ptr::read_unaligned(a.add(r * lda + kk * 4).cast::<[u8; 4]>());
            for (j, o) in acc_r.iter_mut().enumerate() {
                let mut s = 0i32;
                for t in 0..4 {
                    s += i32::from(x[t]) * i32::from(b[j * 4 + t]);
                }
                *o += s;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{NR, STEP};
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
    };

    /// The i32 inner products with `vpdpbusd`: per k-step, two panel vectors and one
    /// 4-byte broadcast per row, 2·R instructions of 64 multiply-adds each.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VNNI (only [`crate::cpu::isa::Avx512`] sets
    /// `VNNI`); `a` must hold R rows of stride `lda` ≥ 4·k4 bytes; `panel` k4 steps.
    #[inline(always)]
    pub(super) unsafe fn dot<const R: usize>(
        k4: usize,
        a: *const u8,
        lda: usize,
        panel: *const i8,
    ) -> [[i32; NR]; R] {
        let mut acc: [[__m512i; 2]; R] = [[_mm512_setzero_si512(); 2]; R];
        for kk in 0..k4 {
            let b0 = _mm512_loadu_si512(panel.add(kk * STEP).cast());
            let b1 = _mm512_loadu_si512(panel.add(kk * STEP + 64).cast());
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let x = std::ptr::read_unaligned(a.add(r * lda + kk * 4).cast::<i32>());
                let x = _mm512_set1_epi32(x);
                acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], x, b0);
                acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], x, b1);
            }
        }
        // SAFETY: [__m512i; 2] is 32 i32 lanes, the same size and a stricter alignment.
        std::mem::transmute_copy::<[[__m512i; 2]; R], [[i32; NR]; R]>(&acc)
    }
}
