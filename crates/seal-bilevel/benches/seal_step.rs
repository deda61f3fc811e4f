//! Speed of one SEAL step against one plain LoRA SFT step on the same batch
//! (SmolLM2-135M-Instruct, CPU). SEAL runs two forward/backward passes (safe
//! batch and fine-tuning batch) plus a ranker update, so the target ratio is
//! at most 2.05.
//!
//! `cargo bench -p seal-bilevel --bench seal_step` (env: `SEAL_BENCH_B`,
//! `SEAL_BENCH_L`, `SEAL_BENCH_STEPS`; `SEAL_BENCH_DEVICE=cuda` (or `cuda:N`)
//! runs on a GPU, `SEAL_BENCH_KIND=bf16` loads bf16 base weights, on either;
//! `SEAL_BENCH_ATTENTION=math` times the twice-differentiable math attention
//! and exact loss instead of SDPA and the fused loss). Skips when the model
//! is unavailable.
//!
//! Besides the step times it prints the model FLOP rate of each step and
//! its MFU: that rate over the matmul peak of the same device and precision
//! measured in the same process (8192³ on a GPU, 2048³ on the CPU; with
//! `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1` (`seal --tf32`) the f32 peak and
//! the steps both use TF32 on CUDA). FLOP convention, as in
//! docs/performance.md: forward = 2 · block weights · tokens + causal
//! attention + LM head on the labelled half; the backward of the frozen base
//! (activation gradients only) ≈ one more forward; LoRA terms are ignored.

use seal_bilevel::solver::{StepBatch, StepContext};
use seal_bilevel::*;
use seal_data::tokenize::TokenizedSample;
use seal_model::optim::{AdamW, AdamWConfig, Optimizer};
use seal_model::{LoadOptions, LoraConfig, Pretrained};
use std::time::Instant;
use tch::{Device, Kind};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Model FLOPs of one forward pass over `b × l` tokens with the loss on the
/// second half (the convention of docs/performance.md).
fn forward_flops(c: &seal_model::LlamaConfig, b: usize, l: usize) -> f64 {
    let (h, hd) = (c.hidden_size as f64, c.head_dim as f64);
    let q_o = 2.0 * h * c.num_attention_heads as f64 * hd;
    let k_v = 2.0 * h * c.num_key_value_heads as f64 * hd;
    let mlp = 3.0 * h * c.intermediate_size as f64;
    let tokens = (b * l) as f64;
    let blocks = 2.0 * (q_o + k_v + mlp) * c.num_hidden_layers as f64 * tokens;
    // QKᵀ and AV over the causal half: 2 matmuls · 2 FLOP · l²/2 per head.
    let attention = 2.0
        * (l * l) as f64
        * c.num_attention_heads as f64
        * hd
        * c.num_hidden_layers as f64
        * b as f64;
    let head = 2.0 * h * c.vocab_size as f64 * tokens / 2.0;
    blocks + attention + head
}

/// Waits for `device`'s queued kernels (a no-op on the CPU).
fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Matmul peak of `device` in `kind` (FLOP/s), measured here.
fn matmul_peak(device: Device, kind: Kind) -> f64 {
    let n: i64 = if device.is_cuda() { 8192 } else { 2048 };
    let a = tch::Tensor::randn([n, n], (kind, device));
    let b = tch::Tensor::randn([n, n], (kind, device));
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    synchronize(device);
    let reps = if device.is_cuda() { 20 } else { 3 };
    let t0 = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b);
    }
    synchronize(device);
    2.0 * (n * n * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64()
}

