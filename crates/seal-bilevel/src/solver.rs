//! Bilevel solvers behind one trait ([`Solver`]), so users can add their own.
//!
//! All solvers follow SEAL (Shen, Chen, Das, Chen, ICLR 2025, "SEAL:
//! Safety-enhanced Aligned LLM Fine-tuning via Bilevel Data Selection";
//! reference code <https://github.com/hanshen95/SEAL>,
//! `seal/trainer/sft_selector_trainer.py`). With `ℓ_i` the fine-tuning
//! losses, `ℓ_safe` the safe-set losses, `w = w(ω)` the ranker's weights and
//! `λ` the upper-level weight:
//!
//! * [`SealPenalty`] (memory-efficient, the paper's Algorithm 2 and what the
//!   official trainer runs): a model step on `λ·mean(ℓ_safe) +
//!   (1−λ)·mean(w_i·ℓ_i)` with `w` detached, then a ranker step minimising
//!   `mean(w(ω)_i·ℓ_i)` with `ℓ` detached (the losses from before the model
//!   step). Because the model is driven mostly by the safe set, samples
//!   whose loss stays high under it (those that conflict with safety) are
//!   pushed down.
//! * [`SealPenaltyFull`] (the paper's Algorithm 1, V-PBGD-style): an
//!   auxiliary copy `θ̂` ([`LowerLevel::fork`]) tracks the lower level's
//!   solution `argmin_θ g(θ, ω)`: it starts from a task solution (warm-start
//!   steps on the pool, or given parameters), takes `inner_steps` steps on
//!   the weighted fine-tuning loss `mean(w_i·ℓ_i(θ̂))` per outer step, and
//!   its losses are read after them. The model step is as above; the ranker
//!   step minimises `mean(w(ω)_i·(ℓ_i(θ) − ℓ_i(θ̂)))`, the gradient of the
//!   penalty `g(θ, ω) − v(ω)` when `θ̂` is the minimiser (Danskin), checked
//!   exactly on the ridge problem. See [`FullPenaltyConfig`].
//! * [`Implicit`]: `inner_steps` lower-level steps on `mean(w_i·ℓ_i)`, then
//!   the implicit-function-theorem hypergradient
//!   `−∇²_{ωθ}g · (∇²_{θθ}g)⁻¹ ∇_θ f` with Hessian-vector products (double
//!   backward) and a conjugate-gradient or Neumann-series inverse
//!   ([`implicit_hypergradient`]). For small models and for checking the
//!   penalty methods; LMs need [`seal_model::AttentionImpl::Math`]. A
//!   direction of non-positive curvature stops the conjugate gradient with
//!   [`BilevelError::NonPositiveCurvature`] rather than a silently partial
//!   (at first, zero) hypergradient.
//!
//! Every solver checks losses and gradient norms before it updates anything:
//! a NaN or infinity is returned as [`BilevelError::NonFinite`].

use crate::error::{BilevelError, Result};
use crate::problem::{dot, grad, LowerLevel};
use crate::ranker::{Ranker, RankerOptimizer};
use seal_model::optim::{AdamW, AdamWConfig, Optimizer};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The micro-batches of one optimiser step (gradient accumulation): indices
/// into the fine-tuning and safe sets, paired one to one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// Fine-tuning micro-batches (ranker slots).
    pub finetune: Vec<Vec<usize>>,
    /// Safe micro-batches.
    pub safe: Vec<Vec<usize>>,
}

/// What a solver may touch in a step.
pub struct StepContext<'a> {
    /// The model's optimiser (over [`LowerLevel::parameters`]); its `lr` is
    /// already set by the schedule.
    pub optimizer: &'a mut dyn Optimizer,
    /// The ranker.
    pub ranker: &'a mut Ranker,
    /// The ranker's optimiser.
    pub ranker_optimizer: &'a mut RankerOptimizer,
    /// The upper-level weight λ of this step.
    pub lambda: f64,
    /// Gradient-norm clipping of model updates (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// The optimiser step being taken (0-based).
    pub step: usize,
}

