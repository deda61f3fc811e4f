//! Tokenisation speed: all GSM8K train samples (7473) with the SmolLM2
//! tokenizer and chat template, reported as samples/s.
//!
//! Inputs: `$SEAL_SHARED_DATA` (default `<workspace>/../shared/data`) and the
//! SmolLM2 model directory `$SEAL_SMOLLM2_DIR`, else
//! `$SEAL_CACHE_DIR/smollm2-135m-instruct`, else
//! `<workspace>/target/seal-cache/smollm2-135m-instruct` (created by
//! seal-testkit's fixtures). Without it the byte-level test tokenizer is used
//! and the output says so.

use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seal_data::readers::{read_samples, Format, ReadOptions};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig};
use seal_data::TextTokenizer;

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn tokenizer() -> (TextTokenizer, &'static str) {
    let candidates = [
        std::env::var_os("SEAL_SMOLLM2_DIR").map(PathBuf::from),
        std::env::var_os("SEAL_CACHE_DIR").map(|d| PathBuf::from(d).join("smollm2-135m-instruct")),
        Some(workspace().join("target/seal-cache/smollm2-135m-instruct")),
    ];
    for dir in candidates.into_iter().flatten() {
        if dir.join("tokenizer.json").is_file() {
            match TextTokenizer::from_dir(&dir) {
                Ok(t) => return (t, "SmolLM2-135M-Instruct"),
                Err(e) => eprintln!("cannot load {}: {e}", dir.display()),
            }
        }
    }
    eprintln!("SmolLM2 tokenizer not found: using the byte-level test tokenizer");
    match seal_data::testing::chatml_tokenizer(None) {
        Ok(t) => (t, "byte-level test tokenizer"),
        Err(e) => panic!("test tokenizer: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let shared = std::env::var_os("SEAL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"));
    let path = shared.join("gsm8k/train.jsonl");
    let samples = match read_samples(&path, Format::Gsm8k, &ReadOptions::default()) {
        Ok(r) => r.samples,
        Err(e) => {
            eprintln!("skipping the tokenisation benchmark: {e}");
            return;
        }
    };
    let (tok, name) = tokenizer();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 1024;

    // One timed pass, printed in the units the issue asks for.
    let t0 = Instant::now();
    let data = match tokenize_samples(&tok, &samples, &cfg) {
        Ok(d) => d,
        Err(e) => panic!("tokenisation failed: {e}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    let rate = samples.len() as f64 / secs;
    println!(
        "GSM8K train, {name}, {} rayon threads: {} samples in {secs:.2} s = {rate:.0} samples/s; \
         112k samples would take {:.1} s. {}",
        rayon::current_num_threads(),
        samples.len(),
        112_000.0 / rate,
        data.summary
    );

    let mut g = c.benchmark_group("tokenize");
    g.sample_size(10);
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("gsm8k_train_chat_template", |b| {
        b.iter(|| {
            tokenize_samples(&tok, &samples, &cfg)
                .map(|d| d.samples.len())
                .unwrap_or(0)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
