//! A load test of `seal serve`: N concurrent clients send greedy chat
//! requests to one server, with continuous batching (`--max-batch N`) and
//! with one-at-a-time serving (`--max-batch 1`), SmolLM2-135M on the CPU
//! (or a random model of its shape without the import). Prints completion
//! tokens/s and p50/p99 request latency per setting, and the f32 matmul
//! peak of the same run.
//!
//! `cargo bench -p seal-benches --bench serve_load`
//!
//! Env: `SEAL_BENCH_CLIENTS` (default `1,4,16`), `SEAL_BENCH_REQUESTS`
//! (requests per client, default 2), `SEAL_BENCH_TOKENS` (max_tokens,
//! default 32).

use anyhow::{anyhow, Context, Result};
use seal_benches::matmul_peak_gflops;
use seal_model::{LoadOptions, Pretrained};
use seal_serve::{ServeConfig, Server};
use std::time::{Duration, Instant};
use tch::Device;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// One setting: (completion tokens/s, p50 s, p99 s).
fn run(
    clients: usize,
    max_batch: usize,
    requests: usize,
    tokens: usize,
) -> Result<(f64, f64, f64)> {
    let dir = seal_testkit::smollm2_dir()?
        .ok_or_else(|| anyhow!("the SmolLM2 import is missing (cargo xtask setup)"))?;
    let mut config = ServeConfig::default();
    config.port = 0;
    config.model_name = "smollm2".into();
    config.max_batch = max_batch;
    config.queue = clients * requests + 1;
    config.shutdown_grace = Duration::from_secs(1);
    let server = Server::start(config, move || {
        let mut options = LoadOptions::default();
        options.device = Device::Cpu;
        let pre = Pretrained::load(&dir, &options)?;
        Ok((pre.model, pre.tokenizer))
    })?;
    let url = format!("http://{}/v1/chat/completions", server.addr());
    let start = Instant::now();
    let results: Vec<Result<Vec<(f64, u64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let url = url.clone();
                s.spawn(move || -> Result<Vec<(f64, u64)>> {
                    let mut out = Vec::new();
                    for r in 0..requests {
                        let t0 = Instant::now();
                        let body: serde_json::Value = ureq::post(&url)
                            .send_json(serde_json::json!({
                                "model": "smollm2",
                                "messages": [{"role": "user", "content":
                                    format!("Client {c}, question {r}: write a short story about a lighthouse keeper.")}],
                                "temperature": 0, "max_tokens": tokens}))
                            .context("request")?
                            .into_json()?;
                        let n = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                        out.push((t0.elapsed().as_secs_f64(), n));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("client panicked"))?)
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    server.shutdown()?;
    let mut latencies = Vec::new();
    let mut total = 0u64;
    for r in results {
        for (l, n) in r? {
            latencies.push(l);
            total += n;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((total as f64 / wall, at(0.5), at(0.99)))
}

fn main() -> Result<()> {
    let clients = env_list("SEAL_BENCH_CLIENTS", "1,4,16");
    let requests = env_list("SEAL_BENCH_REQUESTS", "2")[0];
    let tokens = env_list("SEAL_BENCH_TOKENS", "32")[0];
    println!(
        "threads: {}; f32 matmul peak (2048^3): {:.1} GFLOP/s; {requests} requests per client, max_tokens {tokens}",
        tch::get_num_threads(),
        matmul_peak_gflops(2048, Device::Cpu)
    );
    println!("| clients | serving | tokens/s | p50 latency s | p99 latency s | batched / one-at-a-time |");
    println!("|---|---|---|---|---|---|");
    for &c in &clients {
        let (one, p50a, p99a) = run(c, 1, requests, tokens)?;
        println!("| {c} | one at a time | {one:.1} | {p50a:.2} | {p99a:.2} | |");
        let (many, p50b, p99b) = run(c, c.max(1), requests, tokens)?;
        println!(
            "| {c} | batched (max_batch {c}) | {many:.1} | {p50b:.2} | {p99b:.2} | {:.2}× |",
            many / one
        );
    }
    Ok(())
}
