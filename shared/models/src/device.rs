//! Which device an instance computes on.
//!
//! The platform tells each instance what its manifest asked for: `THAW_GPU` (`T4`,
//! `L4:2`, … or unset for CPU), `THAW_GPU_REQUIRED=1` when the function must not run
//! without it, and `CUDA_VISIBLE_DEVICES` with the GPUs it may use.
//!
//! - No GPU asked: the CPU.
//! - A GPU asked, the binary built with `--features cuda` and a device present: CUDA
//!   device 0 of those visible.
//! - Otherwise the CPU with a warning, or, with `THAW_GPU_REQUIRED=1`, an init error that
//!   says why.

use candle_core::Device;

use crate::ModelError;

/// The device an instance computes on when nothing was asked: the CPU.
pub fn default_device() -> Device {
    Device::Cpu
}

/// The device the platform's environment asks for (see the module docs).
pub fn from_env() -> Result<Device, ModelError> {
    let wanted = std::env::var("THAW_GPU")
        .ok()
        .filter(|g| !g.is_empty() && g != "none");
    let required = std::env::var("THAW_GPU_REQUIRED").as_deref() == Ok("1");
    let Some(gpu) = wanted else {
        return Ok(Device::Cpu);
    };
    let why = match cuda_device() {
        Ok(device) => return Ok(device),
        Err(why) => why,
    };
    if required {
        return Err(ModelError::NoGpu {
            wanted: gpu,
            reason: why,
        });
    }
    tracing::warn!(gpu = %gpu, reason = %why, "running on the CPU instead of the GPU the manifest asks for");
    Ok(Device::Cpu)
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device, String> {
    Device::new_cuda(0).map_err(|e| format!("no usable CUDA device: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device, String> {
    Err("this binary was built without the `cuda` feature".into())
}
