//! Optimisers over named tensors, with state that can be saved and restored.
//!
//! tch's `nn::Optimizer` hides its moment buffers, which rules out exact
//! checkpoint/resume; these optimisers keep them as plain tensors. All of
//! them implement [`Optimizer`], which is what the training loops take, so a
//! user's own update rule plugs in the same way: implement
//! [`Optimizer::params`], [`Optimizer::step`], the learning-rate accessors
//! and the state pair; gradient zeroing, norms and clipping come with it.
//!
//! * [`AdamW`]: Adam with decoupled weight decay (Loshchilov & Hutter).
//! * [`Adam`]: Adam with L2 weight decay added to the gradient (Kingma & Ba).
//! * [`Sgd`]: gradient descent with optional momentum (PyTorch semantics).

use crate::error::{ModelError, Result};
use tch::{Kind, Tensor};

/// An update rule over a fixed list of named parameters that reads their
/// accumulated `.grad()`s.
pub trait Optimizer {
    /// Short name for logs and records (`adamw`, `adam`, `sgd`, ...).
    fn name(&self) -> &str;
    /// The parameters, by name.
    fn params(&self) -> &[(String, Tensor)];
    /// The learning rate of the next step.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate of the next steps (schedules call this).
    fn set_learning_rate(&mut self, lr: f64);
    /// One update from the accumulated gradients. Parameters without a
    /// gradient are left untouched; a non-finite gradient is an error.
    fn step(&mut self) -> Result<()>;
    /// Steps taken so far.
    fn step_count(&self) -> i64;
    /// The step count and every state buffer by name, for checkpoints.
    fn state(&self) -> (i64, Vec<(String, Tensor)>);
    /// Restores what [`Optimizer::state`] returned.
    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()>;

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        for (_, p) in self.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients.
    fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for (_, p) in self.params() {
            let g = p.grad();
            if g.defined() {
                sq += g
                    .to_kind(Kind::Double)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        }
        sq.sqrt()
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns
    /// the norm before clipping.
    fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm > max_norm && norm > 0.0 {
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in self.params() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }
}

/// The gradient of `p` in `kind`, or `None` without one; an error naming the
/// parameter when it is not finite.
fn finite_grad(name: &str, p: &Tensor, kind: Kind) -> Result<Option<Tensor>> {
    let g = p.grad();
    if !g.defined() {
        return Ok(None);
    }
    let g = g.to_kind(kind);
    if g.isfinite().all().int64_value(&[]) == 0 {
        return Err(ModelError::InvalidInput(format!(
            "non-finite gradient in `{name}`"
        )));
    }
    Ok(Some(g))
}

/// A state buffer by key, or an error naming it.
fn find_state<'a>(state: &'a [(String, Tensor)], key: &str) -> Result<&'a Tensor> {
    state
        .iter()
        .find(|(n, _)| n == key)
        .map(|(_, t)| t)
        .ok_or_else(|| ModelError::InvalidInput(format!("optimizer state lacks `{key}`")))
}

/// Zero buffers shaped like each parameter: f32, or f64 for f64 parameters.
fn zero_buffers(params: &[(String, Tensor)]) -> Vec<Tensor> {
    params
        .iter()
        .map(|(_, p)| p.zeros_like().to_kind(Kind::Float.max_with(p.kind())))
        .collect()
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW (Loshchilov & Hutter) on a fixed list of named parameters.
pub struct AdamW {
    /// Hyper-parameters; `lr` may be changed between steps by a schedule.
    pub config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
    /// Decoupled (AdamW) or L2 (Adam) weight decay.
    decoupled: bool,
}

impl AdamW {
    /// Creates the optimiser; moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        Self {
            config,
            m: zero_buffers(&params),
            v: zero_buffers(&params),
            params,
            step: 0,
            decoupled: true,
        }
    }
}

impl Optimizer for AdamW {
    fn name(&self) -> &str {
        "adamw"
    }
    fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    fn learning_rate(&self) -> f64 {
        self.config.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
    fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (name, p)) in self.params.iter().enumerate() {
            let Some(mut g) = finite_grad(name, p, self.m[i].kind())? else {
                continue;
            };
            if !self.decoupled && c.weight_decay != 0.0 {
                g = &g + p.to_kind(g.kind()) * c.weight_decay;
            }
            let m = &mut self.m[i];
            let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
            let v = &mut self.v[i];
            let _ = v
                .g_mul_scalar_(c.beta2)
                .g_add_(&(g.square() * (1.0 - c.beta2)));
            let denom = (&*v / bc2).sqrt() + c.eps;
            let update = (&*m / bc1) / denom;
            let mut p = p.shallow_clone();
            if self.decoupled && c.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
            }
            let _ = p.g_sub_(&(update * c.lr).to_kind(p.kind()));
        }
        Ok(())
    }
    fn step_count(&self) -> i64 {
        self.step
    }
    /// Moment buffers by parameter name (`<name>.exp_avg`,
    /// `<name>.exp_avg_sq`) plus the step count.
    fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{name}.exp_avg"), self.m[i].shallow_clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[i].shallow_clone()));
        }
        (self.step, out)
    }
    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (i, (name, _)) in self.params.iter().enumerate() {
            self.m[i].f_copy_(find_state(state, &format!("{name}.exp_avg"))?)?;
            self.v[i].f_copy_(find_state(state, &format!("{name}.exp_avg_sq"))?)?;
        }
        self.step = step;
        Ok(())
    }
}

