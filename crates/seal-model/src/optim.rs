//! AdamW over named tensors, with state that can be saved and restored.
//!
//! tch's `nn::Optimizer` hides its moment buffers, which rules out exact
//! checkpoint/resume; this optimiser keeps them as plain tensors.

use crate::error::{ModelError, Result};
use tch::{Kind, Tensor};

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
}

impl AdamW {
    /// Creates the optimiser; moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like().to_kind(Kind::Float.max_with(p.kind())))
            .collect();
        let v = params
            .iter()
            .map(|(_, p)| p.zeros_like().to_kind(Kind::Float.max_with(p.kind())))
            .collect();
        Self {
            config,
            params,
            m,
            v,
            step: 0,
        }
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Sets every gradient to zero (drops them).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for (_, p) in &self.params {
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
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm > max_norm && norm > 0.0 {
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// One AdamW update from the accumulated `.grad()`s. Parameters without a
    /// gradient are left untouched.
    pub fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (name, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(self.m[i].kind());
            if g.isfinite().all().int64_value(&[]) == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "non-finite gradient in `{name}`"
                )));
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
            if c.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
            }
            let _ = p.g_sub_(&(update * c.lr).to_kind(p.kind()));
        }
        Ok(())
    }

    /// Moment buffers by parameter name (`<name>.exp_avg`, `<name>.exp_avg_sq`)
    /// plus the step count, for checkpoints.
    pub fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{name}.exp_avg"), self.m[i].shallow_clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[i].shallow_clone()));
        }
        (self.step, out)
    }

    /// Restores what [`AdamW::state`] returned.
    pub fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let find = |key: &str| {
            state
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| ModelError::InvalidInput(format!("optimizer state lacks `{key}`")))
        };
        for (i, (name, _)) in self.params.iter().enumerate() {
            self.m[i].f_copy_(find(&format!("{name}.exp_avg"))?)?;
            self.v[i].f_copy_(find(&format!("{name}.exp_avg_sq"))?)?;
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
