//! `seal rank`: train SEAL's data ranker on a fine-tuning set against a safe
//! set and write per-sample scores.

use super::common;
use anyhow::{bail, Result};
use seal_bilevel::official::write_scores;
use seal_bilevel::ranker::{Activation, RankerConfig};
use seal_bilevel::{
    dataset_fingerprint, FullPenaltyConfig, Implicit, ImplicitConfig, LambdaSchedule, LmProblem,
    Ranker, Schedule, SealPenalty, SealPenaltyFull, Solver, TrainConfig, Trainer,
};
use seal_bilevel::{EpochLength, RankPreset, RankSettings};
use seal_model::{AttentionImpl, DynLm, LoraConfig, LoraLm, Pretrained};
use std::path::PathBuf;
use tch::{Device, Kind};

/// Arguments of `seal rank`.
#[derive(clap::Args, serde::Serialize)]
pub struct Args {
    /// HF model directory (weights, tokenizer with chat template).
    #[arg(long)]
    pub model: PathBuf,
    /// Fine-tuning samples (JSONL written by `seal data benchmark`).
    #[arg(long)]
    pub finetune: PathBuf,
    /// Safe (upper-level) samples, same format.
    #[arg(long)]
    pub safe: PathBuf,
    /// Output directory: ranker.safetensors, ranker.json, scores.jsonl, checkpoints/.
    #[arg(long)]
    pub out: PathBuf,
    /// seal (memory-efficient penalty), seal-full (penalty with an auxiliary
    /// LoRA) or implicit (hypergradient with Hessian-vector products).
    #[arg(long, default_value = "seal")]
    pub solver: String,
    /// Settings preset: small (a useful ranking in one epoch of a small
    /// pool: SGD ranker at lr 1.0, no bucketing) or official (the reference
    /// run: Adam 5e-3 with clipping 10, LoRA α 16, model lr 1e-5, 3 epochs
    /// of the shorter loader). Flags given explicitly override it.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Passes over the fine-tuning set [preset: small 1, official 3].
    #[arg(long, value_parser = super::args::positive_usize)]
    pub epochs: Option<usize>,
    /// Rows per micro-batch (each set).
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
    /// Write a checkpoint every N steps into OUT/checkpoints.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub checkpoint_every: Option<usize>,
    /// Continue from the newest checkpoint in OUT/checkpoints (the options
    /// must be those of the interrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
    /// Seed of the data order, LoRA initialisation and per-step randomness.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Length bucketing: batches are formed from windows of this many
    /// batches of similar length (less padding); 0 shuffles without bucketing
    /// (a sample's position in the epoch then does not depend on its length)
    /// [preset: 0].
    #[arg(long)]
    pub bucket: Option<usize>,
    /// Epoch length: task (one pass over the fine-tuning set) or shorter
    /// (the shorter of the task and safe sets, as the official zipped
    /// loaders) [preset: small task, official shorter].
    #[arg(long)]
    pub epoch_length: Option<String>,
    /// Model learning rate [preset: small 1e-4, official 1e-5].
    #[arg(long, value_parser = super::args::positive_f64)]
    pub lr: Option<f64>,
    /// Model learning-rate schedule: constant or cosine (3% warmup).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Ranker learning rate [preset: small 1.0, official 5e-3].
    #[arg(long, value_parser = super::args::positive_f64)]
    pub ranker_lr: Option<f64>,
    /// Ranker optimiser: adam or sgd [preset: small sgd, official adam].
    #[arg(long)]
    pub ranker_optim: Option<String>,
    /// Ranker gradient-norm clipping, 0 disables [preset: small 1, official 10].
    #[arg(long, value_parser = super::args::non_negative_f64)]
    pub ranker_clip: Option<f64>,
    /// Weight activation: softmax (official default) or sigmoid.
    #[arg(long, default_value = "softmax")]
    pub activation: String,
    /// Upper-level weight λ in the first epoch.
    #[arg(long, default_value_t = 1.0, value_parser = super::args::unit_f64)]
    pub lambda: f64,
    /// Decrease of λ per epoch [preset: 0.03].
    #[arg(long, value_parser = super::args::non_negative_f64)]
    pub lambda_decay: Option<f64>,
    /// Gradient-norm clipping (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = super::args::non_negative_f64)]
    pub max_grad_norm: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, value_parser = super::args::positive_usize)]
    pub lora_r: usize,
    /// LoRA alpha [preset: small 32, official 16].
    #[arg(long, value_parser = super::args::positive_f64)]
    pub lora_alpha: Option<f64>,
    /// Train every weight instead of a LoRA adapter (not with seal-full).
    #[arg(long)]
    pub full_finetune: bool,
    /// Inner lower-level steps per ranker step: θ's for the implicit solver
    /// (default 1), θ̂'s for seal-full (default 2; 0 keeps θ̂ at its start).
    #[arg(long)]
    pub inner_steps: Option<usize>,
    /// seal-full: task steps θ̂ takes before ranking (a task solution to
    /// start from; 0 starts it as the model's own function).
    #[arg(long, default_value_t = FullPenaltyConfig::default().warm_start_steps)]
    pub aux_warm_steps: usize,
    /// seal-full: θ̂'s learning rate as a multiple of the model's.
    #[arg(long, default_value_t = 1.0, value_parser = super::args::non_negative_f64)]
    pub aux_lr_scale: f64,
    /// seal-full: read ℓ(θ̂) before θ̂'s update (the old behaviour) instead of
    /// after it.
    #[arg(long)]
    pub aux_read_before: bool,
    /// Conjugate-gradient iterations (implicit solver).
    #[arg(long, default_value_t = 10, value_parser = super::args::positive_usize)]
    pub cg_iters: usize,
    /// Hessian damping (implicit solver).
    #[arg(long, default_value_t = 1e-3, value_parser = super::args::non_negative_f64)]
    pub damping: f64,
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
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

