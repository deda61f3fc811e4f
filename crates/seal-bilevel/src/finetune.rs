//! Fine-tuning on a selection: (weighted) SFT and the mixed-objective
//! baseline, run by the same [`Trainer`] as the bilevel solvers.
//!
//! [`WeightedSft`] is a [`Solver`] whose step only touches the model: with
//! `ℓ_i` the fine-tuning losses, `ℓ_safe` the safe-set losses, `w_i` fixed
//! per-sample weights (1 without weights) and `λ` the step's upper-level
//! weight, the model takes one clipped AdamW step on
//!
//! ```text
//! λ·mean(ℓ_safe) + (1−λ)·mean(w_i·ℓ_i)
//! ```
//!
//! and the ranker (which the [`Trainer`] requires) is never read nor
//! updated. With `λ = 0` this is plain SFT on the fine-tuning set (the kept
//! samples of a selection, see [`keep_by_id`]); with soft weights it is
//! SEAL's weighted alternative to a hard top-p cut; with `λ > 0` it is the
//! "mixed objective" baseline of SEAL (Shen et al., ICLR 2025). A term whose
//! coefficient is zero is not evaluated at all, so `λ = 0` needs no safe set
//! and `λ = 1` never looks at the fine-tuning data.
//!
//! [`finetune`] wires it up for a causal LM: it builds the [`LmProblem`],
//! a placeholder ranker and the [`Trainer`], and returns the trained model
//! with the per-step log.

use crate::error::{BilevelError, Result};
use crate::lm::{dataset_fingerprint, ForkableLm, LmProblem};
use crate::problem::LowerLevel;
use crate::ranker::{Activation, Ranker};
use crate::schedule::LambdaSchedule;
use crate::solver::{Solver, StepBatch, StepContext, StepStats};
use crate::train::{TrainConfig, TrainReport, Trainer};
use seal_data::tokenize::TokenizedSample;
use serde::{Deserialize, Serialize};
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
            if let Some((i, v)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(BilevelError::invalid(
                    "weights",
                    format!("weight {v} of sample {i}: expected a finite number >= 0"),
                ));
            }
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

    fn load_state(&mut self, _step: i64, state: &[(String, Tensor)]) -> Result<()> {
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
        let lambda = ctx.lambda;
        if !(0.0..=1.0).contains(&lambda) {
            return Err(BilevelError::invalid(
                "lambda",
                format!("{lambda}: expected a value in [0, 1]"),
            ));
        }
        let m = batch.finetune.len() as f64;
        ctx.optimizer.zero_grad();
        let (mut upper, mut lower) = (0.0, 0.0);
        for (ft, sf) in batch.finetune.iter().zip(&batch.safe) {
            // One backward per term: only one graph is alive at a time.
            if lambda > 0.0 {
                let safe = problem.safe_losses(sf)?;
                check_finite(&safe, "safe loss", ctx.step)?;
                let f = safe.mean(safe.kind());
                (&f * (lambda / m)).f_backward()?;
                upper += f.double_value(&[]) / m;
            }
            if lambda < 1.0 {
                let l = problem.finetune_losses(ft)?;
                check_finite(&l, "fine-tuning loss", ctx.step)?;
                let g = match &self.weights {
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
        let grad_norm = ctx.optimizer.grad_norm();
        if !grad_norm.is_finite() {
            return Err(BilevelError::NonFinite {
                what: "model gradient".into(),
                step: ctx.step,
                samples: Vec::new(),
                checkpoint: None,
            });
        }
        if let Some(mx) = ctx.max_grad_norm {
            ctx.optimizer.clip_grad_norm(mx);
        }
        ctx.optimizer.step()?;
        let loss = lambda * upper + (1.0 - lambda) * lower;
        if let Ok(mut log) = self.log.lock() {
            log.push(SftStep {
                step: ctx.step + 1,
                loss,
                safe_loss: upper,
                task_loss: lower,
                grad_norm,
                lambda,
            });
        }
        Ok(StepStats {
            upper_loss: upper,
            lower_loss: lower,
            model_loss: loss,
            ranker_loss: 0.0,
            grad_norm,
            ranker_grad_norm: 0.0,
        })
    }
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

/// The data of a fine-tuning run.
#[derive(Debug, Clone, Default)]
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
    /// The trainer's summary.
    pub report: TrainReport,
    /// One entry per optimiser step.
    pub log: Vec<SftStep>,
}

/// Fine-tunes `model` (trainable parameters as set up by the caller, e.g.
/// a LoRA adapter) on `data` with the constant weight `lambda` of the safe
/// term; every other setting (epochs, batches, optimiser, schedule,
/// clipping, progress) comes from `config` (its `lambda` and ranker
/// settings are ignored; checkpoints work as for the solvers).
pub fn finetune<M: ForkableLm>(
    model: M,
    data: SftData,
    pad_id: u32,
    lambda: f64,
    mut config: TrainConfig,
) -> Result<SftOutcome<M>> {
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
        // λ = 0 never evaluates the safe term; the trainer still pairs every
        // fine-tuning batch with a "safe" one, so the fine-tuning set stands in.
        None => data.finetune.clone(),
    };
    let ids: Vec<String> = data.finetune.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&data.finetune);
    let solver = WeightedSft::new(data.weights)?;
    let log = solver.log();
    let problem = LmProblem::new(model, data.finetune, safe, pad_id)?;
    let ranker = Ranker::new(
        ids,
        fingerprint,
        Activation::Sigmoid,
        Kind::Float,
        tch::Device::Cpu,
    )?;
    config.lambda = LambdaSchedule {
        start: lambda,
        decay_per_epoch: 0.0,
    };
    let resume = config.resume;
    let mut trainer = Trainer::new(problem, Box::new(solver), ranker, config)?;
    if resume && trainer.resume()? {
        tracing::info!(step = trainer.step(), "fine-tuning resumed");
    }
    let report = trainer.run()?;
    let (problem, _) = trainer.into_parts();
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(SftOutcome {
        model: problem.model,
        report,
        log,
    })
}
