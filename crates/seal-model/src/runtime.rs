//! Process-level runtime settings: device choice, weight precision and
//! allocator tuning.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// The dtype of a model's frozen base weights.
///
/// `Bf16` is mixed precision, not a bf16 model: the base weights and the
/// activations between layers are bf16, while LoRA factors, their gradients
/// and optimiser state, RMS norms, softmaxes, rotary angles and losses stay
/// f32 (see `layers::Linear::forward` and `layers::compute_kind`). On CPUs
/// with AVX512-BF16 or AMX, and on GPUs, bf16 matmuls run several times
/// faster than f32 ones (docs/performance.md, "bf16 on the CPU").
/// Full fine-tuning trains the weights themselves, so it needs `F32`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// f32 weights: the reference numerics.
    #[default]
    F32,
    /// bf16 base weights with f32 LoRA, norms and losses.
    Bf16,
}

impl WeightDtype {
    /// The libtorch kind of the base weights.
    pub fn kind(self) -> Kind {
        match self {
            WeightDtype::F32 => Kind::Float,
            WeightDtype::Bf16 => Kind::BFloat16,
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        })
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            other => Err(format!(
                "unknown weight dtype `{other}`: expected f32 or bf16"
            )),
        }
    }
}

/// CUDA device 0 when available, else the CPU.
pub fn best_device() -> Device {
    Device::cuda_if_available()
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn parse_device(spec: &str) -> Option<Device> {
    match spec {
        "auto" => Some(best_device()),
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda),
    }
}

/// Tells glibc's malloc to keep freed memory instead of returning it to the
/// system. Training allocates and frees the same large activation buffers
/// every step; with glibc's defaults they are unmapped and page-faulted back
/// each time, which costs 25–35% of a CPU training step. Call once at start-up
/// (binaries and benches do). A no-op on other platforms.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only changes allocator parameters; the values are valid.
    unsafe {
        // M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (glibc malloc.h).
        libc::mallopt(-3, 1 << 30);
        libc::mallopt(-1, 1 << 30);
    }
}
