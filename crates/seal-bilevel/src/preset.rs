//! Ranking presets: the official SEAL run's settings, and the small-scale
//! default that gives a useful ranking in the few hundred steps a CPU run
//! affords. `docs/bilevel.md` ("Presets") lists every difference and why.
//!
//! The official settings are those of the reference implementation
//! (<https://github.com/hanshen95/SEAL>, `seal/trainer/sft_selector_trainer.py`
//! and the Llama-3 script): selector Adam with betas (0.9, 0.95), lr 5e-3 and
//! gradient clipping 10; LoRA r 16, α 16 on q and v; model lr 1e-5; λ from
//! 1.0 down 0.03 per epoch; 3 epochs; an epoch ends with the shorter of the
//! zipped task and safe loaders; no length bucketing; top-p 0.8.

use crate::error::{BilevelError, Result};
use crate::ranker::RankerOptimizerKind;
use crate::train::EpochLength;
use serde::{Deserialize, Serialize};

/// A named set of ranking settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RankPreset {
    /// A useful ranking in one epoch of a few hundred samples: plain
    /// gradient steps on the ranker (Adam's per-logit normalisation makes a
    /// sample seen once move by the same amount whatever its loss), no
    /// length bucketing (a sample's position must not depend on its length).
    #[default]
    Small,
    /// The official run's settings, for large pools and GPU runs.
    Official,
}

impl std::str::FromStr for RankPreset {
    type Err = BilevelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small" => Ok(Self::Small),
            "official" => Ok(Self::Official),
            other => Err(BilevelError::invalid(
                "preset",
                format!("`{other}`: expected small or official"),
            )),
        }
    }
}

impl RankPreset {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Official => "official",
        }
    }

    /// The preset's settings.
    pub fn settings(self) -> RankSettings {
        match self {
            Self::Small => RankSettings {
                epochs: 1,
                model_lr: 1e-4,
                lora_r: 16,
                lora_alpha: 32.0,
                ranker_optimizer: RankerOptimizerKind::Sgd,
                ranker_lr: 1.0,
                ranker_betas: (0.9, 0.95),
                ranker_max_grad_norm: Some(1.0),
                lambda: 1.0,
                lambda_decay: 0.03,
                bucket: 0,
                epoch_length: EpochLength::Task,
                top_p: 0.8,
            },
            Self::Official => RankSettings {
                epochs: 3,
                model_lr: 1e-5,
                lora_r: 16,
                lora_alpha: 16.0,
                ranker_optimizer: RankerOptimizerKind::Adam,
                ranker_lr: 5e-3,
                ranker_betas: (0.9, 0.95),
                ranker_max_grad_norm: Some(10.0),
                lambda: 1.0,
                lambda_decay: 0.03,
                bucket: 0,
                epoch_length: EpochLength::Shorter,
                top_p: 0.8,
            },
        }
    }
}

/// The settings a preset fixes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankSettings {
    /// Passes (epochs) over the data.
    pub epochs: usize,
    /// Model (LoRA) learning rate.
    pub model_lr: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// Ranker optimiser.
    pub ranker_optimizer: RankerOptimizerKind,
    /// Ranker learning rate.
    pub ranker_lr: f64,
    /// Ranker Adam betas.
    pub ranker_betas: (f64, f64),
    /// Ranker gradient clipping.
    pub ranker_max_grad_norm: Option<f64>,
    /// λ in the first epoch.
    pub lambda: f64,
    /// Decrease of λ per epoch.
    pub lambda_decay: f64,
    /// Length-bucketing window in batches (0: none).
    pub bucket: usize,
    /// Epoch length.
    pub epoch_length: EpochLength,
    /// Fraction kept by top-p selection.
    pub top_p: f64,
}
