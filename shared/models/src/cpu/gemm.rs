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
    pub(crate) fn pack_rows<'w>(
        k: usize,
        n: usize,
        row: impl Fn(usize) -> (&'w [f32], f32),
    ) -> Self {
        let mut p = PackedF32::default();
        p.repack_rows(k, n, row);
        p
    }

    /// [`PackedF32::pack_rows`] into this buffer, reusing its allocation. Rows are read
    /// 8 values at a time into a block written out in k order, so reads and writes both
    /// stream (a column-at-a-time gather was a tenth of attention).
    #[inline(always)]
    pub(crate) fn repack_rows<'w>(
        &mut self,
        k: usize,
        n: usize,
        row: impl Fn(usize) -> (&'w [f32], f32),
    ) {
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
                for (j, col) in (p * NR..p * NR + cols).enumerate() {
                    let (w, s) = row(col);
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
        assert!(
            src.len() > (k - 1) * rs_k + (n - 1) * cs_n,
            "pack: source too short"
        );
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
    assert!(
        epi.bias.is_none_or(|bias| bias.len() >= n),
        "matmul: bias too short"
    );
    let mut tiles = F32Tiles::<K> {
        k,
        n,
        a,
        lda,
        b,
        c,
        ldc,
        epi,
        isa: std::marker::PhantomData,
    };
    // SAFETY: every A read (row < m, column < k) and C write (row < m, column < n) is
    // inside the lengths asserted above; panels are k × NR floats; the caller vouches
    // for K's instruction set.
    unsafe { for_each_tile::<K, _>(m, n.div_ceil(NR), &mut tiles) }
}

/// One `R × NR` block of a blocked product, at rows `row0..row0 + R` and panel `p`.
pub(crate) trait Tiles {
    /// Computes and writes the block.
    ///
    /// # Safety
    /// `row0 + R` must not exceed the product's rows, nor `p` its panels.
    unsafe fn tile<const R: usize>(&mut self, row0: usize, p: usize);
}

/// Walks `m` rows and `panels` panels: rows in cache blocks of [`MC`] (the block stays in
/// L2 while every panel passes over it), each block in micro-tiles as tall as `K`'s
/// register file allows, then 8, 4, 2, 1 for the rest.
///
/// # Safety
/// As [`Tiles::tile`], for every block it is given here.
#[inline(always)]
pub(crate) unsafe fn for_each_tile<K: Kernels, T: Tiles>(m: usize, panels: usize, t: &mut T) {
    for m0 in (0..m).step_by(MC) {
        let mc = MC.min(m - m0);
        for p in 0..panels {
            let mut r = m0;
            while r < m0 + mc {
                let rows = tile_rows::<K>(m0 + mc - r);
                match rows {
                    12 => t.tile::<12>(r, p),
                    8 => t.tile::<8>(r, p),
                    4 => t.tile::<4>(r, p),
                    2 => t.tile::<2>(r, p),
                    _ => t.tile::<1>(r, p),
                }
                r += rows;
            }
        }
    }
}

/// The f32 product's state for [`for_each_tile`].
struct F32Tiles<'a, 'e, K> {
    k: usize,
    n: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a PackedF32,
    c: &'a mut [f32],
    ldc: usize,
    epi: Epilogue<'e>,
    isa: std::marker::PhantomData<K>,
}

impl<K: Kernels> Tiles for F32Tiles<'_, '_, K> {
    #[inline(always)]
    unsafe fn tile<const R: usize>(&mut self, row0: usize, p: usize) {
        let k = self.k;
        let n0 = p * NR;
        let panel = self.b.data.as_ptr().add(p * k * NR);
        let acc = K::f32_tile::<R>(k, self.a.as_ptr().add(row0 * self.lda), self.lda, panel);
        finish::<K, R>(
            &acc,
            self.c,
            row0,
            self.ldc,
            n0,
            NR.min(self.n - n0),
            self.epi,
        );
    }
}

/// The largest micro-tile height that fits `rest` rows and the register file.
#[inline(always)]
fn tile_rows<K: Kernels>(rest: usize) -> usize {
    [12, 8, 4, 2, 1]
        .into_iter()
        .find(|&h| h <= K::ROWS && h <= rest)
        .unwrap_or(1)
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
    // SAFETY (caller): n0 + cols <= n <= bias.len(), asserted in `matmul`.
    let bias = epi.bias.map(|b| unsafe { b.get_unchecked(n0..n0 + cols) });
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
        Some(Activation::Gelu) => out
            .iter_mut()
            .for_each(|v| *v = Activation::Gelu.apply(*v, K::madd)),
        Some(Activation::GeluTanh) => {
            out.iter_mut()
                .for_each(|v| *v = Activation::GeluTanh.apply(*v, K::madd));
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
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm_prefetch,
        _MM_HINT_T0,
    };
    let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..k {
        // When few rows share a panel (a single text) it streams from memory: ask for
        // the step 8 ahead (1 KiB). A hint, so an address past the panel never faults.
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + 8) * NR).cast::<i8>());
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
