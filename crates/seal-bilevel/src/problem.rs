//! The lower-level problem the solvers work on.
//!
//! SEAL (Shen et al., ICLR 2025, Eq. 1; reference code
//! <https://github.com/hanshen95/SEAL>) is the bilevel problem
//!
//! ```text
//! min_ω  f(θ*(ω)) = mean_j ℓ(θ*(ω); z_j^safe)
//! s.t.   θ*(ω) ∈ argmin_θ g(θ, ω) = mean_i w_i(ω) · ℓ(θ; z_i)
//! ```
//!
//! over a fine-tuning set `{z_i}` (the ranker's samples) and a safe set
//! `{z_j^safe}`. Solvers only need per-sample losses on both sets, the
//! trainable parameters and an auxiliary copy, so they are written against
//! [`LowerLevel`], which a language model ([`crate::lm::LmProblem`]) and a
//! closed-form ridge regression ([`crate::ridge::RidgeProblem`]) implement.

use crate::error::Result;
use tch::Tensor;

/// A model `θ` with per-sample losses on a fine-tuning set and a safe set.
pub trait LowerLevel {
    /// Number of fine-tuning samples (the ranker's size).
    fn num_finetune(&self) -> usize;
    /// Number of safe (upper-level) samples.
    fn num_safe(&self) -> usize;
    /// Lengths of the fine-tuning samples, for length-bucketed batching
    /// (all 1 when lengths do not matter).
    fn finetune_lengths(&self) -> Vec<usize> {
        vec![1; self.num_finetune()]
    }
    /// Lengths of the safe samples.
    fn safe_lengths(&self) -> Vec<usize> {
        vec![1; self.num_safe()]
    }
    /// Per-sample losses `ℓ(θ; z_i)`, `[B]`, of the fine-tuning samples at
    /// `rows`, differentiable with respect to [`LowerLevel::parameters`].
    fn finetune_losses(&self, rows: &[usize]) -> Result<Tensor>;
    /// Per-sample losses of the safe samples at `rows`, `[B]`.
    fn safe_losses(&self, rows: &[usize]) -> Result<Tensor>;
    /// The trainable parameters `θ`, by name (shared storage).
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// An auxiliary copy `θ̂` over the same data for the full penalty method
    /// (for LMs: a second LoRA over the same frozen base), seeded by `seed`.
    fn fork(&self, seed: i64) -> Result<Self>
    where
        Self: Sized;
    /// Tokens processed by a step on these rows (for throughput reports);
    /// defaults to the number of rows.
    fn tokens(&self, finetune_rows: &[usize], safe_rows: &[usize]) -> usize {
        finetune_rows.len() + safe_rows.len()
    }
}

/// `∂ output / ∂ inputs` (zeros for inputs the output does not depend on).
/// `keep_graph` keeps the graph of `output` for another backward pass; with
/// `create_graph` the gradients are themselves differentiable (double
/// backward, e.g. for Hessian-vector products).
pub fn grad(
    output: &Tensor,
    inputs: &[Tensor],
    keep_graph: bool,
    create_graph: bool,
) -> Result<Vec<Tensor>> {
    let grads =
        Tensor::f_run_backward(&[output], inputs, keep_graph || create_graph, create_graph)?;
    Ok(grads
        .into_iter()
        .zip(inputs)
        .map(|(g, x)| if g.defined() { g } else { x.zeros_like() })
        .collect())
}

/// `Σ_k ⟨a_k, b_k⟩` over parameter lists.
pub fn dot(a: &[Tensor], b: &[Tensor]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (x, y) in a.iter().zip(b) {
        let d = (x * y).f_sum(x.kind())?;
        acc = Some(match acc {
            Some(s) => s + d,
            None => d,
        });
    }
    acc.ok_or_else(|| crate::error::BilevelError::invalid("parameters", "empty parameter list"))
}
