//! The DSIR baseline: data selection with hashed n-gram importance
//! resampling (Xie, Santurkar, Ma, Liang, NeurIPS 2023, "Data Selection for
//! Language Models via Importance Resampling"), one of the baselines of SEAL
//! (Shen et al., ICLR 2025; <https://github.com/hanshen95/SEAL>).
//!
//! Implemented here from the paper's description:
//!
//! 1. A text is lower-cased and split into words (maximal runs of
//!    alphanumeric characters). Its features are its unigrams and bigrams
//!    (`"w1 w2"`), each hashed with 64-bit FNV-1a (stable across platforms and
//!    releases) into one of [`DSIR_BUCKETS`] buckets.
//! 2. Two bag-of-n-gram distributions over the buckets are fitted with
//!    add-one smoothing, `p(b) = (c_b + 1) / (C + B)`: one on the target
//!    texts, one on the raw pool itself.
//! 3. Each pool example's log importance weight is
//!    `Σ_b count_b(x) · (log p_target(b) − log p_raw(b))`.
//! 4. `k` examples are drawn without replacement with probability
//!    proportional to the weights by the Gumbel-top-k trick: keep the `k`
//!    largest `log w + G`, `G ~ Gumbel(0, 1)` from a seeded generator
//!    ([`Dsir::gumbel`] off keeps the plain top-k of `log w`).
//!
//! Examples with fewer than [`Dsir::min_len`] words get weight 0 (`log w =
//! −∞`) and are never kept; the paper filters short web documents, while for
//! instruction data (short by nature) the default is 0. The text of a sample
//! is all its turns joined by newlines ([`sample_text`]).

use crate::error::{Result, SelectError};
use crate::rules::SelectionRule;
use crate::selection::{order_desc, Budget, Selection, SelectionInput};
use seal_data::rng::SplitMix64;
use seal_data::Sample;

/// Number of hash buckets of the n-gram features (as in the DSIR paper).
pub const DSIR_BUCKETS: usize = 10_000;

const GUMBEL_STREAM: u64 = 0xD512;

/// The words of a text: lower-cased maximal runs of alphanumeric characters.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// 64-bit FNV-1a of some byte strings fed in sequence.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The hashed unigram and bigram features of a text (one bucket index per
/// n-gram occurrence) and its number of words.
pub fn hashed_ngrams(text: &str, buckets: usize) -> (Vec<usize>, usize) {
    let w = words(text);
    let b = buckets.max(1) as u64;
    let mut out = Vec::with_capacity(2 * w.len());
    for (i, word) in w.iter().enumerate() {
        out.push((fnv1a(&[word.as_bytes()]) % b) as usize);
        if let Some(prev) = i.checked_sub(1).map(|j| &w[j]) {
            out.push((fnv1a(&[prev.as_bytes(), b" ", word.as_bytes()]) % b) as usize);
        }
    }
    (out, w.len())
}

/// Log-probabilities of the add-one smoothed bag-of-n-grams distribution
/// fitted on `texts`.
pub fn fit_log_probs<S: AsRef<str>>(texts: &[S], buckets: usize) -> Vec<f64> {
    let mut counts = vec![0u64; buckets.max(1)];
    for t in texts {
        for b in hashed_ngrams(t.as_ref(), buckets).0 {
            counts[b] += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    let denom = (total + counts.len() as u64) as f64;
    counts
        .iter()
        .map(|&c| ((c + 1) as f64 / denom).ln())
        .collect()
}

/// The text DSIR sees for a sample: every turn's content, joined by newlines.
pub fn sample_text(sample: &Sample) -> String {
    sample
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The DSIR rule: keep a budget of pool samples resampled towards a target
/// distribution. Needs the samples (their text).
#[derive(Debug, Clone, PartialEq)]
pub struct Dsir {
    /// Texts of the target distribution (e.g. the task's clean data).
    pub target: Vec<String>,
    /// How many to keep.
    pub budget: Budget,
    /// Seed of the Gumbel noise.
    pub seed: u64,
    /// Examples with fewer words are never kept (0: no minimum).
    pub min_len: usize,
    /// Number of hash buckets ([`DSIR_BUCKETS`]).
    pub buckets: usize,
    /// Gumbel-top-k resampling (true, as in the paper) or plain top-k of the
    /// importance weights (false).
    pub gumbel: bool,
}

impl Dsir {
    /// DSIR towards `target` with the paper's settings: 10,000 buckets,
    /// Gumbel-top-k, seed 0, no minimum length.
    pub fn new(target: Vec<String>, budget: Budget) -> Self {
        Self {
            target,
            budget,
            seed: 0,
            min_len: 0,
            buckets: DSIR_BUCKETS,
            gumbel: true,
        }
    }

    /// Log importance weight of every pool text (`−∞` for texts shorter than
    /// [`Dsir::min_len`] words), with the raw distribution fitted on `pool`.
    pub fn log_importance_weights<S: AsRef<str>>(&self, pool: &[S]) -> Result<Vec<f64>> {
        if self.buckets == 0 {
            return Err(SelectError::param(
                "dsir",
                "buckets",
                "0 (must be at least 1)",
            ));
        }
        if self.target.is_empty() {
            return Err(SelectError::input("dsir", "no target texts"));
        }
        let target = fit_log_probs(&self.target, self.buckets);
        let raw = fit_log_probs(pool, self.buckets);
        let ratio: Vec<f64> = target.iter().zip(&raw).map(|(t, r)| t - r).collect();
        Ok(pool
            .iter()
            .map(|t| {
                let (feats, n_words) = hashed_ngrams(t.as_ref(), self.buckets);
                if n_words < self.min_len {
                    f64::NEG_INFINITY
                } else {
                    feats.iter().map(|&b| ratio[b]).sum()
                }
            })
            .collect())
    }
}

impl SelectionRule for Dsir {
    fn name(&self) -> &str {
        "dsir"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let k = self.budget.resolve(self.name(), input.len())?;
        let samples = input.require_samples(self.name(), "their text")?;
        let texts: Vec<String> = samples.iter().map(sample_text).collect();
        let logw = self.log_importance_weights(&texts)?;
        let eligible = logw.iter().filter(|w| w.is_finite()).count();
        if eligible < k {
            return Err(SelectError::param(
                self.name(),
                "min_len",
                format!(
                    "only {eligible} of {} samples have at least {} words, fewer than the {k} to keep",
                    input.len(),
                    self.min_len
                ),
            ));
        }
        let keys: Vec<f64> = if self.gumbel {
            let mut g = SplitMix64::derive(self.seed, GUMBEL_STREAM, 0);
            logw.iter()
                .map(|&w| {
                    // u in (0, 1): never 0, so the noise is finite.
                    let u = ((g.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    w - (-u.ln()).ln()
                })
                .collect()
        } else {
            logw.clone()
        };
        Selection::from_order(self.name(), logw, &order_desc(&keys), k)
    }
}
