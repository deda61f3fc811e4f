//! What a rule sees ([`SelectionInput`]) and what it decides ([`Selection`]).
//!
//! Every rule scores each sample (higher = more worth keeping), ranks the
//! samples by its own order (rank 1 first) and keeps a subset. Ties in a
//! ranking are broken by position in the input: the lower index ranks first,
//! so the same input always gives the same kept set (and, on the official
//! selectors, the same set as `torch.topk`, which has no ties there; see
//! `shared/data/README.md`).

use crate::error::{Result, SelectError};
use seal_data::Sample;
use serde::Serialize;
use std::collections::HashSet;

/// The samples a rule chooses from: ids plus whatever the rule needs.
///
/// All slices are in the same order (position `i` is one sample).
#[derive(Debug, Clone, Copy)]
pub struct SelectionInput<'a> {
    ids: &'a [String],
    scores: Option<&'a [f64]>,
    weights: Option<&'a [f64]>,
    samples: Option<&'a [Sample]>,
}

impl<'a> SelectionInput<'a> {
    /// An input of `ids` only. Errors on no ids or a duplicate id.
    pub fn new(ids: &'a [String]) -> Result<Self> {
        if ids.is_empty() {
            return Err(SelectError::input("input", "no samples to select from"));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(SelectError::input(
                "input",
                format!("duplicate sample id `{dup}`"),
            ));
        }
        Ok(Self {
            ids,
            scores: None,
            weights: None,
            samples: None,
        })
    }

    /// Adds per-sample scores (ranker logits, higher = keep). Errors on a
    /// length mismatch or a NaN score (naming the sample id).
    pub fn with_scores(mut self, scores: &'a [f64]) -> Result<Self> {
        self.check_len("scores", scores.len())?;
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(SelectError::input(
                "input",
                format!("score of sample `{}` (position {i}) is NaN", self.ids[i]),
            ));
        }
        self.scores = Some(scores);
        Ok(self)
    }

    /// Adds per-sample training weights (the ranker's activated logits).
    /// Errors on a length mismatch or a weight that is negative or not finite.
    pub fn with_weights(mut self, weights: &'a [f64]) -> Result<Self> {
        self.check_len("weights", weights.len())?;
        if let Some(i) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(SelectError::input(
                "input",
                format!(
                    "weight of sample `{}` (position {i}) is {}",
                    self.ids[i], weights[i]
                ),
            ));
        }
        self.weights = Some(weights);
        Ok(self)
    }

    /// Adds the samples themselves (sources, labels, text). Their ids must
    /// equal the input's ids position by position.
    pub fn with_samples(mut self, samples: &'a [Sample]) -> Result<Self> {
        self.check_len("samples", samples.len())?;
        if let Some((i, s)) = samples
            .iter()
            .enumerate()
            .find(|(i, s)| s.id != self.ids[*i])
        {
            return Err(SelectError::input(
                "input",
                format!(
                    "sample at position {i} has id `{}` but the input lists `{}` there",
                    s.id, self.ids[i]
                ),
            ));
        }
        self.samples = Some(samples);
        Ok(self)
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.ids.len() {
            return Err(SelectError::input(
                "input",
                format!("{len} {what} for {} sample ids", self.ids.len()),
            ));
        }
        Ok(())
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no samples (never true for a constructed input).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The sample ids.
    pub fn ids(&self) -> &'a [String] {
        self.ids
    }

    /// The scores, if given.
    pub fn scores(&self) -> Option<&'a [f64]> {
        self.scores
    }

    /// The weights, if given.
    pub fn weights(&self) -> Option<&'a [f64]> {
        self.weights
    }

    /// The samples, if given.
    pub fn samples(&self) -> Option<&'a [Sample]> {
        self.samples
    }

    /// The scores, or an error saying that `rule` needs them.
    pub fn require_scores(&self, rule: &str) -> Result<&'a [f64]> {
        self.scores
            .ok_or_else(|| SelectError::input(rule, "needs per-sample scores (give a ranker)"))
    }

    /// The samples, or an error saying that `rule` needs them for `why`.
    pub fn require_samples(&self, rule: &str, why: &str) -> Result<&'a [Sample]> {
        self.samples.ok_or_else(|| {
            SelectError::input(rule, format!("needs the samples (a dataset) for {why}"))
        })
    }
}

/// How the fine-tuning code should use a selection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Objective {
    /// Plain fine-tuning on the kept samples.
    Standard,
    /// Fine-tune on the kept samples, each loss term multiplied by its
    /// [`Entry::weight`].
    Weighted,
    /// No selection: fine-tune on `λ·(safe-set loss) + (1−λ)·(task loss)`.
    Mixed {
        /// The weight λ of the safe-set loss, in `[0, 1]`.
        lambda: f64,
    },
}

