//! The feature maps of anchor-similarity selection (see
//! [`crate::similarity`]): sketched LoRA gradients or hidden states of the
//! first response tokens. Needs libtorch (the `torch` feature).

use crate::error::{Result, SelectError};
use crate::similarity::RULE;
use seal_data::rng::SplitMix64;
use seal_data::tokenize::TokenizedSample;
use seal_model::{CausalLm, LmBatch};
use tch::{Device, Kind, Tensor};

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
