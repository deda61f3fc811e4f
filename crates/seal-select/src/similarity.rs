//! Anchor-similarity selection: He, Xia and Henderson (COLM 2024, "What is
//! in your safe data? Identifying benign data that breaks safety";
//! reference code <https://github.com/princeton-nlp/benign-data-breaks-safety>).
//!
//! A fine-tuning sample is scored by how much its features resemble those of
//! *harmful anchors* (harmful requests with compliant answers) and how little
//! they resemble those of *safe anchors* (harmful requests with refusals):
//! bi-directional anchoring,
//!
//! ```text
//! harm(z) = mean_a cos(φ(z), φ(a_harmful)) − mean_b cos(φ(z), φ(b_safe))
//! ```
//!
//! He et al. select the samples with the *highest* score to show that they
//! break safety; as a safety-aware selector, [`AnchorSimilarity`] keeps the
//! budget's samples with the *lowest* score. Two feature maps φ:
//!
//! * [`FeatureKind::Gradient`]: the gradient of the loss on the first
//!   `response_tokens` response tokens with respect to the model's trainable
//!   parameters (a fresh LoRA adapter, as LESS-style gradient features),
//!   compressed by a seeded count sketch to `sketch_dims` coordinates (an
//!   unbiased inner-product sketch, so cosines are preserved on average).
//!   He et al. find that the first response tokens carry the signal.
//! * [`FeatureKind::Representation`]: the hidden state of one layer (the last
//!   by default), averaged over the same first response tokens.
//!
//! Anchors must be disjoint from the pool and from the evaluation sets; the
//! caller provides them (e.g. refusals of the safe set as safe anchors, and
//! harmful answers that are not in the pool as harmful anchors).

use crate::error::{Result, SelectError};
use crate::rules::SelectionRule;
use crate::selection::{order_desc, Budget, Selection, SelectionInput};
use seal_data::rng::SplitMix64;
use seal_data::tokenize::TokenizedSample;
use seal_model::{CausalLm, LmBatch};
use tch::{Device, Kind, Tensor};

const RULE: &str = "anchor-similarity";

/// Which features the anchors are compared on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// Sketched gradients of the first response tokens' loss.
    Gradient,
    /// Mean hidden state over the first response tokens.
    Representation,
}

/// How features are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureConfig {
    /// Gradient or representation features.
    pub kind: FeatureKind,
    /// Response tokens looked at (the first ones).
    pub response_tokens: usize,
    /// Width of the gradient sketch.
    pub sketch_dims: usize,
    /// Seed of the sketch's hash.
    pub seed: u64,
    /// Hidden-state layer of representation features (1-based block; `None`:
    /// the last).
    pub layer: Option<usize>,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            kind: FeatureKind::Gradient,
            response_tokens: 8,
            sketch_dims: 8192,
            seed: 0,
            layer: None,
        }
    }
}

/// A sample cut after its first `k` response tokens (at least one).
fn truncated(s: &TokenizedSample, k: usize) -> Result<(Vec<u32>, usize)> {
    if s.response_start == 0 || s.response_start >= s.input_ids.len() {
        return Err(SelectError::input(
            RULE,
            format!("sample `{}` has no response tokens", s.id),
        ));
    }
    let end = (s.response_start + k.max(1)).min(s.input_ids.len());
    Ok((s.input_ids[..end].to_vec(), s.response_start))
}

/// The count sketch of one parameter: a bucket and a sign per coordinate,
/// from a hash of (seed, parameter index, coordinate).
fn sketch_plan(numel: i64, param: usize, dims: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::derive(seed, 0xC0DE_5EED, param as u64);
    let mut idx = Vec::with_capacity(numel as usize);
    let mut sign = Vec::with_capacity(numel as usize);
    for _ in 0..numel {
        let h = rng.next_u64();
        idx.push(((h >> 1) % dims as u64) as i64);
        sign.push(if h & 1 == 0 { 1.0f32 } else { -1.0 });
    }
    (Tensor::from_slice(&idx), Tensor::from_slice(&sign))
}

/// Unit-length features of every sample, in order (f32, on the CPU).
pub fn features(
    model: &dyn CausalLm,
    samples: &[TokenizedSample],
    config: &FeatureConfig,
    pad_id: u32,
) -> Result<Vec<Vec<f32>>> {
    if config.response_tokens == 0 {
        return Err(SelectError::param(
            RULE,
            "response_tokens",
            "0 (must be at least 1)",
        ));
    }
    let raw: Vec<Tensor> = match config.kind {
        FeatureKind::Gradient => gradient_features(model, samples, config, pad_id)?,
        FeatureKind::Representation => representation_features(model, samples, config)?,
    };
    raw.into_iter()
        .zip(samples)
        .map(|(f, s)| {
            let f = f.to_kind(Kind::Float).to_device(Device::Cpu);
            let n = f.norm().double_value(&[]);
            if !n.is_finite() || n == 0.0 {
                return Err(SelectError::input(
                    RULE,
                    format!("sample `{}`: its feature vector has norm {n}", s.id),
                ));
            }
            Ok(Vec::<f32>::try_from(f / n)?)
        })
        .collect()
}

