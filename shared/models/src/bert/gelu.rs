//! GELU with the exact (erf) form, as BERT's `hidden_act = "gelu"` and sentence-
//! transformers compute it, vectorised for the CPU.
//!
//! candle's `gelu_erf` calls a scalar `erf` per element, which was a quarter of a
//! batched MiniLM forward pass here (perf: `libm::erff`, `expf`). This computes the same
//! function with arithmetic only, so the compiler vectorises the loop, and runs it
//! through `pulp`'s run-time dispatch: AVX-512 where the CPU has it, AVX2 where it has
//! that, plain code elsewhere.
//!
//! erf comes from Abramowitz and Stegun's formula 7.1.26 (absolute error below 1.5e-7),
//! with `exp` from a range reduction to `[-ln 2 / 2, ln 2 / 2]` and a degree-6
//! polynomial. The result matches candle's `gelu_erf` to about 1e-7 per element (the
//! tests hold it to 2e-6), far inside the embedding parity bound of 1e-4.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `gelu_erf` on a tensor: the vectorised kernel for contiguous f32 on the CPU, candle's
/// own op anywhere else (GPUs, other dtypes).
pub(crate) fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        xs.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        xs.gelu_erf()
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "thaw-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input only", self.name());
        };
        let src = &data[start..end];
        let mut dst = vec![0f32; src.len()];
        apply(src, &mut dst);
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `dst[i] = gelu(src[i])`, dispatched to the widest SIMD the CPU has.
pub(crate) fn apply(src: &[f32], dst: &mut [f32]) {
    struct Kernel<'a> {
        src: &'a [f32],
        dst: &'a mut [f32],
    }
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            // Compiled inside the dispatched function, so the target features are on and
            // this plain loop is vectorised for them.
            for (d, &x) in self.dst.iter_mut().zip(self.src) {
                *d = gelu(x);
            }
        }
    }
    pulp::Arch::new().dispatch(Kernel { src, dst });
}

/// `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    gelu_with(x, plain_madd)
}

/// `a * b + c` in two roundings: what every target can vectorise without FMA.
#[inline(always)]
fn plain_madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// [`gelu`] with `madd` as the polynomials' multiply-add, so a caller compiled with FMA
/// evaluates them in fused instructions.
#[inline(always)]
pub(crate) fn gelu_with(x: f32, madd: fn(f32, f32, f32) -> f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2, madd))
}

/// erf by Abramowitz and Stegun 7.1.26, branch-free: odd, so computed on |x|.
#[inline(always)]
fn erf(x: f32, madd: fn(f32, f32, f32) -> f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = madd(madd(madd(madd(A5, t, A4), t, A3), t, A2), t, A1) * t;
    let y = 1.0 - poly * exp_neg_with(-(a * a), madd);
    y.copysign(x)
}

/// `e^x` for `x <= 0`, arithmetic only: `x = n ln 2 + r`, `e^x = 2^n e^r`.
#[cfg(test)]
fn exp_neg(x: f32) -> f32 {
    exp_neg_with(x, plain_madd)
}

/// [`exp_neg`] with `madd` as the polynomial's multiply-add.
#[inline(always)]
pub(crate) fn exp_neg_with(x: f32, madd: fn(f32, f32, f32) -> f32) -> f32 {
    // Below this e^x is under f32's smallest normal; 2^n must stay a normal number.
    let x = x.max(-87.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (no `round` call): the sum's
    // low mantissa bits are then the integer n itself.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    // ln 2 in two parts, so r keeps its low bits.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = madd(1.0 / 720.0, r, 1.0 / 120.0);
    let p = madd(p, r, 1.0 / 24.0);
    let p = madd(p, r, 1.0 / 6.0);
    let p = madd(p, r, 0.5);
    let p = madd(p, r, 1.0);
    let p = madd(p, r, 1.0);
    // 2^n from its exponent bits, n read from `shifted`'s bits (in [-126, 0] here). Not
    // `n as i32`: that saturating cast is what keeps a loop from vectorising.
    let n_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candles_exact_gelu_everywhere_that_matters() {
        // Dense over [-12, 12], plus the edges and special points.
        let mut xs: Vec<f32> = (-240_000..=240_000).map(|i| i as f32 * 5e-5).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e6, -1e6, 88.0, -88.0,
        ]);
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).expect("tensor");
        let want = t
            .gelu_erf()
            .and_then(|v| v.to_vec1::<f32>())
            .expect("candle");
        let got = gelu_erf(&t).and_then(|v| v.to_vec1::<f32>()).expect("ours");
        let mut worst = (0f32, 0f32);
        for ((x, w), g) in xs.iter().zip(&want).zip(&got) {
            // Absolute for small values, relative for large ones.
            let err = (w - g).abs() / w.abs().max(1.0);
            if err > worst.0 {
                worst = (err, *x);
            }
        }
        assert!(worst.0 <= 2e-6, "error {} at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_neg_is_accurate_over_its_range() {
        for i in 0..=87_000 {
            let x = -(i as f32) * 1e-3;
            let want = x.exp();
            let got = exp_neg(x);
            assert!(
                (got - want).abs() <= want * 5e-7 + f32::MIN_POSITIVE,
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn a_non_contiguous_input_is_made_contiguous_first() {
        let t = Tensor::arange(0f32, 12.0, &candle_core::Device::Cpu)
            .and_then(|t| t.reshape((3, 4)))
            .and_then(|t| t.t())
            .expect("tensor");
        let want = t
            .gelu_erf()
            .and_then(|v| v.to_vec2::<f32>())
            .expect("candle");
        let got = gelu_erf(&t).and_then(|v| v.to_vec2::<f32>()).expect("ours");
        for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
            assert!((w - g).abs() <= 2e-6 * w.abs().max(1.0));
        }
    }
}