/// Adam (Kingma & Ba) with L2 weight decay (`g + wd·θ`), as
/// `torch.optim.Adam`; the same as [`AdamW`] when `weight_decay` is 0. State
/// buffers are named as AdamW's.
pub struct Adam(AdamW);

impl Adam {
    /// Creates the optimiser; moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let mut inner = AdamW::new(params, config);
        inner.decoupled = false;
        Self(inner)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.0.config
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &str {
        "adam"
    }
    fn params(&self) -> &[(String, Tensor)] {
        &self.0.params
    }
    fn learning_rate(&self) -> f64 {
        self.0.config.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.0.config.lr = lr;
    }
    fn step(&mut self) -> Result<()> {
        self.0.step()
    }
    fn step_count(&self) -> i64 {
        self.0.step
    }
    fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        self.0.state()
    }
    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        self.0.load_state(step, state)
    }
}

/// SGD hyper-parameters (PyTorch's `torch.optim.SGD` without dampening).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 = plain gradient descent, no state).
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent: `θ ← θ − lr·d` with `d` the gradient (plus
/// `wd·θ`), or with momentum the buffer `b ← μ·b + g` (`b = g` on the first
/// step) and `d = b`, or `g + μ·b` under Nesterov.
pub struct Sgd {
    /// Hyper-parameters; `lr` may be changed between steps by a schedule.
    pub config: SgdConfig,
    params: Vec<(String, Tensor)>,
    momentum: Vec<Option<Tensor>>,
    step: i64,
}

impl Sgd {
    /// Creates the optimiser; momentum buffers start empty.
    pub fn new(params: Vec<(String, Tensor)>, config: SgdConfig) -> Self {
        Self {
            config,
            momentum: params.iter().map(|_| None).collect(),
            params,
            step: 0,
        }
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &str {
        "sgd"
    }
    fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    fn learning_rate(&self) -> f64 {
        self.config.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
    fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        for (i, (name, p)) in self.params.iter().enumerate() {
            let Some(mut d) = finite_grad(name, p, p.kind())? else {
                continue;
            };
            if c.weight_decay != 0.0 {
                d = &d + p * c.weight_decay;
            }
            if c.momentum != 0.0 {
                let buf = match self.momentum[i].take() {
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(c.momentum).g_add_(&d);
                        b
                    }
                    None => d.copy(),
                };
                d = if c.nesterov {
                    &d + &buf * c.momentum
                } else {
                    buf.shallow_clone()
                };
                self.momentum[i] = Some(buf);
            }
            let _ = p.shallow_clone().g_sub_(&(d * c.lr));
        }
        Ok(())
    }
    fn step_count(&self) -> i64 {
        self.step
    }
    /// Momentum buffers by parameter name (`<name>.momentum_buffer`), once
    /// they exist.
    fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        let state = self
            .params
            .iter()
            .zip(&self.momentum)
            .filter_map(|((name, _), b)| {
                b.as_ref()
                    .map(|b| (format!("{name}.momentum_buffer"), b.shallow_clone()))
            })
            .collect();
        (self.step, state)
    }
    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let key = format!("{name}.momentum_buffer");
            self.momentum[i] = match state.iter().find(|(n, _)| *n == key) {
                Some((_, b)) if b.size() == p.size() => {
                    Some(b.to_kind(p.kind()).to_device(p.device()).copy())
                }
                Some((_, b)) => {
                    return Err(ModelError::InvalidInput(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    )))
                }
                None if self.config.momentum != 0.0 && step > 0 => {
                    return Err(ModelError::InvalidInput(format!(
                        "optimizer state lacks `{key}`"
                    )))
                }
                None => None,
            };
        }
        self.step = step;
        Ok(())
    }
}

trait KindExt {
    fn max_with(self, other: Kind) -> Kind;
}

impl KindExt for Kind {
    /// f64 parameters keep f64 moments; everything else uses f32 moments.
    fn max_with(self, other: Kind) -> Kind {
        if other == Kind::Double {
            Kind::Double
        } else {
            self
        }
    }
}
