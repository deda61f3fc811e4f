//! The data ranker: one trainable logit per fine-tuning sample.
//!
//! As in the official SEAL code (Shen et al., ICLR 2025;
//! <https://github.com/hanshen95/SEAL>, `seal/models/actor.py`,
//! `TrainableTensorModule`), a sample's weight is an activation of its logit:
//!
//! * [`Activation::Softmax`]: `w = N · softmax(ω)`; logits start at 0.1, so
//!   every weight starts at 1 and the weights always sum to `N`;
//! * [`Activation::Sigmoid`]: `w = 2 · sigmoid(ω)`; logits start at −1e-4.
//!
//! The ranker is trained with Adam, betas (0.9, 0.95), lr 5e-3, no weight
//! decay ([`RankerConfig::default`], the official script's settings). Logits
//! are keyed by the samples' stable ids and saved as `ranker.safetensors`
//! (tensor `logits`) plus `ranker.json` ([`RankerMeta`]).

use crate::error::{BilevelError, Result};
use seal_model::optim::{Adam, AdamWConfig, Optimizer, Sgd, SgdConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// File name of the ranker's logits.
pub const RANKER_TENSORS: &str = "ranker.safetensors";
/// File name of the ranker's metadata.
pub const RANKER_META: &str = "ranker.json";
/// Version of the ranker file format.
pub const RANKER_FORMAT_VERSION: u32 = 1;

/// How logits become sample weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Activation {
    /// `N · softmax(ω)` (the official default).
    #[default]
    Softmax,
    /// `2 · sigmoid(ω)`.
    Sigmoid,
}

impl Activation {
    /// The logit every sample starts from (weight 1, or ~1 for sigmoid).
    pub fn initial_logit(self) -> f64 {
        match self {
            Activation::Softmax => 0.1,
            Activation::Sigmoid => -1e-4,
        }
    }

    /// Weights of all samples from all logits (differentiable).
    pub fn apply(self, logits: &Tensor) -> Tensor {
        match self {
            Activation::Softmax => {
                let n = logits.size().first().copied().unwrap_or(0) as f64;
                logits.softmax(0, logits.kind()) * n
            }
            Activation::Sigmoid => logits.sigmoid() * 2.0,
        }
    }

    /// The lowercase name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Softmax => "softmax",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = BilevelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "softmax" => Ok(Self::Softmax),
            "sigmoid" => Ok(Self::Sigmoid),
            other => Err(BilevelError::invalid(
                "activation",
                format!("`{other}` (expected softmax or sigmoid)"),
            )),
        }
    }
}

/// The ranker's update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RankerOptimizerKind {
    /// Adam, as the official trainer (the default).
    #[default]
    Adam,
    /// Plain gradient descent `ω ← ω − lr·∇`. Adam's per-coordinate
    /// normalisation makes a logit's step almost independent of the size of
    /// its gradient when each sample is seen once or twice; with few passes
    /// over small data, plain gradient steps rank by loss directly
    /// (see `docs/bilevel.md`).
    Sgd,
}

impl RankerOptimizerKind {
    /// The name [`FromStr`](std::str::FromStr) reads (`adam`, `sgd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adam => "adam",
            Self::Sgd => "sgd",
        }
    }
}

impl std::str::FromStr for RankerOptimizerKind {
    type Err = BilevelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "adam" => Ok(Self::Adam),
            "sgd" => Ok(Self::Sgd),
            other => Err(BilevelError::invalid(
                "ranker optimizer",
                format!("`{other}` (expected adam or sgd)"),
            )),
        }
    }
}

/// Ranker hyper-parameters.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RankerConfig {
    /// Logit activation.
    pub activation: Activation,
    /// Update rule.
    pub optimizer: RankerOptimizerKind,
    /// Learning rate (5e-3, as official).
    pub lr: f64,
    /// Adam's first-moment decay (0.9).
    pub beta1: f64,
    /// Adam's second-moment decay (0.95).
    pub beta2: f64,
    /// Adam's epsilon (1e-8).
    pub eps: f64,
    /// Gradient-norm clipping of the ranker's gradient (official: the same
    /// DeepSpeed `max_norm` as the model, 1.0); `None` disables it.
    pub max_grad_norm: Option<f64>,
}