fn main() -> Result<()> {
    seal_model::runtime::tune_allocator();
    let Some(dir) = seal_testkit::smollm2_dir()? else {
        eprintln!("skipping: SmolLM2 fixture not available");
        return Ok(());
    };
    let (b, l, steps) = (
        env("SEAL_BENCH_B", 4),
        env("SEAL_BENCH_L", 128),
        env("SEAL_BENCH_STEPS", 5),
    );
    let device = std::env::var("SEAL_BENCH_DEVICE")
        .ok()
        .and_then(|d| seal_model::runtime::parse_device(&d))
        .unwrap_or(Device::Cpu);
    let kind = match std::env::var("SEAL_BENCH_KIND").as_deref() {
        Ok("bf16") => Kind::BFloat16,
        _ => Kind::Float,
    };
    // Every step ends with a host read of its loss; on a GPU, also wait for
    // the optimiser's kernels so each timing covers the whole step.
    let sync = || synchronize(device);
    let mut options = LoadOptions::default();
    options.device = device;
    options.kind = kind;
    let Pretrained { mut model, .. } =
        Pretrained::load_with(&dir, &options, seal_model::Llama::load)?;
    let fwd = forward_flops(model.config(), b, l);
    model.add_lora(&LoraConfig::default(), 0)?;
    if std::env::var("SEAL_BENCH_ATTENTION").as_deref() == Ok("math") {
        model.set_attention_impl(seal_model::AttentionImpl::Math);
    }
    // B rows of exactly L tokens (deterministic ids), loss on the second half.
    let rows: Vec<TokenizedSample> = (0..b)
        .map(|i| TokenizedSample {
            id: format!("b{i}"),
            index: i,
            label: None,
            input_ids: (0..l)
                .map(|t| ((t * 31 + i * 7) % 40_000 + 100) as u32)
                .collect(),
            response_start: l / 2,
        })
        .collect();
    let ids: Vec<String> = rows.iter().map(|s| s.id.clone()).collect();
    let fp = dataset_fingerprint(&rows);
    let problem = LmProblem::new(model, rows.clone(), rows, 0)?;
    let all: Vec<usize> = (0..b).collect();
    let batch = StepBatch {
        finetune: vec![all.clone()],
        safe: vec![all.clone()],
    };
    let opt_cfg = AdamWConfig {
        lr: 1e-5,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };

    // Plain LoRA SFT step.
    let mut opt = AdamW::new(problem.parameters(), opt_cfg);
    let sft = |opt: &mut AdamW| -> Result<()> {
        opt.zero_grad();
        let loss = problem.safe_losses(&all)?;
        loss.mean(Kind::Float).f_backward()?;
        opt.clip_grad_norm(1.0);
        opt.step()?;
        sync();
        Ok(())
    };
    let mut ranker = Ranker::new(ids, fp, Activation::Softmax, Kind::Float, device)?;
    let mut ropt = RankerOptimizer::new(&ranker, RankerConfig::default());
    let mut solver = SealPenalty;
    let mut seal = |opt: &mut AdamW,
                    ranker: &mut Ranker,
                    ropt: &mut RankerOptimizer,
                    step: usize|
     -> Result<()> {
        let mut ctx = StepContext {
            optimizer: opt,
            ranker,
            ranker_optimizer: ropt,
            lambda: 0.5,
            max_grad_norm: Some(1.0),
            step,
        };
        Solver::<LmProblem<seal_model::Llama>>::step(&mut solver, &problem, &mut ctx, &batch)?;
        sync();
        Ok(())
    };
    // Warm up both, then alternate them so that drifts in machine speed hit
    // both alike; report medians.
    sft(&mut opt)?;
    seal(&mut opt, &mut ranker, &mut ropt, 0)?;
    let two_pass = |opt: &mut AdamW| -> Result<()> {
        opt.zero_grad();
        problem.safe_losses(&all)?.mean(Kind::Float).f_backward()?;
        problem
            .finetune_losses(&all)?
            .mean(Kind::Float)
            .f_backward()?;
        opt.clip_grad_norm(1.0);
        opt.step()?;
        sync();
        Ok(())
    };
    let mut two_times = Vec::new();
    let (mut sft_times, mut seal_times) = (Vec::new(), Vec::new());
    for s in 0..steps {
        let t0 = Instant::now();
        sft(&mut opt)?;
        sft_times.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        seal(&mut opt, &mut ranker, &mut ropt, s + 1)?;
        seal_times.push(t0.elapsed().as_secs_f64());
        if std::env::var_os("SEAL_BENCH_TWO_PASS").is_some() {
            let t0 = Instant::now();
            two_pass(&mut opt)?;
            two_times.push(t0.elapsed().as_secs_f64());
        }
    }
    if !two_times.is_empty() {
        two_times.sort_by(|a, b| a.total_cmp(b));
        println!("two plain passes: {:.3} s", two_times[two_times.len() / 2]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let sft_s = median(&mut sft_times);
    let seal_s = median(&mut seal_times);
    let tokens = (b * l) as f64;
    println!(
        "SmolLM2-135M LoRA, {device:?} {kind:?}, B={b} L={l}, {} threads: SFT step {sft_s:.3} s ({:.0} tok/s), SEAL step {seal_s:.3} s ({:.0} tok/s), ratio {:.3}",
        tch::get_num_threads(),
        tokens / sft_s,
        2.0 * tokens / seal_s,
        seal_s / sft_s
    );
    // SFT: forward + backward of one batch; SEAL at λ = 0.5: both batches.
    let peak = matmul_peak(device, kind);
    let tf32 = device.is_cuda() && kind == Kind::Float && seal_model::runtime::tf32_requested();
    let (sft_rate, seal_rate) = (2.0 * fwd / sft_s, 4.0 * fwd / seal_s);
    println!(
        "model GFLOP/s: SFT {:.1}, SEAL {:.1}; matmul peak ({:?}{}) {:.1} GFLOP/s: MFU SFT {:.1}%, SEAL {:.1}%",
        sft_rate / 1e9,
        seal_rate / 1e9,
        kind,
        if tf32 { ", TF32" } else { "" },
        peak / 1e9,
        100.0 * sft_rate / peak,
        100.0 * seal_rate / peak
    );
    Ok(())
}