/// Numbers reported by a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Mean safe-set loss `f` (before the update).
    pub upper_loss: f64,
    /// Mean weighted fine-tuning loss `mean(w·ℓ)` (before the update).
    pub lower_loss: f64,
    /// The model's objective `λ·f + (1−λ)·mean(w·ℓ)` (penalty solvers).
    pub model_loss: f64,
    /// The ranker's objective.
    pub ranker_loss: f64,
    /// Model gradient norm before clipping.
    pub grad_norm: f64,
    /// Ranker gradient norm before clipping.
    pub ranker_grad_norm: f64,
}

/// A bilevel solver: one optimiser step of the model and the ranker.
pub trait Solver<P: LowerLevel> {
    /// Short name (`seal`, `seal-full`, `implicit`), stored in checkpoints.
    fn name(&self) -> &'static str;
    /// Called once before training (e.g. to create auxiliary copies).
    fn prepare(&mut self, _problem: &P, _seed: i64) -> Result<()> {
        Ok(())
    }
    /// One step on `batch`.
    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> Result<StepStats>;
    /// Extra state to checkpoint (auxiliary parameters, optimiser moments).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Optimiser steps of the extra state, for checkpoints.
    fn state_step(&self) -> i64 {
        0
    }
    /// Restores [`Solver::state`].
    fn load_state(&mut self, _step: i64, _state: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

fn non_finite(what: &str, step: usize) -> BilevelError {
    BilevelError::NonFinite {
        what: what.into(),
        step,
        samples: Vec::new(),
        checkpoint: None,
    }
}

fn check_finite(t: &Tensor, what: &str, step: usize) -> Result<()> {
    if t.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
        return Err(non_finite(what, step));
    }
    Ok(())
}

fn index(rows: &[usize], device: tch::Device) -> Tensor {
    Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device)
}

fn check_batch(batch: &StepBatch) -> Result<()> {
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
    Ok(())
}

/// Clips (if configured) and applies the accumulated model gradient; the
/// norm is checked first so a non-finite gradient updates nothing.
fn apply_step(
    opt: &mut dyn Optimizer,
    max_norm: Option<f64>,
    what: &str,
    step: usize,
) -> Result<f64> {
    let norm = opt.grad_norm();
    if !norm.is_finite() {
        return Err(non_finite(what, step));
    }
    if let Some(m) = max_norm {
        opt.clip_grad_norm(m);
    }
    opt.step()?;
    Ok(norm)
}

/// Output of the shared model step of the penalty solvers.
struct ModelStep {
    /// Detached fine-tuning losses per micro-batch (before the update).
    losses: Vec<Tensor>,
    upper: f64,
    lower: f64,
    model: f64,
    grad_norm: f64,
}

