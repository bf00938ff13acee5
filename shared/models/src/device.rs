//! Device choice. CPU today; the `gpu` key of the manifest will choose CUDA when present.

use candle_core::Device;

/// The device an instance computes on.
pub fn default_device() -> Device {
    Device::Cpu
}
