//! Which SIMD instruction set the CPU kernels run with, chosen once per process.
//!
//! Every kernel in [`super`] is written once, generic over [`Kernels`], and compiled three
//! times inside `#[target_feature]` functions: for AVX-512 with VNNI (Ice Lake, Sapphire
//! Rapids, Zen 4 and later), for AVX2 with FMA (Haswell, Zen 1 to 3), and for the baseline
//! x86-64 or any other architecture. The whole forward pass is dispatched once, so every
//! loop inside it is vectorised for the chosen set without a per-op check.
//!
//! `THAW_CPU_ISA=portable|avx2|avx512` caps the process's choice (never above what the
//! CPU has). The tests call `CpuBert::forward_with` for each set instead, to hold every
//! path to the same references in one process.

#![allow(unsafe_code)] // the micro-tile entry points are unsafe fns; see their # Safety.

use std::sync::OnceLock;

use super::gemm::NR;

/// The instruction set a forward pass runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, vectorised only as far as the target's baseline allows.
    Portable,
    /// AVX2 and FMA: 8 f32 lanes, 16 registers.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI: 16 f32 lanes, 32 registers, `vpdpbusd` for INT8.
    Avx512,
}

impl Isa {
    /// The widest set this CPU has, capped by `THAW_CPU_ISA`; detected once.
    pub fn current() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let cap = std::env::var("THAW_CPU_ISA")
                .ok()
                .and_then(|v| Isa::parse(&v))
                .unwrap_or(Isa::Avx512);
            Isa::detected().min(cap)
        })
    }

    /// The widest set this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// `portable`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// What differs between the compiled copies of a kernel: the register blocking, whether
/// a fused multiply-add is one instruction, and the INT8 inner product.
pub(crate) trait Kernels {
    /// Rows of A per f32 micro-tile (the tile is `ROWS × 32`): as many as the
    /// accumulators fit in the register file.
    const ROWS: usize;
    /// Whether the INT8 inner product may use AVX-512 VNNI's `vpdpbusd`.
    const VNNI: bool;
    /// `a * b + c`, fused where the set has FMA, so the compiler never calls libm.
    fn madd(a: f32, b: f32, c: f32) -> f32;

    /// An `R × 32` f32 micro-tile of `A · B` (see [`super::gemm`]).
    ///
    /// # Safety
    /// `a` must hold R rows of stride `lda` with `k` columns; `b` a `k × 32` panel; the
    /// CPU must have this set.
    #[inline(always)]
    unsafe fn f32_tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
    ) -> [[f32; NR]; R]
    where
        Self: Sized,
    {
        // SAFETY: forwarded from the caller.
        unsafe { super::gemm::tile_plain::<Self, R>(k, a, lda, b) }
    }
}

/// AVX-512: 32 registers hold 12 rows × 2 vectors of accumulators.
pub(crate) struct Avx512;
/// AVX2: 16 registers hold 2 rows × 4 vectors.
pub(crate) struct Avx2;
/// Baseline: the compiler decides.
pub(crate) struct Portable;

impl Kernels for Avx512 {
    const ROWS: usize = 12;
    const VNNI: bool = true;
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn f32_tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
    ) -> [[f32; NR]; R] {
        // SAFETY: forwarded from the caller, who runs this copy only on AVX-512 CPUs.
        unsafe { super::gemm::tile_avx512::<R>(k, a, lda, b) }
    }
}

impl Kernels for Avx2 {
    const ROWS: usize = 2;
    const VNNI: bool = false;
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl Kernels for Portable {
    const ROWS: usize = 1;
    const VNNI: bool = false;
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
