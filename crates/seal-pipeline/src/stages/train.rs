//! Fine-tuning settings shared by alignment and the fine-tuning stage, and
//! the fine-tuning stage itself.

use super::*;

pub(super) fn lora(shape: &LoraShape) -> LoraConfig {
    let mut lora = LoraConfig::default();
    lora.r = shape.r;
    lora.alpha = shape.alpha;
    lora.target_modules = shape.targets.clone();
    lora
}

/// The model optimiser of every training stage: AdamW, betas (0.9, 0.95),
/// eps 1e-8, no weight decay.
pub fn model_optimizer(lr: f64) -> AdamWConfig {
    AdamWConfig {
        lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

/// Where a training stage keeps its checkpoints (`step-<n>/` and
/// `latest`, see [`seal_bilevel::Trainer`]) and whether it continues from
/// the newest one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointing {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// A checkpoint every this many optimiser steps.
    pub every: usize,
    /// Continue from the newest checkpoint in `dir`, when there is one.
    pub resume: bool,
}

pub(super) fn sft_train_config(
    c: &SftConfig,
    seed: u64,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<TrainConfig> {
    let mut t = TrainConfig::default();
    t.checkpoint_every = checkpoints.map(|c| c.every);
    t.checkpoint_dir = checkpoints.map(|c| c.dir.clone());
    t.resume = checkpoints.is_some_and(|c| c.resume);
    t.epochs = c.epochs;
    t.max_steps = c.max_steps;
    t.micro_batch = c.batch;
    t.grad_accum = 1;
    t.seed = seed;
    t.bucket_batches = Some(16);
    t.model_optimizer = model_optimizer(c.lr);
    t.model_schedule = c
        .schedule
        .parse()
        .map_err(|e: seal_bilevel::BilevelError| {
            PipelineError::config("schedule", e.to_string())
        })?;
    t.max_grad_norm = Some(1.0);
    t.progress = progress;
    t.log_every = 10;
    Ok(t)
}

/// A LoRA SFT run's outcome.
pub struct SftRun {
    /// The model with its trained adapter.
    pub model: DynLm,
    /// Trainer summary.
    pub report: TrainReport,
    /// One entry per step.
    pub log: Vec<SftStep>,
}

/// LoRA fine-tuning of `model` on `data` with a [`seal_bilevel::SftTrainer`]:
/// a fresh adapter seeded by `seed`, then `config`'s SFT run with the
/// objective `λ·safe + (1−λ)·mean(w·ℓ)` and the registered optimiser
/// `config.optimizer`, checkpointed (and resumed) as `checkpoints` says.
#[allow(clippy::too_many_arguments)]
pub fn finetune_on(
    mut model: DynLm,
    mut data: SftData,
    lambda: f64,
    pad: u32,
    config: &SftConfig,
    seed: u64,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<SftRun> {
    if config.token_weighted {
        data.weights = Some(with_token_weights(data.weights.take(), &data.finetune));
    }
    model.add_lora(&lora(&config.lora), seed as i64)?;
    let optimizer = registered_optimizers().lookup("optimizer", &config.optimizer)?;
    let train = sft_train_config(config, seed, progress, checkpoints)?;
    let resume = train.resume;
    let trainer = SftTrainer::new(model, data, pad, lambda, train)?;
    // The registry's optimiser over the adapter, as the trainer's default
    // would be built (same parameters, same order).
    let opt = optimizer.build(
        trainer.model().trainable_parameters(),
        &OptimizerSettings::model(config.lr),
    )?;
    let mut trainer = trainer.with_optimizer(opt)?;
    if resume && trainer.resume()? {
        tracing::info!(step = trainer.step(), "fine-tuning resumed");
    }
    let report = trainer.run()?;
    let out = trainer.into_outcome(report);
    Ok(SftRun {
        model: out.model,
        report: out.report,
        log: out.log,
    })
}

/// Per-sample weights that turn a mean of per-sample mean NLLs into a mean
/// over response tokens: each sample's response length over the mean length
/// (so the weights average 1).
pub fn token_weights(samples: &[TokenizedSample]) -> Vec<f64> {
    let n: Vec<f64> = samples
        .iter()
        .map(|s| s.input_ids.len().saturating_sub(s.response_start) as f64)
        .collect();
    let mean = n.iter().sum::<f64>() / n.len().max(1) as f64;
    if mean > 0.0 {
        n.iter().map(|x| x / mean).collect()
    } else {
        vec![1.0; n.len()]
    }
}

/// `weights` (all 1 when `None`) times [`token_weights`] of `samples`.
pub fn with_token_weights(weights: Option<Vec<f64>>, samples: &[TokenizedSample]) -> Vec<f64> {
    let tokens = token_weights(samples);
    match weights {
        Some(w) => w.iter().zip(&tokens).map(|(a, b)| a * b).collect(),
        None => tokens,
    }
}
