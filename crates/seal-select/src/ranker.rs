//! A ranker's scores as selection input.
//!
//! SEAL (Shen et al., ICLR 2025; <https://github.com/hanshen95/SEAL>) ranks
//! the fine-tuning samples by trained selector logits. [`RankerScores`]
//! holds what selection needs from a [`seal_bilevel::Ranker`]: ids, logits
//! (the scores) and activated weights (for [`crate::rules::SoftWeights`]).

use crate::check::{FingerprintCheck, RankerDataset};
use crate::error::Result;
use crate::selection::SelectionInput;
#[cfg(feature = "torch")]
use seal_bilevel::Ranker;

/// Ids, logits and weights of a ranker.
#[derive(Debug, Clone, PartialEq)]
pub struct RankerScores {
    /// Where the ranker came from (its directory), for errors.
    pub origin: String,
    /// Sample ids, in logit order.
    pub ids: Vec<String>,
    /// The data fingerprint.
    pub fingerprint: String,
    /// Logits (higher = keep).
    pub logits: Vec<f64>,
    /// Activated logits (training weights).
    pub weights: Vec<f64>,
}

impl RankerScores {
    /// Reads what `ranker` holds; `origin` names it in errors.
    #[cfg(feature = "torch")]
    pub fn from_ranker(ranker: &Ranker, origin: impl Into<String>) -> Result<Self> {
        Ok(Self {
            origin: origin.into(),
            ids: ranker.ids().to_vec(),
            fingerprint: ranker.fingerprint().to_string(),
            logits: ranker.logits_vec()?,
            weights: ranker.weights_vec()?,
        })
    }

    /// Loads a ranker directory (`ranker.json` + `ranker.safetensors`).
    #[cfg(feature = "torch")]
    pub fn load(dir: &std::path::Path) -> Result<Self> {
        let r = Ranker::load(dir)?;
        Self::from_ranker(&r, dir.display().to_string())
    }

    /// A selection input of the ranker's ids, logits and weights.
    pub fn input(&self) -> Result<SelectionInput<'_>> {
        SelectionInput::new(&self.ids)?
            .with_scores(&self.logits)?
            .with_weights(&self.weights)
    }

    /// Checks that the ranker belongs to a dataset with `dataset_ids`
    /// (see [`RankerDataset::check`]).
    pub fn check_dataset(
        &self,
        dataset: &str,
        dataset_ids: &[String],
        tokens_fingerprint: Option<&str>,
    ) -> Result<FingerprintCheck> {
        RankerDataset {
            ranker: &self.origin,
            ranker_ids: &self.ids,
            fingerprint: &self.fingerprint,
            dataset,
            dataset_ids,
        }
        .check(tokens_fingerprint)
    }
}
