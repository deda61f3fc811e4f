//! A weighted ridge-regression lower level with a closed-form solution: the
//! problem on which the solvers are checked against exact answers.
//!
//! Fine-tuning samples `(x_i, y_i)`, safe (validation) samples `(x_j, y_j)`:
//!
//! ```text
//! ℓ_i(θ) = (x_iᵀθ − y_i)² + ρ‖θ‖²          (fine-tuning, weighted by w_i)
//! ℓ_j(θ) = (x_jᵀθ − y_j)²                   (safe / upper level)
//! θ*(w)  = (XᵀWX + ρ·Σw·I)⁻¹ XᵀWy
//! ```
//!
//! [`RidgeProblem::analytic_hypergradient`] differentiates
//! `F(ω) = mean_j ℓ_j(θ*(w(ω)))` by hand (implicit differentiation of the
//! normal equations), independently of autograd, for SEAL's bilevel
//! formulation (Shen et al., ICLR 2025; <https://github.com/hanshen95/SEAL>).

use crate::error::{BilevelError, Result};
use crate::problem::LowerLevel;
use crate::ranker::{Activation, Ranker};
use tch::{Kind, Tensor};

/// Weighted ridge regression (f64 on the CPU by default).
pub struct RidgeProblem {
    /// Fine-tuning inputs `[n, d]`.
    pub x: Tensor,
    /// Fine-tuning targets `[n]`.
    pub y: Tensor,
    /// Safe inputs `[m, d]`.
    pub x_safe: Tensor,
    /// Safe targets `[m]`.
    pub y_safe: Tensor,
    /// Ridge coefficient ρ.
    pub rho: f64,
    /// The trainable weights `θ`, `[d]`.
    pub theta: Tensor,
}

impl RidgeProblem {
    /// A problem from data; `θ` starts at zero.
    pub fn new(x: Tensor, y: Tensor, x_safe: Tensor, y_safe: Tensor, rho: f64) -> Result<Self> {
        let d = *x.size().last().unwrap_or(&0);
        if x.dim() != 2 || x_safe.dim() != 2 || x_safe.size()[1] != d || y.size() != [x.size()[0]] {
            return Err(BilevelError::invalid(
                "ridge data",
                format!(
                    "x {:?}, y {:?}, x_safe {:?}, y_safe {:?}",
                    x.size(),
                    y.size(),
                    x_safe.size(),
                    y_safe.size()
                ),
            ));
        }
        let theta = Tensor::zeros([d], (x.kind(), x.device())).set_requires_grad(true);
        Ok(Self {
            x,
            y,
            x_safe,
            y_safe,
            rho,
            theta,
        })
    }

    /// A random problem: `n` fine-tuning and `m` safe samples in `d`
    /// dimensions from one true `θ` with noise `noise`; the fine-tuning
    /// samples at `corrupted` get flipped targets pushed further out,
    /// `−y − 3·sign(y)`.
    pub fn synthetic(
        n: usize,
        m: usize,
        d: usize,
        noise: f64,
        corrupted: &[usize],
        seed: u64,
    ) -> Result<Self> {
        // A private generator: libtorch's global one is shared by threads.
        let mut rng = seal_data::rng::SplitMix64::new(seed);
        let mut normal = |count: usize| -> Tensor {
            let v: Vec<f64> = (0..count)
                .map(|_| {
                    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    let u2 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                })
                .collect();
            Tensor::from_slice(&v)
        };
        let (ni, mi, di) = (n as i64, m as i64, d as i64);
        let truth = normal(d);
        let x = normal(n * d).view([ni, di]);
        let x_safe = normal(m * d).view([mi, di]);
        let mut y = x.mv(&truth) + normal(n) * noise;
        let y_safe = x_safe.mv(&truth) + normal(m) * noise;
        if !corrupted.is_empty() {
            if let Some(&bad) = corrupted.iter().find(|&&i| i >= n) {
                return Err(BilevelError::invalid(
                    "corrupted",
                    format!("index {bad} of {n} samples"),
                ));
            }
            let idx = Tensor::from_slice(&corrupted.iter().map(|&i| i as i64).collect::<Vec<_>>());
            // Flip the target and push it further out: every corrupted
            // target is far off, and all pull θ the same (wrong) way.
            let clean_y = y.index_select(0, &idx);
            let bad = -&clean_y - clean_y.sign() * 3.0;
            y = y.index_copy(0, &idx, &bad);
        }
        Self::new(x, y, x_safe, y_safe, 1e-3)
    }

