//! What every training loop of the crate shares, whatever it optimises: which
//! micro-batches a step takes, how many steps a run has, the progress bar,
//! and the checkpoint directory layout.
//!
//! The bilevel [`crate::Trainer`] and the fine-tuning loop
//! ([`crate::SftTrainer`]) are both built on these, so a step `s` of either
//! sees the same fine-tuning and safe batches for the same seed, and both
//! checkpoint and resume the same way.

use crate::error::{BilevelError, Result};
use crate::solver::{StepBatch, StepStats};
use crate::train::{EpochLength, TrainConfig, TrainReport, LATEST};
use seal_data::batch::BatchSampler;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// The batches of every step of a run: fine-tuning epoch
/// `e = s / steps_per_epoch` uses the sampler's order for `(seed, stream 0,
/// e)`, and the safe micro-batches continue a stream with orders `(seed,
/// stream 1, epoch)` (or restart with every epoch under
/// [`EpochLength::Shorter`]). A pure function of the seed and the step.
pub struct StepPlan {
    finetune: BatchSampler,
    safe: BatchSampler,
    finetune_batches: usize,
    safe_batches: usize,
    grad_accum: usize,
    epochs: usize,
    max_steps: Option<usize>,
    epoch_length: EpochLength,
    cache: HashMap<(u8, usize), Vec<Vec<usize>>>,
}

impl StepPlan {
    /// The plan for fine-tuning and safe sets of the given token lengths.
    pub fn new(
        finetune_lengths: Vec<usize>,
        safe_lengths: Vec<usize>,
        config: &TrainConfig,
    ) -> Result<Self> {
        if config.micro_batch == 0 || config.grad_accum == 0 || config.epochs == 0 {
            return Err(BilevelError::invalid(
                "training config",
                "micro_batch, grad_accum and epochs must be positive",
            ));
        }
        if config.checkpoint_every.is_some() && config.checkpoint_dir.is_none() {
            return Err(BilevelError::invalid(
                "training config",
                "checkpoint_every needs checkpoint_dir",
            ));
        }
        let sampler = |lengths: Vec<usize>, stream: u64| -> Result<BatchSampler> {
            Ok(BatchSampler::new(
                lengths,
                config.micro_batch,
                config.seed,
                config.bucket_batches,
            )?
            .with_stream(stream))
        };
        let finetune = sampler(finetune_lengths, 0)?;
        let safe = sampler(safe_lengths, 1)?;
        let finetune_batches = finetune.epoch(0).len();
        let safe_batches = safe.epoch(0).len();
        if finetune_batches == 0 || safe_batches == 0 {
            return Err(BilevelError::invalid(
                "data",
                "empty fine-tuning or safe set",
            ));
        }
        Ok(Self {
            finetune,
            safe,
            finetune_batches,
            safe_batches,
            grad_accum: config.grad_accum,
            epochs: config.epochs,
            max_steps: config.max_steps,
            epoch_length: config.epoch_length,
            cache: HashMap::new(),
        })
    }

    /// Fine-tuning micro-batches per epoch.
    fn batches_per_epoch(&self) -> usize {
        match self.epoch_length {
            EpochLength::Task => self.finetune_batches,
            EpochLength::Shorter => self.finetune_batches.min(self.safe_batches),
        }
    }

    /// Optimiser steps per fine-tuning epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.batches_per_epoch().div_ceil(self.grad_accum)
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> usize {
        let all = self.epochs * self.steps_per_epoch();
        self.max_steps.map_or(all, |m| m.min(all))
    }

    /// The fine-tuning epoch of `step`.
    pub fn epoch_of(&self, step: usize) -> usize {
        step / self.steps_per_epoch()
    }

    fn epoch_batches(&mut self, stream: u8, epoch: usize) -> &Vec<Vec<usize>> {
        let (finetune, safe) = (&self.finetune, &self.safe);
        if self.cache.len() > 8 {
            self.cache.clear();
        }
        self.cache.entry((stream, epoch)).or_insert_with(|| {
            if stream == 0 {
                finetune.epoch(epoch as u64)
            } else {
                safe.epoch(epoch as u64)
            }
        })
    }

    /// The micro-batches of step `step`.
    pub fn batch_for_step(&mut self, step: usize) -> StepBatch {
        let spe = self.steps_per_epoch();
        let (epoch, k) = (step / spe, step % spe);
        let accum = self.grad_accum;
        let nb = self.batches_per_epoch();
        let start = k * accum;
        let end = ((k + 1) * accum).min(nb);
        let finetune: Vec<Vec<usize>> = self.epoch_batches(0, epoch)[start..end].to_vec();
        let mut safe = Vec::with_capacity(finetune.len());
        for i in 0..finetune.len() {
            if self.epoch_length == EpochLength::Shorter {
                // Zipped loaders: the safe set restarts with every epoch.
                safe.push(self.epoch_batches(1, epoch)[start + i].clone());
                continue;
            }
            let s = epoch * nb + start + i;
            let (se, sp) = (s / self.safe_batches, s % self.safe_batches);
            safe.push(self.epoch_batches(1, se)[sp].clone());
        }
        StepBatch { finetune, safe }
    }
}