/// One sample's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Entry {
    /// What the rule ranked by (higher = more worth keeping); the meaning
    /// depends on the rule (a ranker logit, a DSIR log importance weight,
    /// minus a response NLL, a random key).
    pub score: f64,
    /// 1-based position in the rule's order (1 = most worth keeping).
    pub rank: usize,
    /// Whether the sample is kept.
    pub kept: bool,
    /// Training weight, for rules that weight instead of cutting.
    pub weight: Option<f64>,
}

/// The outcome of a rule: one [`Entry`] per input sample, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Name of the rule that made it.
    pub rule: String,
    /// One entry per input sample, in input order.
    pub entries: Vec<Entry>,
    /// How the fine-tuning code should use the kept samples.
    pub objective: Objective,
    /// Samples to add to the fine-tuning set (the SafeInstr baseline's safety
    /// demonstrations); empty for every other rule.
    pub added: Vec<Sample>,
}

impl Selection {
    /// A selection keeping exactly the samples ranked `1..=k` by `order`
    /// (a permutation of the input positions, best first), with `scores`
    /// recorded per sample. Errors when `k` is 0.
    pub fn from_order(rule: &str, scores: Vec<f64>, order: &[usize], k: usize) -> Result<Self> {
        if k == 0 {
            return Err(SelectError::EmptySelection {
                rule: rule.to_string(),
                total: scores.len(),
                reason: "the budget rounds down to 0 samples".into(),
            });
        }
        let mut entries: Vec<Entry> = scores
            .into_iter()
            .map(|score| Entry {
                score,
                rank: 0,
                kept: false,
                weight: None,
            })
            .collect();
        for (r, &i) in order.iter().enumerate() {
            if let Some(e) = entries.get_mut(i) {
                e.rank = r + 1;
                e.kept = r < k;
            }
        }
        Ok(Self {
            rule: rule.to_string(),
            entries,
            objective: Objective::Standard,
            added: Vec::new(),
        })
    }

    /// A selection keeping the samples for which `keep[i]` is true, ranked
    /// by `order`. Errors when nothing is kept.
    pub fn from_mask(rule: &str, scores: Vec<f64>, order: &[usize], keep: &[bool]) -> Result<Self> {
        if !keep.iter().any(|&k| k) {
            return Err(SelectError::EmptySelection {
                rule: rule.to_string(),
                total: scores.len(),
                reason: "no sample passes the rule".into(),
            });
        }
        let mut s = Self::from_order(rule, scores, order, 1)?;
        for (e, &k) in s.entries.iter_mut().zip(keep) {
            e.kept = k;
        }
        Ok(s)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of kept input samples (not counting [`Selection::added`]).
    pub fn num_kept(&self) -> usize {
        self.entries.iter().filter(|e| e.kept).count()
    }

    /// Positions of the kept samples, ascending.
    pub fn kept_indices(&self) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kept)
            .map(|(i, _)| i)
            .collect()
    }

    /// Ids of the kept samples in input order, then the ids of the added
    /// samples.
    pub fn kept_ids<'a>(&'a self, input: &SelectionInput<'a>) -> Vec<&'a str> {
        let mut out: Vec<&str> = self
            .entries
            .iter()
            .zip(input.ids())
            .filter(|(e, _)| e.kept)
            .map(|(_, id)| id.as_str())
            .collect();
        out.extend(self.added.iter().map(|s| s.id.as_str()));
        out
    }
}

/// Input positions ordered by score, highest first; ties by lower position.
/// Scores must not be NaN ([`SelectionInput::with_scores`] checks).
pub fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// How many samples a budgeted rule keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Budget {
    /// Keep `k = floor(p·N)` samples (the official `int(topp * N)`);
    /// `p` must lie in `(0, 1]`.
    Fraction(f64),
    /// Keep `k` samples; `1 <= k <= N`.
    Count(usize),
}

impl Budget {
    /// The number of samples to keep out of `n`, or an error naming `rule`
    /// and the parameter (`p` or `k`) at fault.
    pub fn resolve(self, rule: &str, n: usize) -> Result<usize> {
        match self {
            Budget::Fraction(p) => {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(SelectError::param(
                        rule,
                        "p",
                        format!("{p} (must lie in (0, 1])"),
                    ));
                }
                // The official script's `int(topp * N)`: the same IEEE
                // product, truncated.
                let k = ((p * n as f64) as usize).min(n);
                if k == 0 {
                    return Err(SelectError::EmptySelection {
                        rule: rule.to_string(),
                        total: n,
                        reason: format!("floor({p} · {n}) = 0"),
                    });
                }
                Ok(k)
            }
            Budget::Count(k) => {
                if k == 0 {
                    return Err(SelectError::param(rule, "k", "0 (must be at least 1)"));
                }
                if k > n {
                    return Err(SelectError::param(
                        rule,
                        "k",
                        format!("{k} is more than the {n} samples"),
                    ));
                }
                Ok(k)
            }
        }
    }
}
