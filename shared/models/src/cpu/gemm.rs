//! f32 matrix multiply against a right-hand side packed once: `C = A · B`, with the bias,
//! the residual and GELU applied while each output tile is still in registers.
//!
//! B is packed into panels of [`NR`] = 32 columns, each panel `k × 32` contiguous, so the
//! micro-kernel reads it as two AVX-512 vectors per step and A one scalar per row
//! (broadcast). A `ROWS × 32` tile of C lives in registers for the whole `k` loop: 24 of
//! the 32 AVX-512 registers at 12 rows. Weights are packed at load; attention packs its
//! K and V heads per call, which costs `len × head` copies against `len² × head` work.
//!
//! Rows are walked in blocks of [`MC`] so the A block stays in L2 while every panel of B
//! passes over it; a panel (`k × 128` bytes) stays in L1/L2 while the block's rows do.

// The micro-kernels index with raw pointers inside bounds their callers assert once per
// call; a bounds check per multiply-add would cost more than the multiply-add.
#![allow(unsafe_code)]

use super::isa::Kernels;
use super::ops::Activation;

/// Columns per packed panel: two AVX-512 vectors of f32.
pub(crate) const NR: usize = 32;
/// Rows of A per cache block.
const MC: usize = 96;

/// B, `k × n`, in panels of [`NR`] columns, zero-padded to a whole panel.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedF32 {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedF32 {
    /// Packs `Bᵀ` given by rows: output column `j` of B is `row(j) = (w, s)`, the
    /// weight row `w` (length k) times `s`.
    pub(crate) fn pack_rows<'w>(k: usize, n: usize, row: impl Fn(usize) -> (&'w [f32], f32)) -> Self {
        let mut p = PackedF32::default();
        p.repack_rows(k, n, row);
        p
    }

    /// [`PackedF32::pack_rows`] into this buffer, reusing its allocation. Rows are read
    /// 8 values at a time into a block written out in k order, so reads and writes both
    /// stream (a column-at-a-time gather was a tenth of attention).
    #[inline(always)]
    pub(crate) fn repack_rows<'w>(&mut self, k: usize, n: usize, row: impl Fn(usize) -> (&'w [f32], f32)) {
        let panels = n.div_ceil(NR);
        self.k = k;
        self.n = n;
        self.data.clear();
        self.data.resize(panels * k * NR, 0.0);
        if k == 0 {
            return;
        }
        for (p, panel) in self.data.chunks_exact_mut(k * NR).enumerate() {
            let cols = NR.min(n - p * NR);
            for k0 in (0..k).step_by(8) {
                let kb = 8.min(k - k0);
                let mut block = [[0f32; NR]; 8];
                for j in 0..cols {
                    let (w, s) = row(p * NR + j);
                    for (t, &v) in w[k0..k0 + kb].iter().enumerate() {
                        block[t][j] = v * s;
                    }
                }
                for (t, b) in block[..kb].iter().enumerate() {
                    panel[(k0 + t) * NR..(k0 + t + 1) * NR].copy_from_slice(b);
                }
            }
        }
    }

    /// [`PackedF32::pack_rows`]' layout, from a strided source, into this buffer, reusing its allocation.
    #[inline(always)]
    pub(crate) fn repack(&mut self, k: usize, n: usize, src: &[f32], rs_k: usize, cs_n: usize) {
        let panels = n.div_ceil(NR);
        self.k = k;
        self.n = n;
        self.data.clear();
        self.data.resize(panels * k * NR, 0.0);
        if k == 0 || n == 0 {
            return;
        }
        assert!(src.len() > (k - 1) * rs_k + (n - 1) * cs_n, "pack: source too short");
        for (p, panel) in self.data.chunks_exact_mut(k * NR).enumerate() {
            let cols = NR.min(n - p * NR);
            for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                let base = kk * rs_k + p * NR * cs_n;
                if cs_n == 1 {
                    // Rows of B are contiguous (attention's V): a copy, not a gather.
                    row[..cols].copy_from_slice(&src[base..base + cols]);
                } else {
                    for (v, &x) in row[..cols].iter_mut().zip(src[base..].iter().step_by(cs_n)) {
                        *v = x;
                    }
                }
            }
        }
    }

    /// The inner dimension.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        4 * self.data.capacity()
    }

    /// The output width.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

}