/// `λ·mean(ℓ_safe) + (1−λ)·mean(w_i·ℓ_i)` with `w` detached, accumulated
/// over micro-batches, then one clipped optimiser step.
fn penalty_model_step<P: LowerLevel>(
    problem: &P,
    ctx: &mut StepContext<'_>,
    batch: &StepBatch,
) -> Result<ModelStep> {
    let m = batch.finetune.len() as f64;
    let lambda = ctx.lambda;
    let weights = ctx.ranker.weights().detach();
    ctx.optimizer.zero_grad();
    let (mut upper, mut lower, mut model) = (0.0, 0.0, 0.0);
    let mut losses = Vec::with_capacity(batch.finetune.len());
    for (ft, sf) in batch.finetune.iter().zip(&batch.safe) {
        // The two terms are differentiated one after the other (gradients
        // accumulate), so only one graph is alive at a time: half the peak
        // activation memory of a joint backward, same gradient.
        // With λ = 0 the safe term carries no model gradient either: its
        // value is only reported, so it is computed without a graph.
        let safe = if lambda > 0.0 {
            problem.safe_losses(sf)?
        } else {
            let _g = tch::no_grad_guard();
            problem.safe_losses(sf)?
        };
        check_finite(&safe, "upper-level (safe) loss", ctx.step)?;
        let f = safe.mean(safe.kind());
        if lambda > 0.0 {
            (&f * (lambda / m)).f_backward()?;
        }
        let f = f.double_value(&[]);
        let w = weights.index_select(0, &index(ft, weights.device()));
        // With λ = 1 the fine-tuning term carries no model gradient: a
        // forward pass without a graph gives the ranker what it needs.
        let ft_loss = if lambda >= 1.0 {
            let _g = tch::no_grad_guard();
            problem.finetune_losses(ft)?
        } else {
            problem.finetune_losses(ft)?
        };
        check_finite(&ft_loss, "lower-level (fine-tuning) loss", ctx.step)?;
        // The ranker may live on another device than the model (a CPU
        // ranker over a CUDA model): bring its weights to the losses.
        let w = w.to_device(ft_loss.device()).to_kind(ft_loss.kind());
        let g = (&w * &ft_loss).mean(ft_loss.kind());
        if lambda < 1.0 {
            (&g * ((1.0 - lambda) / m)).f_backward()?;
        }
        let g = g.double_value(&[]);
        upper += f / m;
        lower += g / m;
        model += (lambda * f + (1.0 - lambda) * g) / m;
        losses.push(ft_loss.detach());
    }
    let grad_norm = apply_step(ctx.optimizer, ctx.max_grad_norm, "model gradient", ctx.step)?;
    Ok(ModelStep {
        losses,
        upper,
        lower,
        model,
        grad_norm,
    })
}

/// Ranker step on `mean(w(ω)_i · c_i)` per micro-batch (`c` detached).
fn ranker_step(
    ctx: &mut StepContext<'_>,
    batch: &StepBatch,
    coef: &[Tensor],
) -> Result<(f64, f64)> {
    let m = batch.finetune.len() as f64;
    ctx.ranker_optimizer.zero_grad();
    let weights = ctx.ranker.weights();
    let mut total: Option<Tensor> = None;
    for (ft, c) in batch.finetune.iter().zip(coef) {
        let w = weights.index_select(0, &index(ft, weights.device()));
        let c = c.to_device(weights.device()).to_kind(weights.kind());
        let term = (w * c).mean(weights.kind()) / m;
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    let total = total.ok_or_else(|| BilevelError::invalid("step batch", "no micro-batches"))?;
    total.f_backward()?;
    let value = total.double_value(&[]);
    let norm = ctx
        .ranker_optimizer
        .step()
        .map_err(|_| non_finite("ranker gradient", ctx.step))?;
    ctx.ranker.step += 1;
    Ok((value, norm))
}

/// SEAL's memory-efficient penalty method (Algorithm 2; the official trainer).
#[derive(Debug, Clone, Default)]
pub struct SealPenalty;

impl<P: LowerLevel> Solver<P> for SealPenalty {
    fn name(&self) -> &'static str {
        "seal"
    }

    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> Result<StepStats> {
        check_batch(batch)?;
        let ms = penalty_model_step(problem, ctx, batch)?;
        let (ranker_loss, ranker_grad_norm) = ranker_step(ctx, batch, &ms.losses)?;
        Ok(StepStats {
            upper_loss: ms.upper,
            lower_loss: ms.lower,
            model_loss: ms.model,
            ranker_loss,
            grad_norm: ms.grad_norm,
            ranker_grad_norm,
        })
    }
}

