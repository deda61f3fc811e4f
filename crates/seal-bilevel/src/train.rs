//! The training loop: batching, gradient accumulation, schedules, progress,
//! NaN stops and exact checkpoint/resume.
//!
//! Like the official trainer (Shen et al., ICLR 2025;
//! <https://github.com/hanshen95/SEAL>, `SFTSelectorTrainer.fit`), each step
//! pairs a fine-tuning batch with a safe batch; an epoch is one pass over the
//! fine-tuning set (the safe set cycles with its own per-epoch order), and λ
//! drops at every epoch boundary. The batches of step `s` depend only on
//! `(seed, s)`: fine-tuning epoch `e = s / steps_per_epoch` uses the
//! sampler's order for `(seed, stream 0, e)` and the safe micro-batches
//! continue a stream with orders `(seed, stream 1, epoch)`. LoRA dropout and
//! any other libtorch randomness are reseeded from `(seed, step)` at every
//! step. A checkpoint therefore only needs the parameters, optimiser moments
//! and the step number, and resuming gives bitwise the same result on the
//! CPU.
//!
//! Checkpoints are directories `step-<n>/` under the checkpoint root, each
//! file written atomically; the `latest` file, also written atomically and
//! only after the directory is complete, names the newest one.

use crate::error::{BilevelError, Result};
use crate::plan::{
    batch_ids, latest_checkpoint, load_prefixed, publish_checkpoint, seed_step, Progress, RunClock,
    StepPlan,
};
use crate::problem::LowerLevel;
use crate::ranker::{Ranker, RankerConfig, RankerOptimizer};
use crate::schedule::{LambdaSchedule, Schedule};
use crate::solver::{Solver, StepBatch, StepContext, StepStats};
use seal_model::optim::{AdamW, AdamWConfig, Optimizer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Name of the pointer file in the checkpoint root.
pub const LATEST: &str = "latest";
/// Version of the checkpoint format.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Training settings.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrainConfig {
    /// Passes over the fine-tuning set.
    pub epochs: usize,
    /// Stop after this many optimiser steps (across epochs).
    pub max_steps: Option<usize>,
    /// Rows per micro-batch (both sets).
    pub micro_batch: usize,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Seed of the data order and of per-step libtorch randomness.
    pub seed: u64,
    /// Length-bucketing window in batches (`None`: plain shuffling).
    pub bucket_batches: Option<usize>,
    /// Model optimiser (official: AdamW, betas (0.9, 0.95), lr 1e-5 for
    /// Llama-3 with LoRA).
    #[serde(with = "AdamWConfigDef")]
    pub model_optimizer: AdamWConfig,
    /// Model learning-rate schedule.
    pub model_schedule: Schedule,
    /// Ranker settings.
    pub ranker: RankerConfig,
    /// Ranker learning-rate schedule (official: constant).
    pub ranker_schedule: Schedule,
    /// The upper-level weight per epoch.
    pub lambda: LambdaSchedule,
    /// Model gradient-norm clipping (official 1.0).
    pub max_grad_norm: Option<f64>,
    /// Checkpoint every this many steps (`None`: never).
    pub checkpoint_every: Option<usize>,
    /// Where checkpoints go.
    pub checkpoint_dir: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Log a tracing line every this many steps.
    pub log_every: usize,
    /// Continue from the newest checkpoint under `checkpoint_dir`, when there
    /// is one, in the drivers that build their own [`Trainer`]
    /// ([`crate::finetune()`]); a [`Trainer`] itself resumes through
    /// [`Trainer::resume`].
    #[serde(default)]
    pub resume: bool,
    /// How long an epoch is (default: one pass over the fine-tuning set).
    #[serde(default)]
    pub epoch_length: EpochLength,
}

/// The length of a training epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpochLength {
    /// One pass over the fine-tuning set; the safe set cycles through as
    /// many of its own epochs as that takes.
    #[default]
    Task,
    /// The shorter of the two sets (the official trainer zips its task and
    /// safe loaders, so an epoch ends with whichever runs out first); both
    /// sets are reshuffled every epoch.
    Shorter,
}