fn make_solver(a: &Args, lr: f64) -> Result<Box<dyn Solver<LmProblem<DynLm>>>> {
    Ok(match a.solver.as_str() {
        "seal" => Box::new(SealPenalty),
        "seal-full" => {
            let mut full = FullPenaltyConfig::default();
            // θ̂ uses the model's optimiser settings.
            full.optimizer = common::model_optimizer(lr);
            full.lr_scale = a.aux_lr_scale;
            full.inner_steps = a.inner_steps.unwrap_or(full.inner_steps);
            full.warm_start_steps = a.aux_warm_steps;
            full.warm_start_batch = a.batch;
            full.read_after_update = !a.aux_read_before;
            Box::new(SealPenaltyFull::new(full))
        }
        "implicit" => {
            let mut config = ImplicitConfig::default();
            config.inner_steps = a.inner_steps.unwrap_or(1).max(1);
            config.inverse = seal_bilevel::InverseMethod::Cg {
                iters: a.cg_iters,
                tol: 1e-6,
            };
            config.damping = a.damping;
            Box::new(Implicit { config })
        }
        other => bail!("--solver `{other}`: expected seal, seal-full or implicit"),
    })
}

/// Runs `seal rank`.
pub fn run(a: Args) -> Result<()> {
    let device = common::runtime(a.threads, &a.device)?;
    let activation: Activation = a.activation.parse()?;
    let settings = resolve(&a)?;
    let schedule: Schedule = a.schedule.parse()?;
    let solver = make_solver(&a, settings.model_lr)?;
    let run_dir = common::RunDir::start(&a.out, a.force, a.resume, &a)?;

    let Pretrained {
        mut model,
        tokenizer,
        ..
    } = common::load_model(&a.model, device, a.dtype)?;
    let finetune = seal_data::read_jsonl_samples(&a.finetune)?;
    let safe = seal_data::read_jsonl_samples(&a.safe)?;
    let ft = common::tokenize_set(&tokenizer, "fine-tuning", &finetune, a.max_len)?;
    let sf = common::tokenize_set(&tokenizer, "safe", &safe, a.max_len)?;
    let labels: Vec<_> = ft.iter().map(|s| s.label).collect();
    let ids: Vec<String> = ft.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&ft);

    if a.full_finetune {
        model.set_full_finetune(true);
    } else {
        let mut lora = LoraConfig::default();
        lora.r = a.lora_r;
        lora.alpha = settings.lora_alpha;
        model.add_lora(&lora, a.seed as i64)?;
    }
    if a.solver == "implicit" {
        model.set_attention_impl(AttentionImpl::Math);
    }
    let pad = common::pad_id(&tokenizer);
    let problem = LmProblem::new(model, ft, sf, pad)?;
    let ranker = Ranker::new(ids, fingerprint, activation, Kind::Float, Device::Cpu)?;
    let ranker = {
        let mut r = ranker;
        r.to(Kind::Float, device);
        r
    };
    let mut ranker_config = RankerConfig::default();
    ranker_config.activation = activation;
    ranker_config.optimizer = settings.ranker_optimizer;
    ranker_config.lr = settings.ranker_lr;
    ranker_config.beta1 = settings.ranker_betas.0;
    ranker_config.beta2 = settings.ranker_betas.1;
    ranker_config.max_grad_norm = settings.ranker_max_grad_norm;
    let mut config = TrainConfig::default();
    config.epochs = settings.epochs;
    config.max_steps = a.max_steps;
    config.micro_batch = a.batch;
    config.grad_accum = a.grad_accum;
    config.seed = a.seed;
    config.bucket_batches = (settings.bucket > 0).then_some(settings.bucket);
    config.model_optimizer = common::model_optimizer(settings.model_lr);
    config.model_schedule = schedule;
    config.ranker = ranker_config;
    config.ranker_schedule = Schedule::Constant;
    config.lambda = LambdaSchedule {
        start: a.lambda,
        decay_per_epoch: settings.lambda_decay,
    };
    config.max_grad_norm = (a.max_grad_norm > 0.0).then_some(a.max_grad_norm);
    config.checkpoint_every = a.checkpoint_every;
    config.checkpoint_dir = Some(run_dir.checkpoints().to_path_buf());
    config.progress = !a.no_progress;
    config.log_every = 10;
    // Resumed below, through the trainer.
    config.resume = false;
    config.epoch_length = settings.epoch_length;
    let written = serde_json::json!({
        "preset": a.preset,
        "settings": settings,
        "train": &config,
    });
    let mut trainer = Trainer::new(problem, solver, ranker, config)?;
    if a.resume {
        if trainer.resume()? {
            errln!("resumed at step {}", trainer.step());
        } else {
            errln!(
                "no checkpoint in {}; starting fresh",
                a.out.join("checkpoints").display()
            );
        }
    }
    let report = trainer.run()?;
    let ranker = trainer.ranker();
    // Staged, then moved into --out: all of the result or none of it.
    let staging = seal_data::fsutil::StagingDir::new(&a.out)?;
    ranker.save(staging.path())?;
    // What the run used, preset and overrides resolved.
    seal_data::fsutil::write_atomic(
        &staging.path().join("rank_config.json"),
        serde_json::to_string_pretty(&written)?.as_bytes(),
    )?;
    write_scores(&staging.path().join("scores.jsonl"), ranker, Some(&labels))?;
    staging.commit()?;
    run_dir.finish();
    let harmful: Vec<bool> = labels
        .iter()
        .map(|l| *l == Some(seal_data::Label::Harmful))
        .collect();
    let mut line = format!(
        "{} steps ({} total) in {:.1} s: {:.3} s/step, {:.0} tokens/s",
        report.steps,
        report.total_steps,
        report.seconds,
        report.seconds_per_step(),
        report.tokens_per_second()
    );
    if harmful.iter().any(|&h| h) {
        let keep: Vec<bool> = harmful.iter().map(|h| !h).collect();
        if let Some(auc) = seal_bilevel::metrics::auroc(&ranker.logits_vec()?, &keep) {
            line.push_str(&format!("; AUROC (benign above harmful) {auc:.4}"));
        }
    }
    outln!("{line}");
    outln!("written to {}", a.out.display());
    Ok(())
}