/// What happens to each output value after the product: `act(acc + bias + c_old)`, each
/// part optional.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added per column.
    pub bias: Option<&'a [f32]>,
    /// Add what C held (the residual), rather than overwrite it.
    pub accumulate: bool,
    /// Applied last.
    pub activation: Option<Activation>,
}

/// `C[m × n] (row stride ldc) = A[m × k] (row stride lda) · B`, then the epilogue.
///
/// # Safety
/// The CPU must have `K`'s instruction set (the AVX-512 copy runs its intrinsics
/// unchecked): call it only from a function dispatched on [`super::isa::Isa::detected`].
#[inline(always)]
pub(crate) unsafe fn matmul<K: Kernels>(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedF32,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "matmul: A too short");
    assert!(c.len() >= (m - 1) * ldc + n, "matmul: C too short");
    assert!(epi.bias.is_none_or(|bias| bias.len() >= n), "matmul: bias too short");
    for m0 in (0..m).step_by(MC) {
        let mc = MC.min(m - m0);
        for (p, panel) in b.data.chunks_exact(k * NR).enumerate() {
            let n0 = p * NR;
            let cols = NR.min(n - n0);
            let mut r = m0;
            while r < m0 + mc {
                let rows = tile_rows::<K>(m0 + mc - r);
                // SAFETY: rows r..r+rows are below m, so every A read (row < m, column
                // < k) and C write (row < m, column < n) is inside the asserted lengths;
                // the panel is k × NR floats.
                unsafe {
                    match rows {
                        12 => tile::<K, 12>(k, a, r, lda, panel, c, ldc, n0, cols, epi),
                        8 => tile::<K, 8>(k, a, r, lda, panel, c, ldc, n0, cols, epi),
                        4 => tile::<K, 4>(k, a, r, lda, panel, c, ldc, n0, cols, epi),
                        2 => tile::<K, 2>(k, a, r, lda, panel, c, ldc, n0, cols, epi),
                        _ => tile::<K, 1>(k, a, r, lda, panel, c, ldc, n0, cols, epi),
                    }
                }
                r += rows;
            }
        }
    }
}

/// The largest micro-tile height that fits `rest` rows and the register file.
#[inline(always)]
pub(crate) fn tile_rows<K: Kernels>(rest: usize) -> usize {
    [12, 8, 4, 2, 1]
        .into_iter()
        .find(|&h| h <= K::ROWS && h <= rest)
        .unwrap_or(1)
}

/// One `R × NR` tile of C at rows `row0..row0 + R`, columns `n0..n0 + cols`.
///
/// # Safety
/// Rows `row0..row0 + R` of A (k columns, stride lda) and of C (n0 + cols columns, stride
/// ldc) must be in bounds, and `panel` must hold `k × NR` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<K: Kernels, const R: usize>(
    k: usize,
    a: &[f32],
    row0: usize,
    lda: usize,
    panel: &[f32],
    c: &mut [f32],
    ldc: usize,
    n0: usize,
    cols: usize,
    epi: Epilogue<'_>,
) {
    let acc = K::f32_tile::<R>(k, a.as_ptr().add(row0 * lda), lda, panel.as_ptr());
    finish::<K, R>(&acc, c, row0, ldc, n0, cols, epi);
}