/// Serde mirror of [`AdamWConfig`] (seal-model's type has no serde derive).
#[derive(Serialize, Deserialize)]
#[serde(remote = "AdamWConfig")]
struct AdamWConfigDef {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: None,
            micro_batch: 8,
            grad_accum: 1,
            seed: 42,
            bucket_batches: Some(16),
            model_optimizer: AdamWConfig {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            model_schedule: Schedule::Constant,
            ranker: RankerConfig::default(),
            ranker_schedule: Schedule::Constant,
            lambda: LambdaSchedule::default(),
            max_grad_norm: Some(1.0),
            checkpoint_every: None,
            checkpoint_dir: None,
            progress: false,
            log_every: 10,
            resume: false,
            epoch_length: EpochLength::Task,
        }
    }
}

/// Settings a resumed run may change: where and how often checkpoints
/// go, progress display. Every other setting (learning rates, schedules,
/// λ, clipping, batch shape, seed, epochs, steps) must equal the
/// interrupted run's, or the result would be neither run.
const RESUMABLE_CHANGES: [&str; 5] = [
    "checkpoint_every",
    "checkpoint_dir",
    "progress",
    "log_every",
    "resume",
];

/// The settings of `new` that differ from `old`, as `name (old → new)`,
/// leaving out `RESUMABLE_CHANGES` (and `max_steps` when both runs use
/// constant learning rates).
pub fn changed_settings(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["(settings that cannot be compared)".into()];
    };
    // With constant learning rates, `max_steps` is only where a run stops:
    // a run stopped early may be continued further.
    let constant = |c: &TrainConfig| {
        c.model_schedule == Schedule::Constant && c.ranker_schedule == Schedule::Constant
    };
    let stop_only = constant(old) && constant(new);
    let mut out = Vec::new();
    for (k, va) in &a {
        if RESUMABLE_CHANGES.contains(&k.as_str()) || (stop_only && k == "max_steps") {
            continue;
        }
        let vb = b.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if *va != vb {
            out.push(format!("{k} ({va} → {vb})"));
        }
    }
    out
}

/// `trainer.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT_VERSION`].
    pub format_version: u32,
    /// Completed optimiser steps.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// Fine-tuning epoch of the next step.
    pub epoch: usize,
    /// The solver's name.
    pub solver: String,
    /// The ranker's data fingerprint.
    pub fingerprint: String,
    /// Model optimiser steps.
    pub optimizer_step: i64,
    /// Ranker optimiser steps.
    pub ranker_optimizer_step: i64,
    /// Solver state optimiser steps.
    pub solver_step: i64,
    /// The settings (resume refuses other data-order settings).
    pub config: TrainConfig,
}

/// Summary of a finished run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps taken by this call (after any resume).
    pub steps: usize,
    /// The step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// Total completed steps.
    pub total_steps: usize,
    /// Wall time of this call's steps, seconds.
    pub seconds: f64,
    /// Tokens (both sets) processed by this call.
    pub tokens: usize,
    /// Statistics of the last step.
    pub last: StepStats,
}

impl TrainReport {
    /// Mean seconds per step.
    pub fn seconds_per_step(&self) -> f64 {
        self.seconds / self.steps.max(1) as f64
    }