impl Default for RankerConfig {
    fn default() -> Self {
        Self {
            activation: Activation::Softmax,
            optimizer: RankerOptimizerKind::Adam,
            lr: 5e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
        }
    }
}

/// `ranker.json`: what the logits are about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerMeta {
    /// [`RANKER_FORMAT_VERSION`].
    pub format_version: u32,
    /// The activation.
    pub activation: Activation,
    /// Optimiser steps taken.
    pub step: u64,
    /// Fingerprint of the fine-tuning data the logits belong to
    /// ([`fingerprint_ids`] or a tokenised-data fingerprint).
    pub fingerprint: String,
    /// Where the logits come from (e.g. an imported `.pt` file), if not trained here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Sample ids, in logit order.
    pub ids: Vec<String>,
}

/// A trainable logit per sample.
pub struct Ranker {
    logits: Tensor,
    ids: Vec<String>,
    fingerprint: String,
    activation: Activation,
    /// Optimiser steps taken so far.
    pub step: u64,
    /// Provenance of imported logits.
    pub source: Option<String>,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("len", &self.ids.len())
            .field("activation", &self.activation)
            .field("step", &self.step)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

pub use seal_data::ranking::fingerprint_ids;

impl Ranker {
    /// A fresh ranker: every logit at the activation's initial value, in
    /// `kind` (`Float`, or `Double` for exact tests) on `device`.
    pub fn new(
        ids: Vec<String>,
        fingerprint: String,
        activation: Activation,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        if ids.is_empty() {
            return Err(BilevelError::invalid("ranker", "no samples"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(BilevelError::invalid(
                "ranker",
                format!("duplicate sample id `{dup}`"),
            ));
        }
        let logits = Tensor::full(
            [ids.len() as i64],
            activation.initial_logit(),
            (kind, device),
        )
        .set_requires_grad(true);
        Ok(Self {
            logits,
            ids,
            fingerprint,
            activation,
            step: 0,
            source: None,
        })
    }

    /// A ranker with given logits (e.g. imported ones).
    pub fn from_logits(
        ids: Vec<String>,
        fingerprint: String,
        activation: Activation,
        logits: &Tensor,
    ) -> Result<Self> {
        let mut r = Self::new(ids, fingerprint, activation, logits.kind(), logits.device())?;
        if logits.size() != [r.ids.len() as i64] {
            return Err(BilevelError::invalid(
                "ranker logits",
                format!("shape {:?} for {} sample ids", logits.size(), r.ids.len()),
            ));
        }
        r.logits = logits.detach().copy().set_requires_grad(true);
        Ok(r)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the ranker has no samples (never true for a constructed ranker).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Sample ids, in logit order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The data fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The trainable logits `[N]` (shared storage).
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The logits as an optimiser's parameter list (one tensor, `logits`).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![("logits".to_string(), self.logits.shallow_clone())]
    }

    /// All weights `[N]`, differentiable with respect to the logits.
    pub fn weights(&self) -> Tensor {
        self.activation.apply(&self.logits)
    }

    /// Logits as `f64`s.
    pub fn logits_vec(&self) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(
            self.logits
                .detach()
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?)
    }

    /// Weights as `f64`s.
    pub fn weights_vec(&self) -> Result<Vec<f64>> {
        let _g = tch::no_grad_guard();
        Ok(Vec::<f64>::try_from(
            self.weights().to_kind(Kind::Double).to_device(Device::Cpu),
        )?)
    }

    /// The metadata written to `ranker.json`.
    pub fn meta(&self) -> RankerMeta {
        RankerMeta {
            format_version: RANKER_FORMAT_VERSION,
            activation: self.activation,
            step: self.step,
            fingerprint: self.fingerprint.clone(),
            source: self.source.clone(),
            ids: self.ids.clone(),
        }
    }

    /// Writes `ranker.safetensors` and `ranker.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| BilevelError::io(dir, e))?;
        // No safetensors metadata: its map is serialised in hash order, and
        // equal rankers must give equal bytes. Everything else is in the JSON.
        let tensors_path = dir.join(RANKER_TENSORS);
        let tensors = seal_model::weights::safetensors_bytes(
            &tensors_path,
            &[("logits".to_string(), self.logits.detach())],
            None,
        )?;
        let meta_path = dir.join(RANKER_META);
        let meta = serde_json::to_vec_pretty(&self.meta())
            .map_err(|e| BilevelError::format(&meta_path, e.to_string()))?;
        // Both files or neither: a full disk never leaves one without the other.
        seal_data::fsutil::write_files_atomic(&[(&tensors_path, &tensors), (&meta_path, &meta)])?;
        Ok(())
    }

