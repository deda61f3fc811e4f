//! A selector epoch on real data against the PyTorch reference.
//!
//! One SEAL ranking run (the memory-efficient penalty, `seal rank`'s small
//! preset: LoRA r16 α32 on q/v, AdamW 1e-4, SGD ranker at 1.0, batch 8) over
//! the benchmark's small pool (`seal data benchmark --size small`, 200
//! samples) and its safe set, SmolLM2-135M-Instruct in f32, at each λ asked
//! for, with λ held constant. Each run is its own process (peak RSS is a
//! process's high-water mark): this project's trainer, then
//! `scripts/selector_epoch_reference.py` on exactly the same tokens and
//! batches, the official loop in PyTorch + transformers + peft (padded
//! batches, both backward passes). Prints a table of wall time, useful
//! (non-padding) tokens per second and peak RSS, beside the machine's f32
//! matmul peak, and writes it to `target/bench/selector_epoch/`.
//!
//! ```text
//! cargo xtask bench-selector        # builds the pool if needed, then this
//! cargo bench -p seal-benches --bench selector_epoch -- \
//!     [--pool DIR] [--lambdas 1,0.5] [--steps N] [--threads N] [--ablate] [--bf16] [--no-reference]
//! ```
//!
//! `--steps N` times the first N steps of the epoch only (same steps on both
//! sides); `--ablate` adds a run of this project with length groups off (one
//! forward per batch padded to its longest row, as the reference); `--bf16`
//! adds a run of this project in mixed precision (bf16 base weights, f32
//! LoRA, norms and losses: `[model] dtype = "bf16"`), and with `--ablate`
//! also its run with length groups off.

use anyhow::{bail, Context, Result};
use seal_benches::{matmul_peak_gflops, matmul_peak_gflops_of};
use seal_bilevel::lm::default_group_overhead;
use seal_bilevel::plan::StepPlan;
use seal_bilevel::{
    dataset_fingerprint, Activation, LambdaSchedule, LmProblem, Ranker, RankerOptimizerKind,
    SealPenalty, TrainConfig, Trainer,
};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_data::TextTokenizer;
use seal_model::optim::AdamWConfig;
use seal_model::{Llama, LoadOptions, LoraConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind};

const MAX_LEN: usize = 384;
const BATCH: usize = 8;
const SEED: u64 = 1;

struct Args {
    pool: PathBuf,
    lambdas: Vec<f64>,
    steps: Option<usize>,
    threads: i32,
    ablate: bool,
    bf16: bool,
    reference: bool,
    /// Internal: run one measurement in this process.
    child: Option<(String, PathBuf)>,
}