    /// Tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Trains a ranker with a solver on a lower-level problem.
pub struct Trainer<P: LowerLevel> {
    problem: P,
    solver: Box<dyn Solver<P>>,
    optimizer: Box<dyn Optimizer>,
    /// The model optimiser's learning rate before schedules.
    model_lr: f64,
    ranker: Ranker,
    ranker_optimizer: RankerOptimizer,
    /// The ranker optimiser's learning rate before schedules.
    ranker_lr: f64,
    config: TrainConfig,
    plan: StepPlan,
    step: usize,
    resumed_from: usize,
    last_checkpoint: Option<PathBuf>,
}

impl<P: LowerLevel> Trainer<P> {
    /// Sets up training; the ranker must have one logit per fine-tuning sample.
    pub fn new(
        problem: P,
        mut solver: Box<dyn Solver<P>>,
        ranker: Ranker,
        config: TrainConfig,
    ) -> Result<Self> {
        if ranker.len() != problem.num_finetune() {
            return Err(BilevelError::invalid(
                "ranker",
                format!(
                    "{} logits for {} fine-tuning samples",
                    ranker.len(),
                    problem.num_finetune()
                ),
            ));
        }
        let plan = StepPlan::new(problem.finetune_lengths(), problem.safe_lengths(), &config)?;
        solver.prepare(&problem, config.seed as i64)?;
        let optimizer = Box::new(AdamW::new(problem.parameters(), config.model_optimizer));
        let ranker_optimizer = RankerOptimizer::new(&ranker, config.ranker);
        Ok(Self {
            problem,
            solver,
            optimizer,
            model_lr: config.model_optimizer.lr,
            ranker,
            ranker_optimizer,
            ranker_lr: config.ranker.lr,
            config,
            plan,
            step: 0,
            resumed_from: 0,
            last_checkpoint: None,
        })
    }

    /// Replaces the model optimiser (AdamW from the config by default) with
    /// any [`Optimizer`] built over [`LowerLevel::parameters`] of
    /// [`Trainer::problem`], the same names in the same order. The model
    /// schedule scales its learning rate at construction. Before training
    /// only.
    pub fn with_optimizer(mut self, optimizer: Box<dyn Optimizer>) -> Result<Self> {
        self.check_fresh("with_optimizer")?;
        let expected = self.problem.parameters();
        let same = optimizer
            .params()
            .iter()
            .map(|(n, _)| n)
            .eq(expected.iter().map(|(n, _)| n));
        if !same {
            return Err(BilevelError::invalid(
                "model optimizer",
                format!(
                    "`{}` is over {} parameters that are not the problem's {} (build it over problem().parameters())",
                    optimizer.name(),
                    optimizer.params().len(),
                    expected.len()
                ),
            ));
        }
        self.model_lr = optimizer.learning_rate();
        self.optimizer = optimizer;
        Ok(self)
    }

    /// Replaces the ranker optimiser (see [`RankerOptimizer::with_optimizer`]);
    /// the ranker schedule scales its learning rate at construction. Before
    /// training only.
    pub fn with_ranker_optimizer(mut self, ranker_optimizer: RankerOptimizer) -> Result<Self> {
        self.check_fresh("with_ranker_optimizer")?;
        self.ranker_lr = ranker_optimizer.optimizer().learning_rate();
        self.ranker_optimizer = ranker_optimizer;
        Ok(self)
    }

    fn check_fresh(&self, what: &str) -> Result<()> {
        if self.step > 0 {
            return Err(BilevelError::invalid(
                "trainer",
                format!(
                    "{what} after {} steps: optimisers are swapped before training",
                    self.step
                ),
            ));
        }
        Ok(())
    }

    /// The model optimiser.
    pub fn optimizer(&self) -> &dyn Optimizer {
        self.optimizer.as_ref()
    }

    /// Optimiser steps per fine-tuning epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.plan.steps_per_epoch()
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> usize {
        self.plan.total_steps()
    }

    /// Completed steps.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The ranker.
    pub fn ranker(&self) -> &Ranker {
        &self.ranker
    }

    /// The problem (model and data).
    pub fn problem(&self) -> &P {
        &self.problem
    }

    /// The last checkpoint written or loaded.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// Takes the problem and ranker back.
    pub fn into_parts(self) -> (P, Ranker) {
        (self.problem, self.ranker)
    }

    /// The micro-batches of step `step` (a pure function of seed and step).
    pub fn batch_for_step(&mut self, step: usize) -> StepBatch {
        self.plan.batch_for_step(step)
    }

    fn epoch_of(&self, step: usize) -> usize {
        self.plan.epoch_of(step)
    }