/// Settings of the full penalty method's auxiliary copy `θ̂`
/// ([`SealPenaltyFull`]).
///
/// The penalty's ranker gradient `∇_ω g(θ, ω) − ∇_ω g(θ̂, ω)` is the
/// gradient of `g(θ, ω) − v(ω)`, with `v(ω) = min_θ g(θ, ω)` the lower
/// level's value, only when `θ̂` is (close to) that minimiser. A `θ̂` that
/// starts as the model's own function and takes one step per outer step
/// measures how fast each sample is learnt instead, which inverts the
/// ranking. The defaults therefore start `θ̂` from a task solution, take
/// several steps per outer step and read `ℓ(θ̂)` after them.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct FullPenaltyConfig {
    /// `θ̂`'s optimiser (betas, eps, weight decay; `lr` is the base rate of
    /// the warm start).
    pub optimizer: AdamWConfig,
    /// `θ̂`'s own rate as a multiple of the model's scheduled rate.
    pub lr_scale: f64,
    /// `θ̂` steps on the weighted task loss per outer step (0 keeps `θ̂`
    /// where it starts: only meaningful with a warm start).
    pub inner_steps: usize,
    /// Task steps (uniform weights, plain mean over the pool) `θ̂` takes in
    /// [`Solver::prepare`], before the first outer step, in micro-batches of
    /// `warm_start_batch` rows drawn without replacement in a seeded order.
    pub warm_start_steps: usize,
    /// Rows per warm-start micro-batch.
    pub warm_start_batch: usize,
    /// Read `ℓ(θ̂)` after `θ̂`'s inner steps (the value gap the method
    /// assumes) rather than before them.
    pub read_after_update: bool,
}

impl Default for FullPenaltyConfig {
    fn default() -> Self {
        Self {
            optimizer: AdamWConfig {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            lr_scale: 1.0,
            inner_steps: 2,
            warm_start_steps: 50,
            warm_start_batch: 8,
            read_after_update: true,
        }
    }
}

impl FullPenaltyConfig {
    /// Checks the counts and rates; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr_scale.is_finite() && self.lr_scale >= 0.0) {
            return Err(BilevelError::invalid(
                "full penalty lr_scale",
                format!("{}: expected a finite value ≥ 0", self.lr_scale),
            ));
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr >= 0.0) {
            return Err(BilevelError::invalid(
                "full penalty optimizer.lr",
                format!("{}: expected a finite value ≥ 0", self.optimizer.lr),
            ));
        }
        if self.warm_start_steps > 0 && self.warm_start_batch == 0 {
            return Err(BilevelError::invalid(
                "full penalty warm_start_batch",
                "0 rows per micro-batch with warm-start steps to take",
            ));
        }
        Ok(())
    }
}

/// SEAL's full penalty method (Algorithm 1, V-PBGD-style) with an auxiliary
/// lower-level copy `θ̂` that tracks the lower level's solution
/// ([`FullPenaltyConfig`]).
pub struct SealPenaltyFull<P: LowerLevel> {
    aux: Option<P>,
    aux_opt: Option<AdamW>,
    start: Option<Vec<(String, Tensor)>>,
    /// Settings.
    pub config: FullPenaltyConfig,
}

impl<P: LowerLevel> SealPenaltyFull<P> {
    /// A solver with the given settings.
    pub fn new(config: FullPenaltyConfig) -> Self {
        Self {
            aux: None,
            aux_opt: None,
            start: None,
            config,
        }
    }

    /// Starts `θ̂` from these parameter values (by name, e.g. a task
    /// adapter's LoRA factors) instead of the fresh copy; the warm-start
    /// steps, if any, follow. Every parameter of `θ̂` must be given.
    pub fn with_start(mut self, parameters: Vec<(String, Tensor)>) -> Self {
        self.start = Some(parameters);
        self
    }

    /// The auxiliary copy, once prepared.
    pub fn aux(&self) -> Option<&P> {
        self.aux.as_ref()
    }
}

/// Accumulates `θ̂`'s gradient of `mean(w_i·ℓ_i(θ̂))` over `micro` (the
/// micro-batches of one step) and checks it; returns the losses, detached.
fn aux_gradient<P: LowerLevel>(
    aux: &P,
    opt: &mut dyn Optimizer,
    weights: &Tensor,
    micro: &[Vec<usize>],
    step: usize,
) -> Result<Vec<Tensor>> {
    let m = micro.len() as f64;
    opt.zero_grad();
    let mut losses = Vec::with_capacity(micro.len());
    for rows in micro {
        let l = aux.finetune_losses(rows)?;
        check_finite(&l, "auxiliary lower-level loss", step)?;
        let w = weights
            .index_select(0, &index(rows, weights.device()))
            .to_device(l.device())
            .to_kind(l.kind());
        ((&w * &l).mean(l.kind()) / m).f_backward()?;
        losses.push(l.detach());
    }
    if !opt.grad_norm().is_finite() {
        return Err(non_finite("auxiliary gradient", step));
    }
    Ok(losses)
}