/// Writes a finished tile through the epilogue.
///
/// # Safety
/// Rows `row0..row0 + R`, columns `n0..n0 + cols` of C (stride ldc) must be in bounds.
#[inline(always)]
pub(crate) unsafe fn finish<K: Kernels, const R: usize>(
    acc: &[[f32; NR]; R],
    c: &mut [f32],
    row0: usize,
    ldc: usize,
    n0: usize,
    cols: usize,
    epi: Epilogue<'_>,
) {
    let bias = match epi.bias {
        // SAFETY (caller): n0 + cols <= n <= bias.len(), asserted in `matmul`.
        Some(b) => Some(b.get_unchecked(n0..n0 + cols)),
        None => None,
    };
    for (r, acc_r) in acc.iter().enumerate() {
        let out = c.get_unchecked_mut((row0 + r) * ldc + n0..(row0 + r) * ldc + n0 + cols);
        if cols == NR {
            // The common case, with a constant trip count the compiler vectorises.
            write_row::<K>(&acc_r[..], bias, out, epi);
        } else {
            write_row::<K>(&acc_r[..cols], bias, out, epi);
        }
    }
}

#[inline(always)]
fn write_row<K: Kernels>(acc: &[f32], bias: Option<&[f32]>, out: &mut [f32], epi: Epilogue<'_>) {
    // One simple loop per case, so each vectorises; the activation is its own pass over
    // the row while it is in L1.
    match (bias, epi.accumulate) {
        (Some(b), true) => {
            for ((o, &v), &b) in out.iter_mut().zip(acc).zip(b) {
                *o += v + b;
            }
        }
        (Some(b), false) => {
            for ((o, &v), &b) in out.iter_mut().zip(acc).zip(b) {
                *o = v + b;
            }
        }
        (None, true) => {
            for (o, &v) in out.iter_mut().zip(acc) {
                *o += v;
            }
        }
        (None, false) => out.copy_from_slice(&acc[..out.len()]),
    }
    match epi.activation {
        Some(Activation::Gelu) => out.iter_mut().for_each(|v| *v = Activation::Gelu.apply(*v, K::madd)),
        Some(Activation::GeluTanh) => {
            out.iter_mut().for_each(|v| *v = Activation::GeluTanh.apply(*v, K::madd));
        }
        Some(Activation::Relu) => out.iter_mut().for_each(|v| *v = v.max(0.0)),
        None => {}
    }
}

/// The micro-tile in plain Rust: `R × NR` accumulators over `k`, for the sets without a
/// hand-written kernel.
///
/// # Safety
/// `a` must hold R rows of stride `lda` with `k` columns; `b` a `k × NR` panel.
#[inline(always)]
pub(crate) unsafe fn tile_plain<K: Kernels, const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
) -> [[f32; NR]; R] {
    let mut acc = [[0f32; NR]; R];
    for kk in 0..k {
        let bv: [f32; NR] = std::ptr::read_unaligned(b.add(kk * NR).cast::<[f32; NR]>());
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = *a.add(r * lda + kk);
            for (o, &bj) in acc_r.iter_mut().zip(&bv) {
                *o = K::madd(av, bj, *o);
            }
        }
    }
    acc
}

/// The AVX-512 micro-tile: two vectors of B and one broadcast of A per row and step, 2·R
/// FMAs, the `R × 2` accumulators held in registers for the whole `k` loop.
///
/// # Safety
/// The CPU must have AVX-512 F; `a` must hold R rows of stride `lda` with `k` columns;
/// `b` a `k × NR` panel.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn tile_avx512<const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
) -> [[f32; NR]; R] {
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps};
    let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..k {
        let b0 = _mm512_loadu_ps(b.add(kk * NR));
        let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * lda + kk));
            acc_r[0] = _mm512_fmadd_ps(x, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(x, b1, acc_r[1]);
        }
    }
    // SAFETY: [__m512; 2] is 32 f32 lanes, the same size as [f32; NR].
    std::mem::transmute_copy::<[[__m512; 2]; R], [[f32; NR]; R]>(&acc)
}
