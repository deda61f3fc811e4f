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

#[cfg(feature = "torch")]
pub use crate::anchor_features::{features, FeatureConfig, FeatureKind};

pub(crate) const RULE: &str = "anchor-similarity";

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