fn apply_aux(opt: &mut dyn Optimizer, max_norm: Option<f64>) -> Result<()> {
    if let Some(mx) = max_norm {
        opt.clip_grad_norm(mx);
    }
    opt.step()?;
    Ok(())
}

impl<P: LowerLevel> Solver<P> for SealPenaltyFull<P> {
    fn name(&self) -> &'static str {
        "seal-full"
    }

    fn prepare(&mut self, problem: &P, seed: i64) -> Result<()> {
        self.config.validate()?;
        let aux = problem.fork(seed.wrapping_add(0x5EA1))?;
        if let Some(start) = &self.start {
            let _g = tch::no_grad_guard();
            for (name, p) in aux.parameters() {
                let (_, t) = start.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    BilevelError::invalid(
                        "full penalty start",
                        format!("no value for parameter `{name}`"),
                    )
                })?;
                if t.size() != p.size() {
                    return Err(BilevelError::invalid(
                        "full penalty start",
                        format!(
                            "parameter `{name}`: shape {:?}, expected {:?}",
                            t.size(),
                            p.size()
                        ),
                    ));
                }
                p.shallow_clone()
                    .f_copy_(&t.to_device(p.device()).to_kind(p.kind()))?;
            }
        }
        let mut opt = AdamW::new(aux.parameters(), self.config.optimizer);
        opt.config.lr = self.config.optimizer.lr * self.config.lr_scale;
        let n = aux.num_finetune();
        if self.config.warm_start_steps > 0 && n > 0 {
            // A task solution to start from: the plain mean loss over the
            // pool (uniform weights), the lower level at the ranker's start.
            let ones = Tensor::ones([n as i64], (tch::Kind::Float, tch::Device::Cpu));
            let mut rng = seal_data::rng::SplitMix64::derive(seed as u64, 0x5EA1, 0);
            let batch = self.config.warm_start_batch.min(n);
            let mut order: Vec<usize> = Vec::new();
            for k in 0..self.config.warm_start_steps {
                if order.len() < batch {
                    order.extend(rng.permutation(n));
                }
                let rows: Vec<usize> = order.drain(..batch).collect();
                aux_gradient(&aux, &mut opt, &ones, &[rows], k)?;
                apply_aux(&mut opt, Some(1.0))?;
            }
            tracing::debug!(
                steps = self.config.warm_start_steps,
                "seal-full: θ̂ warm-started on the task"
            );
        }
        self.aux_opt = Some(opt);
        self.aux = Some(aux);
        Ok(())
    }

    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> Result<StepStats> {
        check_batch(batch)?;
        let (Some(aux), Some(aux_opt)) = (self.aux.as_ref(), self.aux_opt.as_mut()) else {
            return Err(BilevelError::invalid(
                "solver",
                "seal-full: prepare() was not called",
            ));
        };
        let weights = ctx.ranker.weights().detach();
        aux_opt.config.lr = ctx.optimizer.learning_rate() * self.config.lr_scale;
        let inner = self.config.inner_steps;
        // 1. θ̂'s first gradient, checked before anything moves.
        let first = if inner > 0 {
            Some(aux_gradient(
                aux,
                aux_opt,
                &weights,
                &batch.finetune,
                ctx.step,
            )?)
        } else {
            None
        };
        // 2. Model step (as the memory-efficient method).
        let ms = penalty_model_step(problem, ctx, batch)?;
        // 3. θ̂ steps on the weighted lower-level loss at the current ω.
        if first.is_some() {
            apply_aux(aux_opt, ctx.max_grad_norm)?;
        }
        for _ in 1..inner {
            aux_gradient(aux, aux_opt, &weights, &batch.finetune, ctx.step)?;
            apply_aux(aux_opt, ctx.max_grad_norm)?;
        }
        // 4. ℓ(θ̂): after its update (the value of the lower level), or the
        //    first inner pass's losses when asked to read them before.
        let aux_losses = match first {
            Some(l) if !self.config.read_after_update => l,
            _ => {
                let _g = tch::no_grad_guard();
                let mut out = Vec::with_capacity(batch.finetune.len());
                for rows in &batch.finetune {
                    let l = aux.finetune_losses(rows)?;
                    check_finite(&l, "auxiliary lower-level loss", ctx.step)?;
                    out.push(l.detach());
                }
                out
            }
        };
        // 5. Ranker step on ℓ(θ) − ℓ(θ̂).
        let coef: Vec<Tensor> = ms
            .losses
            .iter()
            .zip(&aux_losses)
            .map(|(a, b)| a - b.to_kind(a.kind()))
            .collect();
        let (ranker_loss, ranker_grad_norm) = ranker_step(ctx, batch, &coef)?;
        Ok(StepStats {
            upper_loss: ms.upper,
            lower_loss: ms.lower,
            model_loss: ms.model,
            ranker_loss,
            grad_norm: ms.grad_norm,
            ranker_grad_norm,
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        if let Some(aux) = &self.aux {
            out.extend(
                aux.parameters()
                    .into_iter()
                    .map(|(n, t)| (format!("aux.{n}"), t)),
            );
        }
        if let Some(opt) = &self.aux_opt {
            out.extend(
                opt.state()
                    .1
                    .into_iter()
                    .map(|(n, t)| (format!("aux_optim.{n}"), t)),
            );
        }
        out
    }

    fn state_step(&self) -> i64 {
        self.aux_opt.as_ref().map(|o| o.step_count()).unwrap_or(0)
    }

    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        let (Some(aux), Some(opt)) = (self.aux.as_ref(), self.aux_opt.as_mut()) else {
            return Err(BilevelError::invalid(
                "solver",
                "seal-full: prepare() was not called before load_state",
            ));
        };
        let _g = tch::no_grad_guard();
        for (name, p) in aux.parameters() {
            let key = format!("aux.{name}");
            let t = state.iter().find(|(n, _)| *n == key).ok_or_else(|| {
                BilevelError::invalid("solver state", format!("tensor `{key}` is missing"))
            })?;
            p.shallow_clone().f_copy_(&t.1)?;
        }
        let opt_state: Vec<(String, Tensor)> = state
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix("aux_optim.")
                    .map(|s| (s.to_string(), t.shallow_clone()))
            })
            .collect();
        opt.load_state(step, &opt_state)?;
        Ok(())
    }
}