/// Reseeds libtorch from `(seed, step)` so that LoRA dropout and any other
/// randomness of a step do not depend on what ran before (exact resume).
pub fn seed_step(seed: u64, step: usize) {
    tch::manual_seed(
        (seed as i64)
            .wrapping_mul(1_000_003)
            .wrapping_add(step as i64),
    );
}

/// Wall time, tokens and steps of one `run` call: throughput, ETA, when to
/// log and checkpoint, and the closing [`TrainReport`].
pub struct RunClock {
    t0: Instant,
    start_step: usize,
    tokens: usize,
}

impl RunClock {
    /// Starts timing a run that begins at `step`.
    pub fn start(step: usize) -> Self {
        Self {
            t0: Instant::now(),
            start_step: step,
            tokens: 0,
        }
    }

    /// Counts the tokens of a completed step.
    pub fn add_tokens(&mut self, tokens: usize) {
        self.tokens += tokens;
    }

    /// Tokens per second so far.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.t0.elapsed().as_secs_f64().max(1e-9)
    }

    /// Seconds left at the rate so far, with `step` of `total` done.
    pub fn eta_seconds(&self, step: usize, total: usize) -> f64 {
        let done = step.saturating_sub(self.start_step).max(1);
        self.t0.elapsed().as_secs_f64() / done as f64 * total.saturating_sub(step) as f64
    }

    /// Whether completed step `step` gets a log line.
    pub fn log_due(config: &TrainConfig, step: usize, total: usize) -> bool {
        step % config.log_every.max(1) == 0 || step == total
    }

    /// Whether a checkpoint is due after completed step `step`.
    pub fn checkpoint_due(config: &TrainConfig, step: usize, total: usize) -> bool {
        config
            .checkpoint_every
            .is_some_and(|every| every > 0 && step % every == 0 && step < total)
    }

    /// The summary of the run, ended at `step`.
    pub fn report(&self, step: usize, resumed_from: usize, last: StepStats) -> TrainReport {
        TrainReport {
            steps: step - self.start_step,
            resumed_from,
            total_steps: step,
            seconds: self.t0.elapsed().as_secs_f64(),
            tokens: self.tokens,
            last,
        }
    }
}

/// The ids of the fine-tuning samples of `batch`, for a NaN/Inf error.
pub fn batch_ids(batch: &StepBatch, id_of: impl Fn(usize) -> Option<String>) -> Vec<String> {
    let mut ids: Vec<String> = batch
        .finetune
        .iter()
        .flatten()
        .filter_map(|&i| id_of(i))
        .collect();
    ids.dedup();
    ids
}

/// A progress bar with rate and ETA (or nothing when disabled).
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar over `total` steps starting at `start`.
    pub fn new(enabled: bool, total: usize, start: usize) -> Self {
        Self(enabled.then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_position(start as u64);
            b
        }))
    }

    /// Moves to `step` with a message.
    pub fn tick(&self, step: usize, message: String) {
        if let Some(b) = &self.0 {
            b.set_position(step as u64);
            b.set_message(message);
        }
    }

    /// Leaves the bar where it is (the run stopped with an error).
    pub fn abandon(&self) {
        if let Some(b) = &self.0 {
            b.abandon();
        }
    }

    /// Completes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}

/// The newest complete checkpoint under `root` (named by its `latest`
/// file), if any.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    let p = root.join(LATEST);
    match std::fs::read_to_string(&p) {
        Ok(name) => {
            let name = name.trim();
            if !name.starts_with("step-") || name.contains('/') {
                return Err(BilevelError::format(
                    &p,
                    format!("names `{name}`, not a step-<n> directory"),
                ));
            }
            Ok(Some(root.join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BilevelError::io(&p, e)),
    }
}

/// Makes `root/step-<step>/` the latest checkpoint: writes the `latest`
/// pointer (atomically, after the directory's files are complete) and
/// removes older `step-*` directories.
pub fn publish_checkpoint(root: &Path, step: usize) -> Result<()> {
    let name = format!("step-{step}");
    seal_model::weights::write_atomic(&root.join(LATEST), name.as_bytes())?;
    // Older checkpoints are no longer needed.
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("step-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// The tensors of a safetensors file whose names start with `prefix`, with
/// the prefix removed, sorted by name.
pub fn load_prefixed(path: &Path, prefix: &str) -> Result<Vec<(String, Tensor)>> {
    let f = seal_model::weights::WeightFiles::open_file(path)?;
    let mut names: Vec<String> = f.names().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix).map(|s| (n.clone(), s.to_string())))
        .map(|(full, short)| Ok((short, f.load_raw(&full)?)))
        .collect()
}