    /// Runs until [`Trainer::total_steps`].
    pub fn run(&mut self) -> Result<TrainReport> {
        let total = self.total_steps();
        let mut clock = RunClock::start(self.step);
        let mut last = StepStats::default();
        let bar = Progress::new(self.config.progress, total, self.step);
        tracing::info!(
            solver = self.solver.name(),
            total_steps = total,
            steps_per_epoch = self.steps_per_epoch(),
            start = self.step,
            "training"
        );
        while self.step < total {
            let step = self.step;
            let epoch = self.epoch_of(step);
            let lambda = self.config.lambda.at(epoch);
            self.optimizer
                .set_learning_rate(self.model_lr * self.config.model_schedule.factor(step, total));
            self.ranker_optimizer
                .set_lr(self.ranker_lr * self.config.ranker_schedule.factor(step, total));
            let batch = self.batch_for_step(step);
            let step_tokens: usize = batch
                .finetune
                .iter()
                .zip(&batch.safe)
                .map(|(f, s)| self.problem.tokens(f, s))
                .sum();
            seed_step(self.config.seed, step);
            let mut ctx = StepContext {
                optimizer: self.optimizer.as_mut(),
                ranker: &mut self.ranker,
                ranker_optimizer: &mut self.ranker_optimizer,
                lambda,
                max_grad_norm: self.config.max_grad_norm,
                step,
            };
            let stats = match self.solver.step(&self.problem, &mut ctx, &batch) {
                Ok(s) => s,
                Err(BilevelError::NonFinite { what, step, .. }) => {
                    bar.abandon();
                    return Err(self.non_finite(what, step, &batch));
                }
                Err(e) => return Err(e),
            };
            for (name, v) in [
                ("upper-level loss", stats.upper_loss),
                ("ranker loss", stats.ranker_loss),
            ] {
                if !v.is_finite() {
                    bar.abandon();
                    return Err(self.non_finite(name.into(), step, &batch));
                }
            }
            last = stats;
            clock.add_tokens(step_tokens);
            self.step += 1;
            let tps = clock.tokens_per_second();
            bar.tick(
                self.step,
                format!(
                    "f {:.4} g {:.4} λ {:.2} {:.0} tok/s",
                    stats.upper_loss, stats.lower_loss, lambda, tps
                ),
            );
            if RunClock::log_due(&self.config, self.step, total) {
                let eta = clock.eta_seconds(self.step, total);
                tracing::info!(
                    step = self.step,
                    total,
                    epoch,
                    lambda,
                    upper_loss = stats.upper_loss,
                    lower_loss = stats.lower_loss,
                    ranker_loss = stats.ranker_loss,
                    grad_norm = stats.grad_norm,
                    tokens_per_s = tps,
                    eta_s = eta,
                    "step"
                );
            }
            if RunClock::checkpoint_due(&self.config, self.step, total) {
                self.save_checkpoint()?;
            }
        }
        bar.finish();
        Ok(clock.report(self.step, self.resumed_from, last))
    }

    /// The error of a NaN/Inf stop: the step, the ids of its fine-tuning
    /// samples and the last good checkpoint (left as it is).
    fn non_finite(&self, what: String, step: usize, batch: &StepBatch) -> BilevelError {
        let ids = self.ranker.ids();
        let samples = batch_ids(batch, |i| ids.get(i).cloned());
        BilevelError::NonFinite {
            what,
            step,
            samples,
            checkpoint: self.last_checkpoint.clone(),
        }
    }

    fn checkpoint_root(&self) -> Result<&Path> {
        self.config
            .checkpoint_dir
            .as_deref()
            .ok_or_else(|| BilevelError::invalid("training config", "no checkpoint_dir"))
    }