fn parse_args() -> Result<Args> {
    let root = seal_testkit::workspace_root();
    let mut a = Args {
        pool: root.join("target/seal-bench/v3-small"),
        lambdas: vec![1.0, 0.5],
        steps: None,
        threads: tch::get_num_threads(),
        ablate: false,
        bf16: false,
        reference: true,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--pool" => a.pool = PathBuf::from(value()?),
            "--lambdas" => {
                a.lambdas = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<f64>()
                            .with_context(|| format!("--lambdas: `{s}`"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--steps" => a.steps = Some(value()?.parse().context("--steps")?),
            "--threads" => a.threads = value()?.parse().context("--threads")?,
            "--ablate" => a.ablate = true,
            "--bf16" => a.bf16 = true,
            "--no-reference" => a.reference = false,
            "--child" => {
                let variant = value()?;
                a.child = Some((variant, PathBuf::from(value()?)));
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!("selector_epoch: unknown argument `{other}`"),
        }
    }
    if a.lambdas.iter().any(|l| !(0.0..=1.0).contains(l)) {
        bail!("--lambdas: each λ must lie in [0, 1]");
    }
    Ok(a)
}

fn tokenized(tokenizer: &TextTokenizer, path: &Path) -> Result<Vec<TokenizedSample>> {
    let samples = seal_data::read_jsonl_samples(path)?;
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = MAX_LEN;
    Ok(tokenize_samples(tokenizer, &samples, &cfg)?.samples)
}

fn train_config(lambda: f64, steps: Option<usize>) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.epochs = 1;
    c.max_steps = steps;
    c.micro_batch = BATCH;
    c.grad_accum = 1;
    c.seed = SEED;
    c.bucket_batches = None;
    c.model_optimizer = AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c.ranker.optimizer = RankerOptimizerKind::Sgd;
    c.ranker.lr = 1.0;
    c.ranker.max_grad_norm = Some(1.0);
    c.ranker.activation = Activation::Softmax;
    c.lambda = LambdaSchedule {
        start: lambda,
        decay_per_epoch: 0.0,
    };
    c.max_grad_norm = Some(1.0);
    c.progress = false;
    c
}

fn lora() -> LoraConfig {
    let mut l = LoraConfig::default();
    l.r = 16;
    l.alpha = 32.0;
    l.dropout = 0.0;
    l
}

/// The resident set's high-water mark of this process, MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// One measured run of this project's trainer (`variant`: `seal-rs`,
/// `seal-rs-whole-batches`, `seal-rs-bf16` or `seal-rs-bf16-whole-batches`),
/// described by the plan file.
fn child(variant: &str, plan_path: &Path) -> Result<()> {
    let plan: Value = serde_json::from_slice(&std::fs::read(plan_path)?)?;
    let threads = plan["threads"].as_i64().context("plan: threads")? as i32;
    tch::set_num_threads(threads);
    let lambda = plan["lambda"].as_f64().context("plan: lambda")?;
    let steps = plan["max_steps"].as_u64().map(|s| s as usize);
    let dir = PathBuf::from(plan["model_dir"].as_str().context("plan: model_dir")?);
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let finetune = tokenized(
        &tokenizer,
        Path::new(plan["finetune_file"].as_str().unwrap_or("")),
    )?;
    let safe = tokenized(
        &tokenizer,
        Path::new(plan["safe_file"].as_str().unwrap_or("")),
    )?;
    let pad = tokenizer
        .pad_token_id()
        .context("the tokenizer has no pad token")?;
    let mut opts = LoadOptions::default();
    opts.device = Device::Cpu;
    opts.kind = if variant.starts_with("seal-rs-bf16") {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let mut model = Llama::load(&dir, &opts)?;
    model.add_lora(&lora(), SEED as i64)?;
    let ids: Vec<String> = finetune.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&finetune);
    let groups = match variant {
        "seal-rs" | "seal-rs-bf16" => default_group_overhead(Device::Cpu),
        "seal-rs-whole-batches" | "seal-rs-bf16-whole-batches" => None,
        other => bail!("unknown variant {other}"),
    };
    let problem = LmProblem::new(model, finetune, safe, pad)?.with_group_overhead(groups);
    let ranker = Ranker::new(
        ids,
        fingerprint,
        Activation::Softmax,
        Kind::Float,
        Device::Cpu,
    )?;
    let mut trainer = Trainer::new(
        problem,
        Box::new(SealPenalty),
        ranker,
        train_config(lambda, steps),
    )?;
    let report = trainer.run()?;
    let out = json!({
        "side": variant,
        "threads": tch::get_num_threads(),
        "lambda": lambda,
        "steps": report.steps,
        "wall_s": report.seconds,
        "useful_tokens": report.tokens,
        "tokens_per_s": report.tokens_per_second(),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{out}");
    Ok(())
}

/// Runs `cmd`, returning the JSON object on the last line of its output.
fn measured(mut cmd: Command, what: &str) -> Result<Value> {
    eprintln!("running {what} ...");
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result"))?;
    Ok(serde_json::from_str(last)?)
}

fn main() -> Result<()> {
    seal_model::runtime::tune_allocator();
    let args = parse_args()?;
    if let Some((variant, plan)) = &args.child {
        return child(variant, plan);
    }
    let root = seal_testkit::workspace_root();
    let (finetune_file, safe_file) = (
        args.pool.join("finetune.jsonl"),
        args.pool.join("safe.jsonl"),
    );
    if !finetune_file.is_file() || !safe_file.is_file() {
        bail!(
            "no benchmark pool in {} (build it with `cargo xtask bench-selector`, or \
             `seal data benchmark --shared ../shared/data --out {} --size small`)",
            args.pool.display(),
            args.pool.display()
        );
    }
    let dir = seal_testkit::smollm2_dir()?.context(
        "SmolLM2 not found: run `cargo xtask setup` (the benchmark needs the real model)",
    )?;
    let gguf = seal_testkit::smollm2_gguf().context("the SmolLM2 GGUF")?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let finetune = tokenized(&tokenizer, &finetune_file)?;
    let safe = tokenized(&tokenizer, &safe_file)?;
    let pad = tokenizer
        .pad_token_id()
        .context("the tokenizer has no pad token")?;
    let out_dir = root.join("target/bench/selector_epoch");
    std::fs::create_dir_all(&out_dir)?;
    tch::set_num_threads(args.threads);
    let peak = matmul_peak_gflops(2048, Device::Cpu);
    let bf16_peak = args
        .bf16
        .then(|| matmul_peak_gflops_of(2048, Device::Cpu, Kind::BFloat16));
    let rows = |data: &[TokenizedSample]| -> Vec<Value> {
        data.iter()
            .map(|s| json!({"input_ids": s.input_ids, "response_start": s.response_start}))
            .collect()
    };
    // Padding of the epoch's batches, whole and in length groups.
    let mut plan = StepPlan::new(
        finetune.iter().map(TokenizedSample::len).collect(),
        safe.iter().map(TokenizedSample::len).collect(),
        &train_config(1.0, args.steps),
    )?;
    let total = plan.total_steps();
    let steps: Vec<Value> = (0..total)
        .map(|s| {
            let b = plan.batch_for_step(s);
            json!({"finetune": b.finetune, "safe": b.safe})
        })
        .collect();
    let me = std::env::current_exe()?;
    let mut results = Vec::new();
    for &lambda in &args.lambdas {
        let plan_path = out_dir.join(format!("plan-lambda-{lambda}.json"));
        let plan_json = json!({
            "gguf": gguf, "model_dir": dir, "finetune_file": finetune_file, "safe_file": safe_file,
            "threads": args.threads, "seed": SEED, "lambda": lambda, "max_steps": args.steps,
            "lr": 1e-4, "ranker_lr": 1.0, "ranker_clip": 1.0, "lora_r": 16, "lora_alpha": 32,
            "pad_id": pad, "finetune": rows(&finetune), "safe": rows(&safe), "steps": steps,
        });
        std::fs::write(&plan_path, serde_json::to_vec(&plan_json)?)?;
        let mut variants = vec!["seal-rs"];
        if args.ablate {
            variants.push("seal-rs-whole-batches");
        }
        if args.bf16 {
            variants.push("seal-rs-bf16");
            if args.ablate {
                variants.push("seal-rs-bf16-whole-batches");
            }
        }
        for v in variants {
            let mut cmd = Command::new(&me);
            cmd.arg("--child").arg(v).arg(&plan_path);
            results.push(measured(cmd, &format!("{v} at λ = {lambda}"))?);
        }
        if args.reference {
            let python =
                seal_testkit::venv_python().context("no .venv python: run `cargo xtask setup`")?;
            let out = out_dir.join(format!("reference-lambda-{lambda}.json"));
            let mut cmd = Command::new(python);
            // The same allocator tuning as this project's processes
            // (seal_model::runtime::tune_allocator), through glibc's variables.
            cmd.env("MALLOC_MMAP_THRESHOLD_", "1073741824")
                .env("MALLOC_TRIM_THRESHOLD_", "1073741824");
            cmd.arg(root.join("scripts/selector_epoch_reference.py"))
                .arg("--plan")
                .arg(&plan_path)
                .arg("--out")
                .arg(&out);
            results.push(measured(
                cmd,
                &format!("the PyTorch reference at λ = {lambda}"),
            )?);
        }
    }
    let padding = |data: &[TokenizedSample],
                   pick: &dyn Fn(&Value) -> Vec<Vec<usize>>|
     -> (usize, usize, usize) {
        let (mut real, mut whole, mut grouped) = (0, 0, 0);
        for s in &steps {
            for b in pick(s) {
                let lengths: Vec<usize> = b.iter().map(|&i| data[i].len()).collect();
                real += lengths.iter().sum::<usize>();
                whole += lengths.len() * lengths.iter().max().copied().unwrap_or(0);
                for g in seal_data::batch::length_groups(
                    &lengths,
                    default_group_overhead(Device::Cpu).unwrap_or(usize::MAX),
                ) {
                    grouped += g.len() * g.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                }
            }
        }
        (real, whole, grouped)
    };
    let batches = |key: &'static str| {
        move |s: &Value| -> Vec<Vec<usize>> {
            serde_json::from_value(s[key].clone()).unwrap_or_default()
        }
    };
    let (fr, fw, fg) = padding(&finetune, &batches("finetune"));
    let (sr, sw, sg) = padding(&safe, &batches("safe"));
    let mut md = String::new();
    md.push_str(&format!(
        "Selector epoch: {} of {} steps, pool {} ({} samples, safe {}), batch {BATCH}, max_len {MAX_LEN}, \
         {} threads, f32 matmul peak (2048³) {peak:.1} GFLOP/s{}.\n\n",
        total,
        plan.steps_per_epoch(),
        args.pool.display(),
        finetune.len(),
        safe.len(),
        args.threads,
        bf16_peak.map_or(String::new(), |p| format!(", bf16 {p:.1} GFLOP/s"))
    ));
    md.push_str(&format!(
        "Padding of the steps' batches: {:.1}% padded whole, {:.1}% in length groups.\n\n",
        100.0 * (1.0 - (fr + sr) as f64 / (fw + sw) as f64),
        100.0 * (1.0 - (fr + sr) as f64 / (fg + sg) as f64),
    ));
    md.push_str("| λ | side | steps | wall (s) | useful tokens/s | peak RSS (MiB) | speed-up |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for r in &results {
        let lambda = r["lambda"].as_f64().unwrap_or(f64::NAN);
        let reference = results
            .iter()
            .find(|x| x["side"] == "pytorch" && x["lambda"].as_f64() == Some(lambda))
            .and_then(|x| x["wall_s"].as_f64());
        let wall = r["wall_s"].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {lambda} | {} | {} | {wall:.1} | {:.0} | {:.0} | {} |\n",
            r["side"].as_str().unwrap_or("?"),
            r["steps"],
            r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            reference.map_or("–".to_string(), |t| format!("{:.2}×", t / wall)),
        ));
    }
    println!("{md}");
    std::fs::write(out_dir.join("results.md"), &md)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_vec_pretty(
            &json!({"matmul_peak_gflops": peak, "bf16_matmul_peak_gflops": bf16_peak, "runs": results}),
        )?,
    )?;
    Ok(())
}