/// How [`implicit_hypergradient`] applies `(∇²_{θθ} g + δI)⁻¹`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
#[non_exhaustive]
pub enum InverseMethod {
    /// Conjugate gradient: at most `iters` Hessian-vector products, stopping
    /// when the residual norm falls below `tol` times the right-hand side's.
    Cg {
        /// Maximum iterations.
        iters: usize,
        /// Relative residual tolerance.
        tol: f64,
    },
    /// Truncated Neumann series `α Σ_{k≤K} (I − αH)^k b` (needs `α‖H‖ < 1`).
    Neumann {
        /// Number of terms `K`.
        iters: usize,
        /// Step `α`.
        alpha: f64,
    },
}

impl Default for InverseMethod {
    fn default() -> Self {
        Self::Cg {
            iters: 20,
            tol: 1e-10,
        }
    }
}

/// Settings of the [`Implicit`] solver.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImplicitConfig {
    /// Lower-level optimiser steps per ranker step.
    pub inner_steps: usize,
    /// The inverse-Hessian-vector method.
    pub inverse: InverseMethod,
    /// Damping `δ` added to the Hessian (0 for exact problems).
    pub damping: f64,
}

impl Default for ImplicitConfig {
    fn default() -> Self {
        Self {
            inner_steps: 1,
            inverse: InverseMethod::default(),
            damping: 0.0,
        }
    }
}