    /// Writes a checkpoint of the current state (every file atomically, then
    /// the `latest` pointer) and removes older ones. Returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let root = self.checkpoint_root()?.to_path_buf();
        let name = format!("step-{}", self.step);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| BilevelError::io(&dir, e))?;
        let (opt_step, opt_state) = self.optimizer.state();
        let mut model: Vec<(String, Tensor)> = self
            .problem
            .parameters()
            .into_iter()
            .map(|(n, t)| (format!("param.{n}"), t))
            .collect();
        model.extend(
            opt_state
                .into_iter()
                .map(|(n, t)| (format!("optim.{n}"), t)),
        );
        seal_model::weights::save_safetensors(&dir.join("model.safetensors"), &model, None)?;
        self.ranker.save(&dir)?;
        let (r_step, r_state) = self.ranker_optimizer.state();
        seal_model::weights::save_safetensors(
            &dir.join("ranker_optim.safetensors"),
            &r_state,
            None,
        )?;
        let solver_state = self.solver.state();
        seal_model::weights::save_safetensors(
            &dir.join("solver.safetensors"),
            &solver_state,
            None,
        )?;
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            step: self.step,
            total_steps: self.total_steps(),
            epoch: self.epoch_of(self.step),
            solver: self.solver.name().to_string(),
            fingerprint: self.ranker.fingerprint().to_string(),
            optimizer_step: opt_step,
            ranker_optimizer_step: r_step,
            solver_step: self.solver.state_step(),
            config: self.config.clone(),
        };
        seal_model::weights::write_json_atomic(&dir.join("trainer.json"), &meta)?;
        publish_checkpoint(&root, self.step)?;
        tracing::info!(step = self.step, dir = %dir.display(), "checkpoint written");
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// The newest complete checkpoint under `root`, if any.
    pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
        latest_checkpoint(root)
    }

    /// Resumes from the newest checkpoint in the configured checkpoint
    /// directory; returns whether one was found.
    pub fn resume(&mut self) -> Result<bool> {
        let root = self.checkpoint_root()?.to_path_buf();
        match Self::latest_checkpoint(&root)? {
            Some(dir) => {
                self.load_checkpoint(&dir)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Loads a checkpoint directory written by [`Trainer::save_checkpoint`].
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let meta_path = dir.join("trainer.json");
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| BilevelError::io(&meta_path, e))?;
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .map_err(|e| BilevelError::format(&meta_path, e.to_string()))?;
        let mismatch = |m: String| BilevelError::Mismatch {
            path: meta_path.clone(),
            message: m,
        };
        if meta.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(mismatch(format!(
                "field `format_version` is {}",
                meta.format_version
            )));
        }
        if meta.solver != self.solver.name() {
            return Err(mismatch(format!(
                "field `solver`: checkpoint `{}`, this run `{}`",
                meta.solver,
                self.solver.name()
            )));
        }
        if meta.fingerprint != self.ranker.fingerprint() {
            return Err(mismatch(
                "field `fingerprint`: the checkpoint was trained on other data".into(),
            ));
        }
        let changed = changed_settings(&meta.config, &self.config);
        if !changed.is_empty() {
            return Err(mismatch(format!(
                "field `config`: this run changes {}; resume with the settings of the \
                 interrupted run, or start a new run in another directory",
                changed.join(", ")
            )));
        }
        let ranker = Ranker::load(dir)?;
        if ranker.ids() != self.ranker.ids() {
            return Err(mismatch("ranker.json lists other sample ids".into()));
        }
        {
            let _g = tch::no_grad_guard();
            self.ranker
                .logits()
                .shallow_clone()
                .f_copy_(ranker.logits())?;
        }
        self.ranker.step = ranker.step;
        let model_path = dir.join("model.safetensors");
        let files = seal_model::weights::WeightFiles::open_file(&model_path)?;
        {
            let _g = tch::no_grad_guard();
            for (name, p) in self.problem.parameters() {
                let t = files.load(&format!("param.{name}"), &p.size(), p.kind(), p.device())?;
                p.shallow_clone().f_copy_(&t)?;
            }
        }
        let load_all = load_prefixed;
        let opt_state = load_all(&model_path, "optim.")?;
        self.optimizer.load_state(meta.optimizer_step, &opt_state)?;
        let r_state = load_all(&dir.join("ranker_optim.safetensors"), "")?;
        self.ranker_optimizer
            .load_state(meta.ranker_optimizer_step, &r_state)?;
        let s_state = load_all(&dir.join("solver.safetensors"), "")?;
        self.solver.load_state(meta.solver_step, &s_state)?;
        self.step = meta.step;
        self.resumed_from = meta.step;
        self.last_checkpoint = Some(dir.to_path_buf());
        tracing::info!(step = meta.step, dir = %dir.display(), "resumed from checkpoint");
        Ok(())
    }
}
