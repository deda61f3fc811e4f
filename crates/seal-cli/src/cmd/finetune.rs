//! `seal finetune`: LoRA SFT on a selection (kept ids or soft weights), or
//! the mixed objective `λ·mean(safe loss) + (1−λ)·mean(task loss)`; writes
//! a PEFT adapter and `train_log.jsonl`.

use super::common;
use anyhow::{bail, Context, Result};
use seal_bilevel::{finetune, keep_by_id, Schedule, SftData, TrainConfig};
use seal_model::{LoraConfig, Pretrained};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Arguments of `seal finetune`.
#[derive(clap::Args, serde::Serialize)]
pub struct Args {
    /// HF model directory (weights, tokenizer with chat template).
    #[arg(long)]
    pub model: PathBuf,
    /// Fine-tuning samples (JSONL written by `seal data benchmark`).
    #[arg(long)]
    pub data: PathBuf,
    /// Kept ids, one per line (`seal select` output): train on those only.
    #[arg(long)]
    pub kept: Option<PathBuf>,
    /// Soft weights: a scores.jsonl with `id` and `weight` per sample.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Safe samples of the mixed objective (needed when --lambda > 0).
    #[arg(long)]
    pub safe: Option<PathBuf>,
    /// Weight λ of the safe loss in λ·mean(safe) + (1−λ)·mean(task).
    #[arg(long, default_value_t = 0.0, value_parser = super::args::unit_f64)]
    pub lambda: f64,
    /// Output directory: adapter_config.json, adapter_model.safetensors,
    /// train_log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the (kept) fine-tuning set.
    #[arg(long, default_value_t = 1, value_parser = super::args::positive_usize)]
    pub epochs: usize,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub batch: usize,
    /// Micro-batches accumulated per optimiser step.
    #[arg(long, default_value_t = 1, value_parser = super::args::positive_usize)]
    pub grad_accum: usize,
    /// Maximum tokens per sample (longer prompts are cut from the left).
    #[arg(long, default_value_t = 512, value_parser = super::args::positive_usize)]
    pub max_len: usize,
    /// Stop after this many optimiser steps.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub max_steps: Option<usize>,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-4, value_parser = super::args::positive_f64)]
    pub lr: f64,
    /// Learning-rate schedule: constant or cosine (3% warmup).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Gradient-norm clipping (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = super::args::non_negative_f64)]
    pub max_grad_norm: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, value_parser = super::args::positive_usize)]
    pub lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0, value_parser = super::args::positive_f64)]
    pub lora_alpha: f64,
    /// Seed of the data order, LoRA initialisation and per-step randomness.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, value_parser = super::args::threads)]
    pub threads: Option<i32>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Base-weight precision: f32, or bf16 (mixed precision: bf16 base
    /// weights, f32 LoRA, norms and losses; faster on CPUs with AVX512-BF16).
    #[arg(long, default_value = "f32")]
    pub dtype: seal_model::WeightDtype,
    /// Weight each sample by its number of response tokens (a mean over
    /// tokens, as transformers' Trainer) instead of counting samples alike.
    #[arg(long)]
    pub token_weighted: bool,
    /// Write a checkpoint every N steps into OUT/checkpoints.
    #[arg(long, default_value_t = 25, value_parser = super::args::positive_usize)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from the newest checkpoint in
    /// OUT/checkpoints (the options must be those of that run).
    #[arg(long)]
    pub resume: bool,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(serde::Deserialize)]
struct WeightLine {
    id: String,
    weight: f64,
}

/// Reads `id` → `weight` from a scores.jsonl (other fields ignored).
fn read_weights(path: &Path) -> Result<HashMap<String, f64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let w: WeightLine = serde_json::from_str(line).with_context(|| {
            format!("{}:{}: expected `id` and `weight`", path.display(), no + 1)
        })?;
        if !w.weight.is_finite() || w.weight < 0.0 {
            bail!(
                "{}:{}: weight {} of `{}` must be a finite number >= 0",
                path.display(),
                no + 1,
                w.weight,
                w.id
            );
        }
        if out.insert(w.id.clone(), w.weight).is_some() {
            bail!("{}:{}: duplicate id `{}`", path.display(), no + 1, w.id);
        }
    }
    Ok(out)
}

