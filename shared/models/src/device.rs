//! Which device an instance computes on.
//!
//! The platform tells each instance what its manifest asked for: `THAW_GPU` (`T4:1`,
//! `L4:1`, … or unset for CPU), `THAW_GPU_REQUIRED=1` when the function must not run
//! without it, and `CUDA_VISIBLE_DEVICES` with the GPUs it may use.
//!
//! - No GPU asked: the CPU.
//! - A GPU asked, the binary built with `--features cuda` and a device present: CUDA
//!   device 0 of those visible. The platform hands each instance one GPU of its own
//!   (the manifest accepts one per instance), so device 0 is that GPU.
//! - Otherwise the CPU with a warning, or, with `THAW_GPU_REQUIRED=1`, an init error that
//!   says why.
//!
//! A CUDA build (`make gpu`) binds the NVIDIA driver and the CUDA libraries when it first
//! uses them, not when it starts (cudarc's `dynamic-loading`), so the same binary starts
//! on a machine without them. cudarc panics when a library it needs cannot be loaded;
//! [`cuda_device`] therefore looks for every one of them first and turns a missing one
//! into the reason above, naming the library.

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
#[allow(unsafe_code)]
fn cuda_device() -> Result<Device, String> {
    // SAFETY: each probe dlopens a shared library by name and closes it again; loading
    // one runs only its initialisers, as the first CUDA call would.
    let libraries = unsafe {
        [
            (
                "the NVIDIA driver library libcuda.so.1 is not installed (no NVIDIA driver on this machine)",
                cudarc::driver::sys::is_culib_present(),
            ),
            (
                "cuBLAS (libcublas) is not on the library path",
                cudarc::cublas::sys::is_culib_present(),
            ),
            (
                "cuBLASLt (libcublasLt) is not on the library path",
                cudarc::cublaslt::sys::is_culib_present(),
            ),
            (
                "cuRAND (libcurand) is not on the library path",
                cudarc::curand::sys::is_culib_present(),
            ),
            (
                "NVRTC (libnvrtc) is not on the library path",
                cudarc::nvrtc::sys::is_culib_present(),
            ),
        ]
    };
    if let Some((missing, _)) = libraries.iter().find(|(_, present)| !present) {
        return Err(format!("no usable CUDA device: {missing}"));
    }
    // The kernels are PTX from this build's CUDA release, which a driver for an older
    // release cannot compile: refuse here rather than fail on every request.
    let mut driver: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer we own; libcuda is
    // loadable (checked above) and the call needs no cuInit.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let built = cudarc::driver::sys::CUDA_VERSION;
    let release = |v: u32| format!("{}.{}", v / 1000, v % 1000 / 10);
    match u32::try_from(driver) {
        Ok(v) if status == cudarc::driver::sys::CUresult::CUDA_SUCCESS && v >= built => {}
        Ok(v) if status == cudarc::driver::sys::CUresult::CUDA_SUCCESS => {
            return Err(format!(
                "no usable CUDA device: the NVIDIA driver supports CUDA {}, but this build needs {} or newer",
                release(v),
                release(built)
            ))
        }
        _ => return Err(format!("no usable CUDA device: the NVIDIA driver did not report its version ({status:?})")),
    }
    Device::new_cuda(0).map_err(|e| format!("no usable CUDA device: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device, String> {
    Err("this binary was built without the `cuda` feature".into())
}