fn lin_comb(a: &[Tensor], b: &[Tensor], beta: f64) -> Vec<Tensor> {
    a.iter().zip(b).map(|(x, y)| x + y * beta).collect()
}

fn norm(v: &[Tensor]) -> Result<f64> {
    Ok(dot(v, v)?.double_value(&[]).max(0.0).sqrt())
}

/// `mean(w_i·ℓ_i)/M` of one fine-tuning micro-batch (graph to `θ` and to
/// the ranker's logits unless `detach_weights`).
fn weighted_loss<P: LowerLevel>(
    problem: &P,
    ranker: &Ranker,
    rows: &[usize],
    m: f64,
    detach_weights: bool,
) -> Result<Tensor> {
    let all = ranker.weights();
    let all = if detach_weights { all.detach() } else { all };
    let l = problem.finetune_losses(rows)?;
    let w = all
        .index_select(0, &index(rows, all.device()))
        .to_device(l.device())
        .to_kind(l.kind());
    Ok((w * &l).mean(l.kind()) / m)
}

/// The implicit-function-theorem hypergradient `∂F/∂ω` at the current `θ`
/// (which should be a lower-level solution): `v = (∇²_{θθ}g + δI)⁻¹ ∇_θ f`
/// with Hessian-vector products, then `−∂/∂ω ⟨∇_θ g(θ, ω), v⟩`. `g` is the
/// weighted loss over `finetune` micro-batches, `f` the mean safe loss over
/// `safe` micro-batches. Returns the gradient `[N]` and `f`.
pub fn implicit_hypergradient<P: LowerLevel>(
    problem: &P,
    ranker: &Ranker,
    finetune: &[Vec<usize>],
    safe: &[Vec<usize>],
    inverse: InverseMethod,
    damping: f64,
) -> Result<(Tensor, f64)> {
    if finetune.is_empty() || safe.is_empty() {
        return Err(BilevelError::invalid(
            "hypergradient",
            "needs fine-tuning and safe micro-batches",
        ));
    }
    let params: Vec<Tensor> = problem.parameters().into_iter().map(|(_, t)| t).collect();
    // ∇_θ f
    let ms = safe.len() as f64;
    let mut gf: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
    let mut upper = 0.0;
    for rows in safe {
        let l = problem.safe_losses(rows)?;
        let f = l.mean(l.kind()) / ms;
        upper += f.double_value(&[]);
        for (acc, g) in gf.iter_mut().zip(grad(&f, &params, false, false)?) {
            *acc = &*acc + g;
        }
    }
    let mf = finetune.len() as f64;
    let hvp = |v: &[Tensor]| -> Result<Vec<Tensor>> {
        let mut out: Vec<Tensor> = v.iter().map(|x| x * damping).collect();
        for rows in finetune {
            let g = weighted_loss(problem, ranker, rows, mf, true)?;
            let gt = grad(&g, &params, true, true)?;
            let s = dot(&gt, v)?;
            for (acc, h) in out.iter_mut().zip(grad(&s, &params, false, false)?) {
                *acc = &*acc + h;
            }
        }
        Ok(out)
    };
    let b = gf;
    let x: Vec<Tensor> = match inverse {
        InverseMethod::Cg { iters, tol } => {
            let mut x: Vec<Tensor> = b.iter().map(Tensor::zeros_like).collect();
            let mut r: Vec<Tensor> = b.iter().map(Tensor::copy).collect();
            let mut p: Vec<Tensor> = b.iter().map(Tensor::copy).collect();
            let mut rs = dot(&r, &r)?.double_value(&[]);
            let target = tol * norm(&b)?;
            for iteration in 0..iters {
                if rs.sqrt() <= target {
                    break;
                }
                let ap = hvp(&p)?;
                let pap = dot(&p, &ap)?.double_value(&[]);
                if pap.is_nan() || pap == f64::INFINITY {
                    return Err(non_finite("Hessian-vector product", 0));
                }
                if pap <= 0.0 {
                    return Err(BilevelError::NonPositiveCurvature {
                        iteration,
                        curvature: pap,
                    });
                }
                let alpha = rs / pap;
                x = lin_comb(&x, &p, alpha);
                r = lin_comb(&r, &ap, -alpha);
                let rs_new = dot(&r, &r)?.double_value(&[]);
                p = lin_comb(&r, &p, rs_new / rs);
                rs = rs_new;
            }
            x
        }
        InverseMethod::Neumann { iters, alpha } => {
            let mut v: Vec<Tensor> = b.iter().map(Tensor::copy).collect();
            let mut acc: Vec<Tensor> = b.iter().map(Tensor::copy).collect();
            for _ in 0..iters {
                let hv = hvp(&v)?;
                v = lin_comb(&v, &hv, -alpha);
                acc = lin_comb(&acc, &v, 1.0);
            }
            acc.iter().map(|t| t * alpha).collect()
        }
    };
    let x: Vec<Tensor> = x.into_iter().map(|t| t.detach()).collect();
    let logits = ranker.logits();
    let mut hyper = logits.zeros_like();
    for rows in finetune {
        let g = weighted_loss(problem, ranker, rows, mf, false)?;
        let gt = grad(&g, &params, true, true)?;
        let s = dot(&gt, &x)?;
        let gw = grad(&s, std::slice::from_ref(logits), false, false)?;
        if let Some(gw) = gw.into_iter().next() {
            hyper -= gw.to_kind(logits.kind());
        }
    }
    Ok((hyper.detach(), upper))
}

