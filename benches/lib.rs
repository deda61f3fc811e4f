//! Shared helpers for the benchmarks: timing, FLOP counts, matmul peak.

use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Median wall time in seconds of `iters` runs after `warmup` runs.
pub fn time_median(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Achieved f32 GFLOP/s of an `n×n` by `n×n` matmul on `device` (median of 5).
pub fn matmul_peak_gflops(n: i64, device: Device) -> f64 {
    matmul_peak_gflops_of(n, device, Kind::Float)
}

/// [`matmul_peak_gflops`] for operands of `kind` (e.g. `BFloat16`, whose
/// GEMM is several times faster than f32's on CPUs with AVX512-BF16).
pub fn matmul_peak_gflops_of(n: i64, device: Device, kind: Kind) -> f64 {
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let secs = time_median(2, 5, || {
        let c = a.matmul(&b);
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        drop(c);
    });
    2.0 * (n as f64).powi(3) / secs / 1e9
}

/// Forward FLOPs of a Llama-family model on `batch` sequences of `seq`
/// tokens, with the LM head applied to `labelled` tokens in all: 2·P per
/// token for the block matmuls, causal attention (QKᵀ and PV over half the
/// context on average) and the head.
pub fn llama_forward_flops(
    cfg: &seal_model::LlamaConfig,
    batch: usize,
    seq: usize,
    labelled: usize,
    lora_params: usize,
) -> f64 {
    let h = cfg.hidden_size as f64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * cfg.intermediate_size as f64;
    let tokens = (batch * seq) as f64;
    let blocks = 2.0 * per_layer * cfg.num_hidden_layers as f64 * tokens;
    let attn = 2.0 * 2.0 * q * (seq as f64 / 2.0) * tokens * cfg.num_hidden_layers as f64;
    let head = 2.0 * h * cfg.vocab_size as f64 * labelled as f64;
    let lora = 2.0 * lora_params as f64 * tokens;
    blocks + attn + head + lora
}

/// SmolLM2-135M's shape, for a random model of the same size when the
/// imported weights are not there (speed does not depend on the values).
pub fn smollm2_config() -> seal_model::LlamaConfig {
    seal_model::LlamaConfig {
        model_type: "llama".into(),
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: seal_model::config::RopeScaling::None,
        max_position_embeddings: 8192,
        vocab_size: 49152,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// SmolLM2-135M-Instruct from the shared import when it exists, otherwise a
/// random model of the same shape; with a line naming which.
pub fn smollm2_or_random(device: Device) -> anyhow::Result<(seal_model::Llama, &'static str)> {
    let mut opts = seal_model::LoadOptions::default();
    opts.device = device;
    opts.kind = Kind::Float;
    Ok(match seal_testkit::smollm2_dir() {
        Ok(Some(dir)) => (
            seal_model::Llama::load(&dir, &opts)?,
            "SmolLM2-135M-Instruct (imported GGUF)",
        ),
        _ => (
            seal_model::Llama::random(&smollm2_config(), device, Kind::Float, 0)?,
            "random weights, SmolLM2-135M shape",
        ),
    })
}

/// Waits for queued kernels on a CUDA device (no-op on the CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The device named by `SEAL_BENCH_DEVICE` (cpu, cuda, cuda:N, auto), the
/// CPU when unset or unknown; also tunes the allocator as the CLI does.
pub fn bench_device() -> Device {
    seal_model::runtime::tune_allocator();
    std::env::var("SEAL_BENCH_DEVICE")
        .ok()
        .and_then(|d| seal_model::runtime::parse_device(&d))
        .unwrap_or(Device::Cpu)
}
