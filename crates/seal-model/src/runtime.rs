//! Process-level runtime settings: device choice and allocator tuning.

use tch::Device;

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
