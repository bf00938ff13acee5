//! `gpu = "TYPE[:N]"`: which GPU a function computes on, and what that GPU needs from
//! the build.
//!
//! Each type has a compute capability, and the capability decides which CUDA build of
//! the function binaries can run on it. thaw's CUDA kernels (candle's) are compiled to
//! PTX, which the driver compiles for the GPU it runs on, forward but never backward: PTX
//! for 8.0 runs on 8.0, 8.6, 8.9 and 9.0, and PTX for 7.5 runs everywhere but lacks the
//! bf16 kernels, which need 8.0. So two builds cover every type the manifest offers
//! ([`CudaArch`]): `sm75` for the T4, `sm80` for the rest. `make gpu` builds both, and
//! the Docker render copies the one the function's type needs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A GPU type the manifest offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GpuKind {
    /// NVIDIA T4 (Turing, 7.5).
    T4,
    /// NVIDIA L4 (Ada, 8.9).
    L4,
    /// NVIDIA A10G (Ampere, 8.6).
    A10G,
    /// NVIDIA A100 (Ampere, 8.0).
    A100,
    /// NVIDIA H100 (Hopper, 9.0).
    H100,
}

impl GpuKind {
    /// Every type, in the order messages list them.
    pub const ALL: [GpuKind; 5] = [Self::T4, Self::L4, Self::A10G, Self::A100, Self::H100];

    /// The name the manifest writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::T4 => "T4",
            Self::L4 => "L4",
            Self::A10G => "A10G",
            Self::A100 => "A100",
            Self::H100 => "H100",
        }
    }

    /// The compute capability, as (major, minor).
    pub fn compute_capability(self) -> (u32, u32) {
        match self {
            Self::T4 => (7, 5),
            Self::L4 => (8, 9),
            Self::A10G => (8, 6),
            Self::A100 => (8, 0),
            Self::H100 => (9, 0),
        }
    }

    /// The CUDA build whose kernels run on this type: the newest that is not newer than
    /// its compute capability.
    pub fn cuda_arch(self) -> CudaArch {
        let cap = self.compute_capability();
        CudaArch::ALL
            .into_iter()
            .filter(|a| a.compute_capability() <= cap)
            .max_by_key(|a| a.compute_capability())
            .unwrap_or(CudaArch::Sm75)
    }

    /// The `nvidia.com/gpu.product` label of the type's nodes (NVIDIA's GPU feature
    /// discovery), for Kubernetes node selection.
    pub fn node_product(self) -> &'static str {
        match self {
            Self::T4 => "Tesla-T4",
            Self::L4 => "NVIDIA-L4",
            Self::A10G => "NVIDIA-A10G",
            Self::A100 => "NVIDIA-A100-SXM4-80GB",
            Self::H100 => "NVIDIA-H100-80GB-HBM3",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for GpuKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One CUDA build of the function binaries: the compute capability its PTX targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CudaArch {
    /// PTX for 7.5 (T4): f16, no bf16 kernels.
    Sm75,
    /// PTX for 8.0, which the driver compiles for 8.0, 8.6, 8.9 and 9.0.
    Sm80,
}

impl CudaArch {
    /// Every build `make gpu` makes.
    pub const ALL: [CudaArch; 2] = [Self::Sm75, Self::Sm80];

    /// The compute capability the PTX targets, as (major, minor).
    pub fn compute_capability(self) -> (u32, u32) {
        match self {
            Self::Sm75 => (7, 5),
            Self::Sm80 => (8, 0),
        }
    }

    /// `CUDA_COMPUTE_CAP` for the build: `75`, `80`.
    pub fn compute_cap(self) -> u32 {
        let (major, minor) = self.compute_capability();
        major * 10 + minor
    }

    /// Where `make gpu` puts the build's binaries, relative to the repository root.
    pub fn release_dir(self) -> String {
        format!("target/cuda-sm{}/release", self.compute_cap())
    }
}

/// `gpu = "none" | "T4" | "L4" | "A10G" | "A100" | "H100"`, optionally `":N"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gpu {
    /// The GPU type; `None` for CPU functions.
    pub kind: Option<GpuKind>,
    /// How many. Validation accepts 1 only (see [`crate::limits::MAX_GPUS`]).
    pub count: u32,
}

impl<'de> Deserialize<'de> for Gpu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(Self::default());
        }
        let (kind, count) = match s.split_once(':') {
            Some((k, n)) => (k, n.parse::<u32>().ok().filter(|&n| n >= 1)),
            None => (s.as_str(), Some(1)),
        };
        match (GpuKind::parse(kind), count) {
            (Some(kind), Some(count)) => Ok(Self {
                kind: Some(kind),
                count,
            }),
            _ => {
                let kinds: Vec<&str> = GpuKind::ALL.iter().map(|k| k.as_str()).collect();
                Err(serde::de::Error::custom(format!(
                    "invalid gpu {s:?}: none, or one of {} with an optional \":N\"",
                    kinds.join(", ")
                )))
            }
        }
    }
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            None => f.write_str("none"),
            Some(k) => write!(f, "{k}:{}", self.count),
        }
    }
}

impl Serialize for Gpu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_runs_the_newest_build_its_capability_allows() {
        let arch: Vec<(GpuKind, CudaArch)> =
            GpuKind::ALL.iter().map(|k| (*k, k.cuda_arch())).collect();
        assert_eq!(
            arch,
            [
                (GpuKind::T4, CudaArch::Sm75),
                (GpuKind::L4, CudaArch::Sm80),
                (GpuKind::A10G, CudaArch::Sm80),
                (GpuKind::A100, CudaArch::Sm80),
                (GpuKind::H100, CudaArch::Sm80),
            ]
        );
        assert_eq!(CudaArch::Sm80.release_dir(), "target/cuda-sm80/release");
    }
}