/// Runs `seal finetune`.
pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.lambda) {
        bail!("--lambda {}: expected a value in [0, 1]", a.lambda);
    }
    if a.lambda > 0.0 && a.safe.is_none() {
        bail!(
            "--lambda {} > 0 needs --safe (the mixed objective's safe set)",
            a.lambda
        );
    }
    let schedule: Schedule = a.schedule.parse()?;
    let run_dir = common::RunDir::start(&a.out, a.force, a.resume, &a)?;
    let device = common::runtime(a.threads, &a.device)?;

    let mut samples = seal_data::read_jsonl_samples(&a.data)?;
    if let Some(path) = &a.kept {
        let kept = seal_select::output::read_kept_ids(path)?;
        samples = keep_by_id(samples, |s| s.id.as_str(), &kept)
            .with_context(|| format!("--kept {}", path.display()))?;
    }
    if samples.is_empty() {
        bail!("empty selection: no fine-tuning samples");
    }
    let safe = a
        .safe
        .as_ref()
        .filter(|_| a.lambda > 0.0)
        .map(seal_data::read_jsonl_samples)
        .transpose()?;

    let Pretrained {
        mut model,
        tokenizer,
        ..
    } = common::load_model(&a.model, device, a.dtype)?;
    let ft = common::tokenize_set(&tokenizer, "fine-tuning", &samples, a.max_len)?;
    let sf = safe
        .as_ref()
        .map(|s| common::tokenize_set(&tokenizer, "safe", s, a.max_len))
        .transpose()?;
    if ft.is_empty() {
        bail!("empty selection: every kept sample is longer than --max-len");
    }
    let weights = match &a.weights {
        Some(path) => {
            let map = read_weights(path)?;
            let w = ft
                .iter()
                .map(|s| {
                    map.get(&s.id).copied().with_context(|| {
                        format!(
                            "--weights {}: no weight for sample `{}`",
                            path.display(),
                            s.id
                        )
                    })
                })
                .collect::<Result<Vec<f64>>>()?;
            Some(w)
        }
        None => None,
    };
    let n = ft.len();

    let mut lora = LoraConfig::default();
    lora.r = a.lora_r;
    lora.alpha = a.lora_alpha;
    model.add_lora(&lora, a.seed as i64)?;
    let pad = common::pad_id(&tokenizer);
    let mut config = TrainConfig::default();
    config.epochs = a.epochs;
    config.max_steps = a.max_steps;
    config.micro_batch = a.batch;
    config.grad_accum = a.grad_accum;
    config.seed = a.seed;
    config.bucket_batches = Some(16);
    config.model_optimizer = common::model_optimizer(a.lr);
    config.model_schedule = schedule;
    config.max_grad_norm = (a.max_grad_norm > 0.0).then_some(a.max_grad_norm);
    config.progress = !a.no_progress;
    config.log_every = 10;
    config.checkpoint_every = Some(a.checkpoint_every);
    config.checkpoint_dir = Some(run_dir.checkpoints().to_path_buf());
    config.resume = a.resume;
    let weights = if a.token_weighted {
        Some(seal_pipeline::stages::with_token_weights(weights, &ft))
    } else {
        weights
    };
    tracing::info!(samples = n, lambda = a.lambda, "fine-tuning");
    let data = SftData {
        finetune: ft,
        safe: sf,
        weights,
    };
    let out = finetune(model, data, pad, a.lambda, config)?;
    let base = a.model.to_string_lossy();
    // Staged, then moved into --out: all of the result or none of it.
    let staging = seal_data::fsutil::StagingDir::new(&a.out)?;
    out.model.save_lora(staging.path(), Some(&base))?;
    seal_model::weights::write_jsonl_atomic(&staging.path().join("train_log.jsonl"), &out.log)?;
    staging.commit()?;
    run_dir.finish();
    let r = &out.report;
    outln!(
        "{} steps on {n} samples in {:.1} s ({:.3} s/step); last loss {:.4}",
        r.steps,
        r.seconds,
        r.seconds_per_step(),
        r.last.model_loss
    );
    outln!("adapter written to {}", a.out.display());
    Ok(())
}
