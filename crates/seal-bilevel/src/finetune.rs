//! Fine-tuning on a selection: (weighted) SFT and the mixed-objective
//! baseline, in their own training loop ([`SftTrainer`]) built on the same
//! step plan, schedules, progress and checkpoints as the bilevel
//! [`Trainer`] ([`crate::plan`]), with no ranker.
//!
//! Each step takes one clipped optimiser step on the model: with
//! `ℓ_i` the fine-tuning losses, `ℓ_safe` the safe-set losses, `w_i` fixed
//! per-sample weights (1 without weights) and `λ` the step's upper-level
//! weight, the model takes one clipped AdamW step on
//!
//! ```text
//! λ·mean(ℓ_safe) + (1−λ)·mean(w_i·ℓ_i)
//! ```
//!
//! With `λ = 0` this is plain SFT on the fine-tuning set (the kept
//! samples of a selection, see [`keep_by_id`]); with soft weights it is
//! SEAL's weighted alternative to a hard top-p cut; with `λ > 0` it is the
//! "mixed objective" baseline of SEAL (Shen et al., ICLR 2025). A term whose
//! coefficient is zero is not evaluated at all, so `λ = 0` needs no safe set
//! and `λ = 1` never looks at the fine-tuning data.
//!
//! [`finetune`] runs an [`SftTrainer`] to the end and returns the trained
//! model with the per-step log. [`WeightedSft`] is the same step as a
//! [`Solver`], for users who compose it with a ranker in a [`Trainer`]; the
//! two give bitwise the same model on the CPU (tested).

use crate::error::{BilevelError, Result};
use crate::lm::{dataset_fingerprint, default_group_overhead, grouped_nll};
use crate::plan::{
    batch_ids, latest_checkpoint, load_prefixed, publish_checkpoint, seed_step, Progress, RunClock,
    StepPlan,
};
use crate::problem::LowerLevel;
use crate::schedule::LambdaSchedule;
use crate::solver::{Solver, StepBatch, StepContext, StepStats};
#[cfg(doc)]
use crate::train::Trainer;
use crate::train::{
    changed_settings, CheckpointMeta, TrainConfig, TrainReport, CHECKPOINT_FORMAT_VERSION,
};
use seal_data::tokenize::TokenizedSample;
use seal_model::optim::{AdamW, Optimizer};
use seal_model::CausalLm;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// One line of the training log (`train_log.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SftStep {
    /// Optimiser step (1-based: the number of completed steps).
    pub step: usize,
    /// The objective `λ·mean(ℓ_safe) + (1−λ)·mean(w·ℓ)` before the update.
    pub loss: f64,
    /// `mean(ℓ_safe)` (0 when `λ = 0`: not evaluated).
    pub safe_loss: f64,
    /// `mean(w·ℓ)` (0 when `λ = 1`: not evaluated).
    pub task_loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// λ of the step.
    pub lambda: f64,
}

/// The shared log a [`WeightedSft`] appends to (readable after training,
/// even though the [`Trainer`] owns the solver).
pub type SftLog = Arc<Mutex<Vec<SftStep>>>;

/// (Weighted) SFT / mixed objective as a [`Solver`]: model steps only.
#[derive(Debug, Clone, Default)]
pub struct WeightedSft {
    /// Fixed weight per fine-tuning sample (ranker slot order); `None`:
    /// every weight is 1.
    pub weights: Option<Vec<f64>>,
    log: SftLog,
}

impl WeightedSft {
    /// A solver with optional fixed per-sample weights (finite, `>= 0`).
    pub fn new(weights: Option<Vec<f64>>) -> Result<Self> {
        if let Some(w) = &weights {
            check_weights(w)?;
        }
        Ok(Self {
            weights,
            log: Arc::default(),
        })
    }

    /// The log handle (shared: clone it before handing the solver over).
    pub fn log(&self) -> SftLog {
        Arc::clone(&self.log)
    }
}

/// Per-sample weights must be finite and `>= 0`.
fn check_weights(weights: &[f64]) -> Result<()> {
    match weights
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || **v < 0.0)
    {
        Some((i, v)) => Err(BilevelError::invalid(
            "weights",
            format!("weight {v} of sample {i}: expected a finite number >= 0"),
        )),
        None => Ok(()),
    }
}