/// The preset's settings with the flags given explicitly applied on top.
fn resolve(a: &Args) -> Result<RankSettings> {
    let preset: RankPreset = a.preset.parse()?;
    let mut s = preset.settings();
    if let Some(v) = a.epochs {
        s.epochs = v;
    }
    if let Some(v) = a.lr {
        s.model_lr = v;
    }
    s.lora_r = a.lora_r;
    if let Some(v) = a.lora_alpha {
        s.lora_alpha = v;
    }
    if let Some(v) = &a.ranker_optim {
        s.ranker_optimizer = v.parse()?;
    }
    if let Some(v) = a.ranker_lr {
        s.ranker_lr = v;
    }
    if let Some(v) = a.ranker_clip {
        s.ranker_max_grad_norm = (v > 0.0).then_some(v);
    }
    s.lambda = a.lambda;
    if let Some(v) = a.lambda_decay {
        s.lambda_decay = v;
    }
    if let Some(v) = a.bucket {
        s.bucket = v;
    }
    if let Some(v) = &a.epoch_length {
        s.epoch_length = match v.as_str() {
            "task" => EpochLength::Task,
            "shorter" => EpochLength::Shorter,
            other => bail!("--epoch-length `{other}`: expected task or shorter"),
        };
    }
    Ok(s)
}