    fn rows(t: &Tensor, rows: &[usize]) -> Tensor {
        let idx = Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(t.device());
        t.index_select(0, &idx)
    }

    /// `θ*(w)` for sample weights `w` `[n]` (solves the normal equations).
    pub fn closed_form(&self, w: &Tensor) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let d = self.x.size()[1];
        let xw = &self.x * w.unsqueeze(1);
        let a = xw.transpose(0, 1).mm(&self.x)
            + Tensor::eye(d, (self.x.kind(), self.x.device())) * (w.sum(w.kind()) * self.rho);
        let b = xw.transpose(0, 1).mv(&self.y);
        Ok(Tensor::f_linalg_solve(&a, &b, true)?)
    }

    /// Sets `θ` (no gradient tracking of the copy).
    pub fn set_theta(&self, value: &Tensor) -> Result<()> {
        let _g = tch::no_grad_guard();
        self.theta.shallow_clone().f_copy_(value)?;
        Ok(())
    }

    /// The exact `∂F/∂ω` of `F(ω) = mean_j ℓ_j(θ*(w(ω)))` for a ranker
    /// over the fine-tuning samples, computed by hand.
    pub fn analytic_hypergradient(&self, ranker: &Ranker) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let logits = ranker.logits().detach();
        let w = ranker.activation().apply(&logits);
        let theta = self.closed_form(&w)?;
        let d = self.x.size()[1];
        let m = self.x_safe.size()[0] as f64;
        let xw = &self.x * w.unsqueeze(1);
        let a = xw.transpose(0, 1).mm(&self.x)
            + Tensor::eye(d, (self.x.kind(), self.x.device())) * (w.sum(w.kind()) * self.rho);
        // u = ∇_θ F, z = A⁻¹ u (A is symmetric).
        let u = self
            .x_safe
            .transpose(0, 1)
            .mv(&(self.x_safe.mv(&theta) - &self.y_safe))
            * (2.0 / m);
        let z = Tensor::f_linalg_solve(&a, &u, true)?;
        // dθ*/dw_i = A⁻¹ (x_i (y_i − x_iᵀθ*) − ρθ*)  ⇒  dF/dw_i = zᵀ(...)
        let resid = &self.y - self.x.mv(&theta);
        let df_dw = self.x.mv(&z) * resid - z.dot(&theta) * self.rho;
        Ok(match ranker.activation() {
            Activation::Softmax => {
                let n = logits.size()[0] as f64;
                let p = &w / n;
                &w * &df_dw - &p * (&w * &df_dw).sum(Kind::Double)
            }
            Activation::Sigmoid => {
                let s = logits.sigmoid();
                df_dw * (&s * (-&s + 1.0) * 2.0)
            }
        })
    }
}

impl LowerLevel for RidgeProblem {
    fn num_finetune(&self) -> usize {
        self.x.size()[0] as usize
    }

    fn num_safe(&self) -> usize {
        self.x_safe.size()[0] as usize
    }

    fn finetune_losses(&self, rows: &[usize]) -> Result<Tensor> {
        let r = Self::rows(&self.x, rows).mv(&self.theta) - Self::rows(&self.y, rows);
        Ok(r.square() + self.theta.square().sum(self.theta.kind()) * self.rho)
    }

    fn safe_losses(&self, rows: &[usize]) -> Result<Tensor> {
        let r = Self::rows(&self.x_safe, rows).mv(&self.theta) - Self::rows(&self.y_safe, rows);
        Ok(r.square())
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![("theta".into(), self.theta.shallow_clone())]
    }

    fn fork(&self, _seed: i64) -> Result<Self> {
        let theta = self.theta.detach().copy().set_requires_grad(true);
        Ok(Self {
            x: self.x.shallow_clone(),
            y: self.y.shallow_clone(),
            x_safe: self.x_safe.shallow_clone(),
            y_safe: self.y_safe.shallow_clone(),
            rho: self.rho,
            theta,
        })
    }
}