fn check_finite(t: &Tensor, what: &str, step: usize) -> Result<()> {
    if t.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
        return Err(BilevelError::NonFinite {
            what: what.into(),
            step,
            samples: Vec::new(),
            checkpoint: None,
        });
    }
    Ok(())
}

impl<P: LowerLevel> Solver<P> for WeightedSft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn prepare(&mut self, problem: &P, _seed: i64) -> Result<()> {
        if let Some(w) = &self.weights {
            if w.len() != problem.num_finetune() {
                return Err(BilevelError::invalid(
                    "weights",
                    format!(
                        "{} weights for {} fine-tuning samples",
                        w.len(),
                        problem.num_finetune()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The log so far, so that a resumed run's `train_log.jsonl` is whole.
    fn state(&self) -> Vec<(String, Tensor)> {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        log_state(&log)
    }

    fn load_state(&mut self, _step: i64, state: &[(String, Tensor)]) -> Result<()> {
        let restored = log_from_state(state)?;
        if let Ok(mut log) = self.log.lock() {
            *log = restored;
        }
        Ok(())
    }

    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> Result<StepStats> {
        let entry = weighted_step(
            &|rows| problem.finetune_losses(rows),
            &|rows| problem.safe_losses(rows),
            self.weights.as_deref(),
            ctx.optimizer,
            ctx.lambda,
            ctx.max_grad_norm,
            ctx.step,
            batch,
        )?;
        if let Ok(mut log) = self.log.lock() {
            log.push(entry);
        }
        Ok(entry.stats())
    }
}

impl SftStep {
    fn stats(&self) -> StepStats {
        StepStats {
            upper_loss: self.safe_loss,
            lower_loss: self.task_loss,
            model_loss: self.loss,
            ranker_loss: 0.0,
            grad_norm: self.grad_norm,
            ranker_grad_norm: 0.0,
        }
    }
}

/// The log as one `[n, 6]` f64 tensor `log` (empty: nothing).
fn log_state(log: &[SftStep]) -> Vec<(String, Tensor)> {
    if log.is_empty() {
        return Vec::new();
    }
    let flat: Vec<f64> = log
        .iter()
        .flat_map(|s| {
            [
                s.step as f64,
                s.loss,
                s.safe_loss,
                s.task_loss,
                s.grad_norm,
                s.lambda,
            ]
        })
        .collect();
    let t = Tensor::from_slice(&flat).reshape([log.len() as i64, 6]);
    vec![("log".into(), t)]
}

/// The log of [`log_state`]'s tensors.
fn log_from_state(state: &[(String, Tensor)]) -> Result<Vec<SftStep>> {
    let mut restored = Vec::new();
    if let Some((_, t)) = state.iter().find(|(n, _)| n == "log") {
        let size = t.size();
        if size.len() != 2 || size[1] != 6 {
            return Err(BilevelError::invalid(
                "checkpoint",
                format!("tensor `log` has shape {size:?}, expected [n, 6]"),
            ));
        }
        let flat = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))?;
        for r in flat.chunks_exact(6) {
            restored.push(SftStep {
                step: r[0] as usize,
                loss: r[1],
                safe_loss: r[2],
                task_loss: r[3],
                grad_norm: r[4],
                lambda: r[5],
            });
        }
    }
    Ok(restored)
}

/// One step of the (weighted) SFT / mixed objective on `batch`: the
/// gradient of `λ·mean(ℓ_safe) + (1−λ)·mean(w·ℓ)` accumulated over the
/// micro-batches, checked, clipped and applied. Shared by [`WeightedSft`]
/// and [`SftTrainer`].
#[allow(clippy::too_many_arguments)]
fn weighted_step(
    finetune_losses: &dyn Fn(&[usize]) -> Result<Tensor>,
    safe_losses: &dyn Fn(&[usize]) -> Result<Tensor>,
    weights: Option<&[f64]>,
    optimizer: &mut dyn Optimizer,
    lambda: f64,
    max_grad_norm: Option<f64>,
    step: usize,
    batch: &StepBatch,
) -> Result<SftStep> {
    if batch.finetune.is_empty() || batch.finetune.len() != batch.safe.len() {
        return Err(BilevelError::invalid(
            "step batch",
            format!(
                "{} fine-tuning and {} safe micro-batches",
                batch.finetune.len(),
                batch.safe.len()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&lambda) {
        return Err(BilevelError::invalid(
            "lambda",
            format!("{lambda}: expected a value in [0, 1]"),
        ));
    }
    let m = batch.finetune.len() as f64;
    optimizer.zero_grad();
    let (mut upper, mut lower) = (0.0, 0.0);
    for (ft, sf) in batch.finetune.iter().zip(&batch.safe) {
        // One backward per term: only one graph is alive at a time.
        if lambda > 0.0 {
            let safe = safe_losses(sf)?;
            check_finite(&safe, "safe loss", step)?;
            let f = safe.mean(safe.kind());
            (&f * (lambda / m)).f_backward()?;
            upper += f.double_value(&[]) / m;
        }
        if lambda < 1.0 {
            let l = finetune_losses(ft)?;
            check_finite(&l, "fine-tuning loss", step)?;
            let g = match weights {
                Some(w) => {
                    let w: Vec<f64> = ft.iter().map(|&i| w[i]).collect();
                    let w = Tensor::from_slice(&w)
                        .to_device(l.device())
                        .to_kind(l.kind());
                    (w * &l).mean(l.kind())
                }
                None => l.mean(l.kind()),
            };
            (&g * ((1.0 - lambda) / m)).f_backward()?;
            lower += g.double_value(&[]) / m;
        }
    }
    let grad_norm = optimizer.grad_norm();
    if !grad_norm.is_finite() {
        return Err(BilevelError::NonFinite {
            what: "model gradient".into(),
            step,
            samples: Vec::new(),
            checkpoint: None,
        });
    }
    if let Some(mx) = max_grad_norm {
        optimizer.clip_grad_norm(mx);
    }
    optimizer.step()?;
    let loss = lambda * upper + (1.0 - lambda) * lower;
    Ok(SftStep {
        step: step + 1,
        loss,
        safe_loss: upper,
        task_loss: lower,
        grad_norm,
        lambda,
    })
}

/// Keeps the items whose id is in `kept`, in the items' order. An id of
/// `kept` that no item has is an error naming it; an empty result is an
/// error.
pub fn keep_by_id<T>(items: Vec<T>, id: impl Fn(&T) -> &str, kept: &[String]) -> Result<Vec<T>> {
    let wanted: std::collections::HashSet<&str> = kept.iter().map(String::as_str).collect();
    let present: std::collections::HashSet<&str> = items.iter().map(&id).collect();
    if let Some(missing) = kept.iter().find(|k| !present.contains(k.as_str())) {
        return Err(BilevelError::invalid(
            "kept ids",
            format!("unknown sample id `{missing}` (not in the data)"),
        ));
    }
    let out: Vec<T> = items
        .into_iter()
        .filter(|x| wanted.contains(id(x)))
        .collect();
    if out.is_empty() {
        return Err(BilevelError::invalid("kept ids", "empty selection"));
    }
    Ok(out)
}

/// The data of a fine-tuning run. Two equal values (with equal settings,
/// seed and starting model) give the same run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SftData {
    /// The (kept) fine-tuning samples.
    pub finetune: Vec<TokenizedSample>,
    /// The safe set of the mixed objective (needed when `λ > 0`).
    pub safe: Option<Vec<TokenizedSample>>,
    /// Fixed weight per fine-tuning sample (`None`: all 1).
    pub weights: Option<Vec<f64>>,
}

/// What [`finetune`] returns.
pub struct SftOutcome<M> {
    /// The trained model.
    pub model: M,
    /// The run's summary.
    pub report: TrainReport,
    /// One entry per optimiser step.
    pub log: Vec<SftStep>,
}

/// The fine-tuning loop: (weighted) SFT or the mixed objective of a causal
/// LM, with the step plan, schedule, clipping, progress, NaN stops and exact
/// checkpoint/resume of the bilevel [`Trainer`], and no ranker.
pub struct SftTrainer<M: CausalLm> {
    model: M,
    finetune: Vec<TokenizedSample>,
    /// The safe set; the fine-tuning set stands in when `λ = 0` and there is
    /// none (the plan pairs every step with "safe" rows it never reads).
    safe: Vec<TokenizedSample>,
    weights: Option<Vec<f64>>,
    pad_id: u32,
    lambda: f64,
    optimizer: Box<dyn Optimizer>,
    model_lr: f64,
    config: TrainConfig,
    plan: StepPlan,
    fingerprint: String,
    step: usize,
    resumed_from: usize,
    last_checkpoint: Option<PathBuf>,
    log: Vec<SftStep>,
}

/// Per-sample response NLLs of `rows` of `data` under `model`, in length
/// groups as [`crate::LmProblem`] computes them (so that [`WeightedSft`]
/// in a [`Trainer`] and [`SftTrainer`] stay bitwise equal).
fn sample_losses<M: CausalLm>(
    model: &M,
    data: &[TokenizedSample],
    rows: &[usize],
    pad_id: u32,
) -> Result<Tensor> {
    grouped_nll(
        model,
        data,
        rows,
        pad_id,
        default_group_overhead(model.device()),
    )
}

/// The checkpoint's `solver` field of a fine-tuning run.
const SFT_NAME: &str = "sft";

impl<M: CausalLm> SftTrainer<M> {
    /// Sets up fine-tuning of `model`'s trainable parameters (as set up by
    /// the caller, e.g. a LoRA adapter) on `data` with the constant weight
    /// `lambda` of the safe term; every other setting (epochs, batches,
    /// optimiser, schedule, clipping, progress, checkpoints) comes from
    /// `config` (its `lambda` is replaced by the constant, its ranker settings
    /// are ignored).
    pub fn new(
        model: M,
        data: SftData,
        pad_id: u32,
        lambda: f64,
        mut config: TrainConfig,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&lambda) {
            return Err(BilevelError::invalid(
                "lambda",
                format!("{lambda}: expected a value in [0, 1]"),
            ));
        }
        if data.finetune.is_empty() {
            return Err(BilevelError::invalid("data", "empty fine-tuning set"));
        }
        let safe = match data.safe {
            Some(s) if !s.is_empty() => s,
            Some(_) => return Err(BilevelError::invalid("data", "empty safe set")),
            None if lambda > 0.0 => {
                return Err(BilevelError::invalid(
                    "data",
                    format!("lambda {lambda} > 0 needs a safe set"),
                ))
            }
            None => data.finetune.clone(),
        };
        let weights = data.weights;
        if let Some(w) = &weights {
            check_weights(w)?;
            if w.len() != data.finetune.len() {
                return Err(BilevelError::invalid(
                    "weights",
                    format!(
                        "{} weights for {} fine-tuning samples",
                        w.len(),
                        data.finetune.len()
                    ),
                ));
            }
        }
        config.lambda = LambdaSchedule {
            start: lambda,
            decay_per_epoch: 0.0,
        };
        let lengths = |d: &[TokenizedSample]| d.iter().map(TokenizedSample::len).collect();
        let plan = StepPlan::new(lengths(&data.finetune), lengths(&safe), &config)?;
        let optimizer = Box::new(AdamW::new(
            model.trainable_parameters(),
            config.model_optimizer,
        ));
        Ok(Self {
            fingerprint: dataset_fingerprint(&data.finetune),
            model,
            finetune: data.finetune,
            safe,
            weights,
            pad_id,
            lambda,
            optimizer,
            model_lr: config.model_optimizer.lr,
            config,
            plan,
            step: 0,
            resumed_from: 0,
            last_checkpoint: None,
            log: Vec::new(),
        })
    }

    /// Replaces the optimiser (AdamW from the config by default) with any
    /// [`Optimizer`] over the model's trainable parameters, the same names in
    /// the same order. Before training only.
    pub fn with_optimizer(mut self, optimizer: Box<dyn Optimizer>) -> Result<Self> {
        if self.step > 0 {
            return Err(BilevelError::invalid(
                "with_optimizer",
                "the optimiser can only be replaced before training",
            ));
        }
        let ours = self.model.trainable_parameters();
        let theirs = optimizer.params();
        if !ours
            .iter()
            .map(|(n, _)| n)
            .eq(theirs.iter().map(|(n, _)| n))
        {
            return Err(BilevelError::invalid(
                "with_optimizer",
                format!(
                    "the optimiser holds {} parameters that are not the model's {} trainable ones",
                    theirs.len(),
                    ours.len()
                ),
            ));
        }
        self.model_lr = optimizer.learning_rate();
        self.optimizer = optimizer;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &dyn Optimizer {
        self.optimizer.as_ref()
    }

    /// Completed steps.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> usize {
        self.plan.total_steps()
    }

    /// One entry per completed step (including those before a resume).
    pub fn log(&self) -> &[SftStep] {
        &self.log
    }

    /// The last checkpoint written or loaded.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// The trained model, the summary of the last [`SftTrainer::run`] and
    /// the log.
    pub fn into_outcome(self, report: TrainReport) -> SftOutcome<M> {
        SftOutcome {
            model: self.model,
            report,
            log: self.log,
        }
    }

    fn tokens(&self, batch: &StepBatch) -> usize {
        let count = |data: &[TokenizedSample], rows: &[usize]| -> usize {
            rows.iter()
                .filter_map(|&r| data.get(r))
                .map(TokenizedSample::len)
                .sum()
        };
        batch
            .finetune
            .iter()
            .zip(&batch.safe)
            .map(|(f, s)| count(&self.finetune, f) + count(&self.safe, s))
            .sum()
    }

    /// Runs until [`SftTrainer::total_steps`].
    pub fn run(&mut self) -> Result<TrainReport> {
        let total = self.plan.total_steps();
        let mut clock = RunClock::start(self.step);
        let mut last = StepStats::default();
        let bar = Progress::new(self.config.progress, total, self.step);
        tracing::info!(
            lambda = self.lambda,
            total_steps = total,
            steps_per_epoch = self.plan.steps_per_epoch(),
            start = self.step,
            "fine-tuning"
        );
        while self.step < total {
            let step = self.step;
            let epoch = self.plan.epoch_of(step);
            self.optimizer
                .set_learning_rate(self.model_lr * self.config.model_schedule.factor(step, total));
            let batch = self.plan.batch_for_step(step);
            let step_tokens = self.tokens(&batch);
            seed_step(self.config.seed, step);
            let (model, pad) = (&self.model, self.pad_id);
            let (finetune, safe) = (&self.finetune, &self.safe);
            let result = weighted_step(
                &|rows| sample_losses(model, finetune, rows, pad),
                &|rows| sample_losses(model, safe, rows, pad),
                self.weights.as_deref(),
                self.optimizer.as_mut(),
                self.lambda,
                self.config.max_grad_norm,
                step,
                &batch,
            );
            let entry = match result {
                Ok(e) => e,
                Err(BilevelError::NonFinite { what, step, .. }) => {
                    bar.abandon();
                    return Err(BilevelError::NonFinite {
                        what,
                        step,
                        samples: batch_ids(&batch, |i| self.finetune.get(i).map(|s| s.id.clone())),
                        checkpoint: self.last_checkpoint.clone(),
                    });
                }
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            self.log.push(entry);
            last = entry.stats();
            clock.add_tokens(step_tokens);
            self.step += 1;
            let tps = clock.tokens_per_second();
            bar.tick(
                self.step,
                format!("loss {:.4} {:.0} tok/s", entry.loss, tps),
            );
            if RunClock::log_due(&self.config, self.step, total) {
                let eta = clock.eta_seconds(self.step, total);
                tracing::info!(
                    step = self.step,
                    total,
                    epoch,
                    loss = entry.loss,
                    safe_loss = entry.safe_loss,
                    task_loss = entry.task_loss,
                    grad_norm = entry.grad_norm,
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

    fn checkpoint_root(&self) -> Result<PathBuf> {
        self.config
            .checkpoint_dir
            .clone()
            .ok_or_else(|| BilevelError::invalid("training config", "no checkpoint_dir"))
    }

    /// Writes a checkpoint of the current state (parameters, optimiser
    /// state, log; every file atomically, then the `latest` pointer) and
    /// removes older ones. Returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let root = self.checkpoint_root()?;
        let dir = root.join(format!("step-{}", self.step));
        std::fs::create_dir_all(&dir).map_err(|e| BilevelError::io(&dir, e))?;
        let (opt_step, opt_state) = self.optimizer.state();
        let mut tensors: Vec<(String, Tensor)> = self
            .model
            .trainable_parameters()
            .into_iter()
            .map(|(n, t)| (format!("param.{n}"), t))
            .collect();
        tensors.extend(
            opt_state
                .into_iter()
                .map(|(n, t)| (format!("optim.{n}"), t)),
        );
        seal_model::weights::save_safetensors(&dir.join("model.safetensors"), &tensors, None)?;
        seal_model::weights::save_safetensors(
            &dir.join("solver.safetensors"),
            &log_state(&self.log),
            None,
        )?;
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            step: self.step,
            total_steps: self.plan.total_steps(),
            epoch: self.plan.epoch_of(self.step),
            solver: SFT_NAME.to_string(),
            fingerprint: self.fingerprint.clone(),
            optimizer_step: opt_step,
            ranker_optimizer_step: 0,
            solver_step: 0,
            config: self.config.clone(),
        };
        seal_model::weights::write_json_atomic(&dir.join("trainer.json"), &meta)?;
        publish_checkpoint(&root, self.step)?;
        tracing::info!(step = self.step, dir = %dir.display(), "checkpoint written");
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// Resumes from the newest checkpoint in the configured checkpoint
    /// directory; returns whether one was found.
    pub fn resume(&mut self) -> Result<bool> {
        match latest_checkpoint(&self.checkpoint_root()?)? {
            Some(dir) => {
                self.load_checkpoint(&dir)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Loads a checkpoint directory written by
    /// [`SftTrainer::save_checkpoint`] (or by a [`Trainer`] running
    /// [`WeightedSft`]). Refuses one of another run: other data, other
    /// settings or another kind of training.
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
        if meta.solver != SFT_NAME {
            return Err(mismatch(format!(
                "field `solver`: checkpoint `{}`, this run `{SFT_NAME}`",
                meta.solver
            )));
        }
        if meta.fingerprint != self.fingerprint {
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
        let model_path = dir.join("model.safetensors");
        let files = seal_model::weights::WeightFiles::open_file(&model_path)?;
        {
            let _g = tch::no_grad_guard();
            for (name, p) in self.model.trainable_parameters() {
                let t = files.load(&format!("param.{name}"), &p.size(), p.kind(), p.device())?;
                p.shallow_clone().f_copy_(&t)?;
            }
        }
        let opt_state = load_prefixed(&model_path, "optim.")?;
        self.optimizer.load_state(meta.optimizer_step, &opt_state)?;
        self.log = log_from_state(&load_prefixed(&dir.join("solver.safetensors"), "")?)?;
        self.step = meta.step;
        self.resumed_from = meta.step;
        self.last_checkpoint = Some(dir.to_path_buf());
        tracing::info!(step = meta.step, dir = %dir.display(), "resumed from checkpoint");
        Ok(())
    }
}

/// Fine-tunes `model` on `data` to the end with an [`SftTrainer`] (resuming
/// from the newest checkpoint first when `config.resume` is set).
pub fn finetune<M: CausalLm>(
    model: M,
    data: SftData,
    pad_id: u32,
    lambda: f64,
    config: TrainConfig,
) -> Result<SftOutcome<M>> {
    let resume = config.resume;
    let mut trainer = SftTrainer::new(model, data, pad_id, lambda, config)?;
    if resume && trainer.resume()? {
        tracing::info!(step = trainer.step(), "fine-tuning resumed");
    }
    let report = trainer.run()?;
    Ok(trainer.into_outcome(report))
}
