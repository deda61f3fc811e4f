//! Batched greedy generation with the KV cache, as evaluation runs it
//! (left-padded prompts of mixed length, SmolLM2-135M, f32). Prints prefill
//! and decode times and decode tokens/s per shape.
//!
//! `cargo bench -p seal-benches --bench generate`
//!
//! Env: `SEAL_BENCH_DEVICE` (cpu, cuda, cuda:N), `SEAL_BENCH_SHAPES`
//! (`BxPxN,...`: batch, longest prompt, new tokens; default
//! `1x128x64,8x256x64,32x256x32`). Uses the imported SmolLM2 weights when
//! available and a random model of the same shape otherwise. No token ends
//! a sequence, so every row decodes exactly N tokens.

use seal_benches::{bench_device, matmul_peak_gflops, smollm2_or_random, sync, time_median};
use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::CausalLm;
use tch::Tensor;

fn main() -> anyhow::Result<()> {
    let device = bench_device();
    let shapes: Vec<(usize, usize, usize)> = std::env::var("SEAL_BENCH_SHAPES")
        .unwrap_or_else(|_| "1x128x64,8x256x64,32x256x32".into())
        .split(',')
        .filter_map(|s| {
            let mut it = s.split('x').map(|v| v.parse::<usize>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        })
        .collect();
    let (model, source) = smollm2_or_random(device)?;
    println!(
        "model: {source}; device: {device:?}; threads: {}",
        tch::get_num_threads()
    );
    println!(
        "f32 matmul peak (2048^3): {:.1} GFLOP/s",
        matmul_peak_gflops(2048, device)
    );
    println!("| B | prompt | new | prefill s | decode s | decode s/step | decode tokens/s |");
    println!("|---|--------|-----|-----------|----------|---------------|-----------------|");
    for (b, p, n) in shapes {
        // Rows from p/2 to p tokens (left padding), deterministic ids.
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                let len = p - (i * p / 2) / b.max(1);
                (0..len)
                    .map(|t| ((i * 7919 + t * 104_729) % 49_000 + 100) as u32)
                    .collect()
            })
            .collect();
        let gen = GenerationOptions {
            max_new_tokens: n,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            seed: Some(0),
            prompt_limit: PromptLimit::DEFAULT,
        };
        let prefill = time_median(1, 3, || {
            let mut ids = Vec::new();
            let mut mask = Vec::new();
            for row in &prompts {
                let pad = p - row.len();
                ids.extend(std::iter::repeat_n(0i64, pad));
                ids.extend(row.iter().map(|&t| t as i64));
                mask.extend(std::iter::repeat_n(0i64, pad));
                mask.extend(std::iter::repeat_n(1i64, row.len()));
            }
            let shape = [b as i64, p as i64];
            let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
            let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
            let mut cache = model.new_cache();
            let _g = tch::no_grad_guard();
            let _ = model
                .last_logits(&ids, Some(&mask), Some(&mut cache))
                .expect("prefill");
            sync(device);
        });
        let total = time_median(0, 3, || {
            let out = generate(&model, &prompts, &gen).expect("generate");
            assert!(out.iter().all(|o| o.len() == n));
            sync(device);
        });
        let decode = (total - prefill).max(0.0);
        let steps = n.saturating_sub(1).max(1) as f64;
        println!(
            "| {b} | {p} | {n} | {prefill:.3} | {decode:.3} | {:.4} | {:.1} |",
            decode / steps,
            (b * n) as f64 / decode.max(1e-9)
        );
    }
    Ok(())
}