fn gradient_features(
    model: &dyn CausalLm,
    samples: &[TokenizedSample],
    config: &FeatureConfig,
    pad_id: u32,
) -> Result<Vec<Tensor>> {
    if config.sketch_dims == 0 {
        return Err(SelectError::param(
            RULE,
            "sketch_dims",
            "0 (must be at least 1)",
        ));
    }
    let params: Vec<Tensor> = model
        .trainable_parameters()
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| t.requires_grad())
        .collect();
    if params.is_empty() {
        return Err(SelectError::input(
            RULE,
            "gradient features need trainable parameters (attach a LoRA adapter)",
        ));
    }
    let plans: Vec<(Tensor, Tensor)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| sketch_plan(p.numel() as i64, i, config.sketch_dims, config.seed))
        .collect();
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let (row, start) = truncated(s, config.response_tokens)?;
        let batch = LmBatch::from_rows(&[row], &[start], pad_id)?.to_device(model.device());
        let loss = model.per_sample_nll(&batch)?.sum(Kind::Float);
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        let mut sketch = Tensor::zeros([config.sketch_dims as i64], (Kind::Float, Device::Cpu));
        for (g, (idx, sign)) in grads.iter().zip(&plans) {
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float).to_device(Device::Cpu).reshape([-1]);
            sketch = sketch.index_add(0, idx, &(g * sign));
        }
        out.push(sketch);
    }
    Ok(out)
}

fn representation_features(
    model: &dyn CausalLm,
    samples: &[TokenizedSample],
    config: &FeatureConfig,
) -> Result<Vec<Tensor>> {
    let layer = config.layer.unwrap_or(model.num_layers());
    if layer > model.num_layers() {
        return Err(SelectError::param(
            RULE,
            "layer",
            format!("{layer} (the model has {} blocks)", model.num_layers()),
        ));
    }
    let _g = tch::no_grad_guard();
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let (row, start) = truncated(s, config.response_tokens)?;
        let ids = Tensor::from_slice(&row.iter().map(|&t| t as i64).collect::<Vec<_>>())
            .view([1, -1])
            .to_device(model.device());
        let h = model
            .hidden_states(&ids, None, &[layer])?
            .into_iter()
            .next()
            .ok_or_else(|| SelectError::input(RULE, "the model returned no hidden state"))?;
        let len = row.len() as i64 - start as i64;
        out.push(
            h.narrow(1, start as i64, len)
                .mean_dim([1].as_slice(), false, Kind::Float),
        );
    }
    Ok(out.into_iter().map(|t| t.reshape([-1])).collect())
}

fn mean_cosine(f: &[f32], anchors: &[Vec<f32>]) -> f64 {
    let total: f64 = anchors
        .iter()
        .map(|a| {
            f.iter()
                .zip(a)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum::<f64>()
        })
        .sum();
    total / anchors.len() as f64
}

/// Bi-directional anchor scores `mean cos(·, harmful) − mean cos(·, safe)`
/// of unit-length features (higher: more like the harmful anchors).
pub fn anchor_scores(
    pool: &[Vec<f32>],
    harmful_anchors: &[Vec<f32>],
    safe_anchors: &[Vec<f32>],
) -> Result<Vec<f64>> {
    if harmful_anchors.is_empty() || safe_anchors.is_empty() {
        return Err(SelectError::input(
            RULE,
            format!(
                "needs harmful and safe anchors ({} harmful, {} safe given)",
                harmful_anchors.len(),
                safe_anchors.len()
            ),
        ));
    }
    let dim = harmful_anchors[0].len();
    if let Some(bad) = pool
        .iter()
        .chain(harmful_anchors)
        .chain(safe_anchors)
        .find(|f| f.len() != dim)
    {
        return Err(SelectError::input(
            RULE,
            format!("features of width {} and {dim} mixed", bad.len()),
        ));
    }
    Ok(pool
        .iter()
        .map(|f| mean_cosine(f, harmful_anchors) - mean_cosine(f, safe_anchors))
        .collect())
}

/// The safety-aware anchor rule: keep the budget's samples with the lowest
/// [`anchor_scores`]. The recorded score is `−harm` (higher = keep); ties
/// towards the lower position.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorSimilarity {
    /// One harm score per input sample; `+∞` ranks last.
    pub harm: Vec<f64>,
    /// How many to keep.
    pub budget: Budget,
    /// Name in outputs (`grad-sim` or `rep-sim`).
    pub name: String,
}

impl SelectionRule for AnchorSimilarity {
    fn name(&self) -> &str {
        &self.name
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let k = self.budget.resolve(self.name(), input.len())?;
        if self.harm.len() != input.len() {
            return Err(SelectError::input(
                self.name(),
                format!("{} scores for {} samples", self.harm.len(), input.len()),
            ));
        }
        // +∞ ranks last (a sample that could not be scored); NaN and −∞
        // would be silent mis-selections.
        if let Some(i) = self
            .harm
            .iter()
            .position(|x| x.is_nan() || *x == f64::NEG_INFINITY)
        {
            return Err(SelectError::input(
                self.name(),
                format!(
                    "the score of sample `{}` is {}",
                    input.ids()[i],
                    self.harm[i]
                ),
            ));
        }
        let scores: Vec<f64> = self.harm.iter().map(|x| -x).collect();
        let order = order_desc(&scores);
        Selection::from_order(self.name(), scores, &order, k)
    }
}