/// The implicit-differentiation solver (AID with HVPs).
#[derive(Debug, Clone, Default)]
pub struct Implicit {
    /// Settings.
    pub config: ImplicitConfig,
}

impl<P: LowerLevel> Solver<P> for Implicit {
    fn name(&self) -> &'static str {
        "implicit"
    }

    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> Result<StepStats> {
        check_batch(batch)?;
        let m = batch.finetune.len() as f64;
        let mut lower = 0.0;
        let mut grad_norm = 0.0;
        for k in 0..self.config.inner_steps.max(1) {
            ctx.optimizer.zero_grad();
            let mut total = 0.0;
            for rows in &batch.finetune {
                let g = weighted_loss(problem, ctx.ranker, rows, m, true)?;
                check_finite(&g, "lower-level (fine-tuning) loss", ctx.step)?;
                g.f_backward()?;
                total += g.double_value(&[]);
            }
            if k == 0 {
                lower = total;
            }
            grad_norm = apply_step(ctx.optimizer, ctx.max_grad_norm, "model gradient", ctx.step)?;
        }
        let (hyper, upper) = implicit_hypergradient(
            problem,
            ctx.ranker,
            &batch.finetune,
            &batch.safe,
            self.config.inverse,
            self.config.damping,
        )?;
        if !upper.is_finite() {
            return Err(non_finite("upper-level (safe) loss", ctx.step));
        }
        check_finite(&hyper, "hypergradient", ctx.step)?;
        ctx.ranker_optimizer.zero_grad();
        {
            let mut g = ctx.ranker.logits().grad();
            if g.defined() {
                g.f_copy_(&hyper)?;
            } else {
                // Seed the gradient through a backward of ⟨ω, hyper⟩.
                (ctx.ranker.logits() * &hyper)
                    .sum(ctx.ranker.logits().kind())
                    .f_backward()?;
            }
        }
        let ranker_grad_norm = ctx
            .ranker_optimizer
            .step()
            .map_err(|_| non_finite("ranker gradient", ctx.step))?;
        ctx.ranker.step += 1;
        Ok(StepStats {
            upper_loss: upper,
            lower_loss: lower,
            model_loss: lower,
            ranker_loss: upper,
            grad_norm,
            ranker_grad_norm,
        })
    }
}
