//! The `seal` binary's memory allocator.
//!
//! With the default `jemalloc` feature on Linux/glibc, jemalloc is the
//! allocator of the whole process: Rust's allocations go to it as the global
//! allocator, and its unprefixed `malloc`, `free`, `posix_memalign`, … are
//! defined in the executable, so the dynamic linker binds libtorch's calls
//! (every CPU tensor) to them as well.
//!
//! Why not glibc's malloc: told to keep freed memory
//! (`seal_model::runtime::tune_allocator`, which saves the page faults of
//! re-mapping activation buffers every step), it fragments over a long run
//! of varying batch shapes. Measured on the 2-core CPU (2026-12-05, bf16,
//! `seal dose` aligning the model itself, then fine-tuning on the pool, 65
//! steps): after the 115-step alignment `_int_malloc` took 19% of the CPU
//! samples, the process held 13.5 GB and the fine-tuning took 239.9 s,
//! against 146.8 s in a fresh process. With jemalloc the same run aligned in
//! 341 s instead of 415 s and fine-tuned in 135.4 s, holding 3.9 GB
//! (docs/performance.md, "The allocator").
//!
//! jemalloc reads `MALLOC_CONF` at start-up (its documented variable), e.g.
//! `MALLOC_CONF=dirty_decay_ms:30000`. Build with `--no-default-features`
//! for glibc's malloc.

#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Which allocator serves this process's `malloc`, for the debug log.
#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
pub const ALLOCATOR: &str = "jemalloc";
/// Which allocator serves this process's `malloc`, for the debug log.
#[cfg(not(all(feature = "jemalloc", target_os = "linux", target_env = "gnu")))]
pub const ALLOCATOR: &str = "system malloc";
