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

/// The environment variable libtorch reads (once, at the first f32 cuBLAS
/// matmul of the process) to let f32 matmuls run on TF32 tensor cores, as
/// `torch.backends.cuda.matmul.allow_tf32 = True` does in Python.
pub const TF32_OVERRIDE_VAR: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";

/// Lets f32 matmuls on CUDA use TF32 tensor cores (10-bit mantissa inputs,
/// f32 accumulation): on an H200 the f32 matmul peak goes from about 51 to
/// about 400 TFLOP/s (docs/performance.md). CPU results are unchanged.
///
/// libtorch exposes no setter through `tch`, so this sets
/// [`TF32_OVERRIDE_VAR`], which libtorch reads once: call it at start-up,
/// before any CUDA matmul and before other threads exist (the `seal`
/// binary does so for `--tf32` and for a pipeline config's
/// `[model] tf32 = true`). Returns whether the setting is in effect from
/// now on, i.e. false when the variable was already set to something else
/// by the user, whose choice is kept.
pub fn allow_tf32() -> bool {
    if std::env::var_os(TF32_OVERRIDE_VAR).is_none() {
        std::env::set_var(TF32_OVERRIDE_VAR, "1");
    }
    tf32_requested()
}

/// Whether [`allow_tf32`] (or the user's environment) asked for TF32.
pub fn tf32_requested() -> bool {
    std::env::var(TF32_OVERRIDE_VAR)
        .map(|v| {
            matches!(
                v.as_str(),
                "1" | "ON" | "on" | "true" | "TRUE" | "YES" | "yes"
            )
        })
        .unwrap_or(false)
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
