//! Forward + backward of the per-sample response NLL of SmolLM2-135M with
//! LoRA r16 on q_proj, v_proj (SEAL's setting), on CPU (or CUDA with
//! `SEAL_BENCH_DEVICE=cuda`). Prints a table with tokens/s and achieved
//! GFLOP/s beside the machine's f32 matmul peak.
//!
//! `cargo bench -p seal-benches --bench lora_step`
//!
//! Uses the imported SmolLM2 weights when available (the speed does not depend
//! on the values) and a random model of the same shape otherwise.
//! FLOP convention: forward as in `llama_forward_flops`; the backward pass of
//! a frozen base computes activation gradients only (≈ 1× forward for the
//! blocks and the head) plus LoRA weight gradients (≈ 1× LoRA forward).

use seal_benches::{
    bench_device, llama_forward_flops, matmul_peak_gflops, smollm2_or_random, sync, time_median,
};
use seal_model::{CausalLm, LmBatch, LoraConfig};
use tch::Kind;

fn main() -> anyhow::Result<()> {
    let device = bench_device();
    let shapes: Vec<(usize, usize)> = match std::env::var("SEAL_BENCH_SHAPES") {
        Ok(s) => s
            .split(',')
            .filter_map(|p| p.split_once('x'))
            .filter_map(|(b, l)| Some((b.parse().ok()?, l.parse().ok()?)))
            .collect(),
        Err(_) => vec![(4, 128), (8, 256)],
    };
    let (mut model, source) = smollm2_or_random(device)?;
    model.add_lora(&LoraConfig::default(), 0)?;
    let lora_params: usize = model.lora_parameters().iter().map(|(_, t)| t.numel()).sum();
    let peak = matmul_peak_gflops(2048, device);
    println!(
        "model: {source}; device: {device:?}; threads: {}",
        tch::get_num_threads()
    );
    println!("f32 matmul peak (2048^3): {peak:.1} GFLOP/s");
    println!("| B | L | s/step | tokens/s | GFLOP/s | % of peak |");
    println!("|---|---|--------|----------|---------|-----------|");
    for (b, l) in shapes {
        // Deterministic pseudo-random tokens; the response is the second half.
        let rows: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                (0..l)
                    .map(|t| ((i * 7919 + t * 104_729) % 49_000 + 100) as u32)
                    .collect()
            })
            .collect();
        let starts = vec![l / 2; b];
        let batch = LmBatch::from_rows(&rows, &starts, 0)?.to_device(device);
        let labelled = b * (l - l / 2);
        let params: Vec<tch::Tensor> = model
            .trainable_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let iters = if l >= 256 { 3 } else { 5 };
        let secs = time_median(1, iters, || {
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let loss = model
                .per_sample_nll(&batch)
                .expect("forward")
                .mean(Kind::Float);
            loss.backward();
            sync(device);
        });
        let fwd = llama_forward_flops(model.config(), b, l, labelled, lora_params);
        let lora_fwd = 2.0 * lora_params as f64 * (b * l) as f64;
        let total = 2.0 * fwd + lora_fwd;
        let tok = (b * l) as f64 / secs;
        let gflops = total / secs / 1e9;
        println!(
            "| {b} | {l} | {secs:.3} | {tok:.1} | {gflops:.1} | {:.0}% |",
            100.0 * gflops / peak
        );
    }
    Ok(())
}
