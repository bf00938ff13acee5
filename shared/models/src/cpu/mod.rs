//! The CPU encoder: BERT's forward pass on plain slices, with weights packed once at load
//! and kernels compiled for the CPU's widest instruction set.
//!
//! candle stays the tensor and loading library for GPUs and for the chat model; on a CPU,
//! candle's generic ops were the cost that mattered for small inputs (an allocation and a
//! pass over memory per op, weights re-packed by every matrix multiply). Here a forward
//! pass is a handful of fused loops over buffers that calls reuse:
//!
//! - [`isa`]: AVX-512 (with VNNI), AVX2 or portable, chosen once at run time;
//! - [`gemm`]: f32 `A · B` against pre-packed B, bias, residual and activation fused;
//! - [`int8`]: the same shape with INT8 weights per channel and activations per row;
//! - [`ops`]: layer norm, softmax, GELU;
//! - [`bert`]: the encoder layers, over unpadded sequences; [`load`]: from a snapshot.

mod bert;
mod gemm;
mod int8;
pub mod isa;
mod load;
mod ops;

pub use bert::{CpuBert, Hidden, Sequence};
pub use load::load;