    /// Loads what [`Ranker::save`] wrote (logits in their stored dtype, on the CPU).
    pub fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(RANKER_META);
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| BilevelError::io(&meta_path, e))?;
        let meta: RankerMeta = serde_json::from_str(&text)
            .map_err(|e| BilevelError::format(&meta_path, e.to_string()))?;
        if meta.format_version != RANKER_FORMAT_VERSION {
            return Err(BilevelError::format(
                &meta_path,
                format!(
                    "field `format_version`: {} (this build reads {RANKER_FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        let tpath = dir.join(RANKER_TENSORS);
        let files = seal_model::weights::WeightFiles::open_file(&tpath)?;
        let logits = files.load_raw("logits")?;
        if logits.size() != [meta.ids.len() as i64] {
            return Err(BilevelError::Mismatch {
                path: tpath,
                message: format!(
                    "tensor `logits` has shape {:?} but {} lists {} sample ids",
                    logits.size(),
                    meta_path.display(),
                    meta.ids.len()
                ),
            });
        }
        let mut r = Self::from_logits(meta.ids, meta.fingerprint, meta.activation, &logits)?;
        r.step = meta.step;
        r.source = meta.source;
        Ok(r)
    }

    /// Moves the logits to `kind` / `device` (keeps them trainable).
    pub fn to(&mut self, kind: Kind, device: Device) {
        self.logits = self
            .logits
            .detach()
            .to_kind(kind)
            .to_device(device)
            .set_requires_grad(true);
    }
}

/// The ranker's optimiser (Adam or plain gradient descent) with clipping:
/// an [`Optimizer`] over the logits chosen by [`RankerConfig::optimizer`].
pub struct RankerOptimizer {
    config: RankerConfig,
    inner: Box<dyn Optimizer>,
}

impl RankerOptimizer {
    /// An optimiser over `ranker`'s logits.
    pub fn new(ranker: &Ranker, config: RankerConfig) -> Self {
        let params = ranker.parameters();
        let inner: Box<dyn Optimizer> = match config.optimizer {
            RankerOptimizerKind::Adam => Box::new(Adam::new(
                params,
                AdamWConfig {
                    lr: config.lr,
                    beta1: config.beta1,
                    beta2: config.beta2,
                    eps: config.eps,
                    weight_decay: 0.0,
                },
            )),
            RankerOptimizerKind::Sgd => Box::new(Sgd::new(
                params,
                SgdConfig {
                    lr: config.lr,
                    ..SgdConfig::default()
                },
            )),
        };
        Self { config, inner }
    }

    /// An optimiser of the caller's choice over `ranker`'s logits (built over
    /// [`Ranker::parameters`]); `config` keeps the clipping and schedule
    /// settings, its `optimizer`, betas and eps are not used.
    pub fn with_optimizer(
        ranker: &Ranker,
        config: RankerConfig,
        inner: Box<dyn Optimizer>,
    ) -> Result<Self> {
        let ok = matches!(inner.params(), [(name, t)] if name == "logits" && t.size() == ranker.logits.size());
        if !ok {
            return Err(BilevelError::invalid(
                "ranker optimizer",
                "must be built over Ranker::parameters() (one tensor named `logits`)",
            ));
        }
        Ok(Self { config, inner })
    }

    /// The configuration.
    pub fn config(&self) -> &RankerConfig {
        &self.config
    }

    /// The update rule.
    pub fn optimizer(&self) -> &dyn Optimizer {
        self.inner.as_ref()
    }

    /// Sets the learning rate (schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
        self.inner.set_learning_rate(lr);
    }

    /// Drops the logits' gradient.
    pub fn zero_grad(&mut self) {
        self.inner.zero_grad();
    }

    /// Clips (if configured) and applies the accumulated gradient; returns the
    /// gradient norm before clipping. A non-finite gradient is an error and
    /// leaves the logits untouched.
    pub fn step(&mut self) -> Result<f64> {
        let norm = self.inner.grad_norm();
        if !norm.is_finite() {
            return Err(BilevelError::invalid(
                "ranker gradient",
                format!("norm is {norm}"),
            ));
        }
        if let Some(max) = self.config.max_grad_norm {
            self.inner.clip_grad_norm(max);
        }
        self.inner.step()?;
        Ok(norm)
    }

    /// Steps taken and state buffers, for checkpoints.
    pub fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        self.inner.state()
    }

    /// Restores [`RankerOptimizer::state`].
    pub fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> Result<()> {
        Ok(self.inner.load_state(step, state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn initial_weights_are_one() {
        for act in [Activation::Softmax, Activation::Sigmoid] {
            let r = Ranker::new(ids(7), "f".into(), act, Kind::Float, Device::Cpu).unwrap();
            for w in r.weights_vec().unwrap() {
                assert!((w - 1.0).abs() < 1e-3, "{act:?}: {w}");
            }
        }
    }

    #[test]
    fn rejects_duplicate_ids() {
        let e = Ranker::new(
            vec!["a".into(), "a".into()],
            "f".into(),
            Activation::Softmax,
            Kind::Float,
            Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`a`"));
    }

    #[test]
    fn save_load_roundtrip_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
        let mut r =
            Ranker::from_logits(ids(3), fingerprint_ids(&ids(3)), Activation::Sigmoid, &t).unwrap();
        r.step = 9;
        r.save(dir.path()).unwrap();
        let back = Ranker::load(dir.path()).unwrap();
        assert_eq!(back.ids(), r.ids());
        assert_eq!(back.step, 9);
        assert_eq!(back.activation(), Activation::Sigmoid);
        assert_eq!(back.logits_vec().unwrap(), vec![0.5, -1.0, 2.0]);
        // A ranker.json listing other ids is caught and names the tensor.
        let mut meta = back.meta();
        meta.ids.push("extra".into());
        seal_model::weights::write_json_atomic(&dir.path().join(RANKER_META), &meta).unwrap();
        let e = Ranker::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("logits") && e.contains("4 sample ids"), "{e}");
    }

    #[test]
    fn adam_and_sgd_descend() {
        for kind in [RankerOptimizerKind::Adam, RankerOptimizerKind::Sgd] {
            let r = Ranker::new(
                ids(4),
                "f".into(),
                Activation::Sigmoid,
                Kind::Float,
                Device::Cpu,
            )
            .unwrap();
            let cfg = RankerConfig {
                optimizer: kind,
                lr: 0.1,
                ..Default::default()
            };
            let mut opt = RankerOptimizer::new(&r, cfg);
            opt.zero_grad();
            // Minimise w_0 only: logit 0 must go down, the others stay.
            let loss = r.weights().get(0);
            loss.backward();
            opt.step().unwrap();
            let l = r.logits_vec().unwrap();
            assert!(l[0] < -1e-3, "{kind:?}: {l:?}");
            assert!(
                l[1..].iter().all(|&x| (x + 1e-4).abs() < 1e-7),
                "{kind:?}: {l:?}"
            );
        }
    }
}
