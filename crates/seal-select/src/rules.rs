//! The [`SelectionRule`] trait and the rules that need no model or text
//! statistics: SEAL's top-p (and top-k, threshold, soft weights) on ranker
//! scores, and the baselines full, random, stratified-by-source, SafeInstr,
//! mixed objective and oracle.
//!
//! SEAL (Shen et al., ICLR 2025; <https://github.com/hanshen95/SEAL>,
//! `examples/train_sft_mix.py`, `--topp`) fine-tunes on the `int(topp·N)`
//! samples with the largest selector logits; [`TopP`] is that rule.

use crate::error::{Result, SelectError};
use crate::selection::{order_desc, Budget, Objective, Selection, SelectionInput};
use seal_data::rng::SplitMix64;
use seal_data::{Label, Sample};
use std::collections::{BTreeMap, HashSet};

/// A data-selection rule: decides, for every sample of an input, whether it
/// is kept (and with what weight).
pub trait SelectionRule {
    /// Short name used in outputs and errors (e.g. `top-p`).
    fn name(&self) -> &str;
    /// Applies the rule. Errors on invalid parameters, missing or
    /// inconsistent input, or when nothing would be kept.
    fn select(&self, input: &SelectionInput) -> Result<Selection>;
}

/// The default fraction kept by [`TopP`] (the official `--topp 0.8`).
pub const DEFAULT_TOP_P: f64 = 0.8;

/// SEAL's rule: keep the `k = floor(p·N)` samples with the largest scores
/// (ties towards the lower position).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopP {
    /// Fraction kept, in `(0, 1]`.
    pub p: f64,
}

impl Default for TopP {
    fn default() -> Self {
        Self { p: DEFAULT_TOP_P }
    }
}

impl SelectionRule for TopP {
    fn name(&self) -> &str {
        "top-p"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        top_budget(self.name(), input, Budget::Fraction(self.p))
    }
}

/// Keep the `k` samples with the largest scores (ties towards the lower
/// position).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    /// Number kept, `1 <= k <= N`.
    pub k: usize,
}

impl SelectionRule for TopK {
    fn name(&self) -> &str {
        "top-k"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        top_budget(self.name(), input, Budget::Count(self.k))
    }
}

fn top_budget(rule: &str, input: &SelectionInput, budget: Budget) -> Result<Selection> {
    let k = budget.resolve(rule, input.len())?;
    let scores = input.require_scores(rule)?;
    Selection::from_order(rule, scores.to_vec(), &order_desc(scores), k)
}

/// Keep every sample whose score is at least `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The smallest kept score.
    pub threshold: f64,
}

impl SelectionRule for Threshold {
    fn name(&self) -> &str {
        "threshold"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        if self.threshold.is_nan() {
            return Err(SelectError::param(self.name(), "threshold", "NaN"));
        }
        let scores = input.require_scores(self.name())?;
        let keep: Vec<bool> = scores.iter().map(|&s| s >= self.threshold).collect();
        Selection::from_mask(self.name(), scores.to_vec(), &order_desc(scores), &keep).map_err(
            |e| match e {
                SelectError::EmptySelection { rule, total, .. } => SelectError::EmptySelection {
                    rule,
                    total,
                    reason: format!(
                        "no score reaches {} (largest: {})",
                        self.threshold,
                        scores.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    ),
                },
                other => other,
            },
        )
    }
}

/// Keep everything; fine-tune with each sample's loss multiplied by its
/// ranker weight (the activated logit). Needs weights; ranks by the scores
/// when given, else by the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftWeights;

impl SelectionRule for SoftWeights {
    fn name(&self) -> &str {
        "soft"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let weights = input.weights().ok_or_else(|| {
            SelectError::input(self.name(), "needs per-sample weights (give a ranker)")
        })?;
        let scores = input.scores().unwrap_or(weights).to_vec();
        let order = order_desc(&scores);
        let mut s = Selection::from_order(self.name(), scores, &order, input.len())?;
        for (e, &w) in s.entries.iter_mut().zip(weights) {
            e.weight = Some(w);
        }
        s.objective = Objective::Weighted;
        Ok(s)
    }
}

/// Baseline: no selection, keep everything. Records and ranks by the scores
/// when given (score 0 and input order otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Full;

impl SelectionRule for Full {
    fn name(&self) -> &str {
        "full"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        keep_all(self.name(), input)
    }
}

fn keep_all(rule: &str, input: &SelectionInput) -> Result<Selection> {
    let scores = input
        .scores()
        .map(<[f64]>::to_vec)
        .unwrap_or_else(|| vec![0.0; input.len()]);
    let order = order_desc(&scores);
    Selection::from_order(rule, scores, &order, input.len())
}

/// `n` uniform keys in `[0, 1)` from `seed` (53-bit resolution), from the
/// project's fixed SplitMix64 stream so they never change across platforms
/// or dependency upgrades.
pub fn uniform_keys(seed: u64, stream: u64, n: usize) -> Vec<f64> {
    let mut g = SplitMix64::derive(seed, stream, 0);
    (0..n)
        .map(|_| (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

const RANDOM_STREAM: u64 = 0x005E_1EC7;
const STRATIFIED_STREAM: u64 = 0x0057_42A7;
const SAFEINSTR_STREAM: u64 = 0x5AFE;

/// Baseline: keep a seeded uniformly random subset of the budget's size.
/// The recorded score is the sample's random key in `[0, 1)`; the largest
/// keys are kept, so equal seeds give equal subsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Random {
    /// How many to keep.
    pub budget: Budget,
    /// The seed.
    pub seed: u64,
}

impl SelectionRule for Random {
    fn name(&self) -> &str {
        "random"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let k = self.budget.resolve(self.name(), input.len())?;
        let keys = uniform_keys(self.seed, RANDOM_STREAM, input.len());
        let order = order_desc(&keys);
        Selection::from_order(self.name(), keys, &order, k)
    }
}

/// Keep the budget's share of every source: source `s` with `n_s` of the `N`
/// samples gets `k·n_s/N` slots, rounded by largest remainder (ties to the
/// source name that sorts first) so the total is exactly `k`. Within a
/// source, the highest scores are kept when scores are given, else a seeded
/// random subset. Needs the samples (for their sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stratified {
    /// How many to keep in total.
    pub budget: Budget,
    /// Seed of the within-source choice when there are no scores.
    pub seed: u64,
}

impl SelectionRule for Stratified {
    fn name(&self) -> &str {
        "stratified"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let n = input.len();
        let k = self.budget.resolve(self.name(), n)?;
        let samples = input.require_samples(self.name(), "their sources")?;
        let scores = input
            .scores()
            .map(<[f64]>::to_vec)
            .unwrap_or_else(|| uniform_keys(self.seed, STRATIFIED_STREAM, n));
        let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            by_source.entry(s.source.as_str()).or_default().push(i);
        }
        // Largest-remainder apportionment of k over the sources.
        let mut quotas: Vec<(usize, usize, &str)> = by_source
            .iter()
            .map(|(src, members)| {
                let num = k * members.len();
                (num / n, num % n, *src)
            })
            .collect();
        let assigned: usize = quotas.iter().map(|q| q.0).sum();
        let mut by_rem: Vec<usize> = (0..quotas.len()).collect();
        by_rem.sort_by(|&a, &b| {
            quotas[b]
                .1
                .cmp(&quotas[a].1)
                .then(quotas[a].2.cmp(quotas[b].2))
        });
        for &q in by_rem.iter().take(k.saturating_sub(assigned)) {
            quotas[q].0 += 1;
        }
        let mut keep = vec![false; n];
        for ((_, members), (quota, _, _)) in by_source.iter().zip(&quotas) {
            let mut m = members.clone();
            m.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            for &i in m.iter().take(*quota) {
                keep[i] = true;
            }
        }
        // Rank: kept samples first (by score), then the cut ones (by score).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            keep[b]
                .cmp(&keep[a])
                .then(scores[b].total_cmp(&scores[a]))
                .then(a.cmp(&b))
        });
        Selection::from_order(self.name(), scores, &order, k)
    }
}

/// Baseline SafeInstr (Bianchi et al., ICLR 2024, "Safety-Tuned LLaMAs"):
/// keep every fine-tuning sample and add safety demonstrations to the set.
#[derive(Debug, Clone, PartialEq)]
pub struct SafeInstr {
    /// The safety demonstrations (e.g. `safety_only_data_Instructions.json`).
    pub demos: Vec<Sample>,
    /// How many demonstrations to add (a seeded random subset, kept in file
    /// order); `None` adds all of them.
    pub count: Option<usize>,
    /// Seed of the subset.
    pub seed: u64,
}

impl SelectionRule for SafeInstr {
    fn name(&self) -> &str {
        "safeinstr"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        if self.demos.is_empty() {
            return Err(SelectError::input(self.name(), "no safety demonstrations"));
        }
        let count = self.count.unwrap_or(self.demos.len());
        if count == 0 || count > self.demos.len() {
            return Err(SelectError::param(
                self.name(),
                "count",
                format!("{count} (must lie in 1..={})", self.demos.len()),
            ));
        }
        let pool: HashSet<&str> = input.ids().iter().map(String::as_str).collect();
        if let Some(d) = self.demos.iter().find(|d| pool.contains(d.id.as_str())) {
            return Err(SelectError::input(
                self.name(),
                format!(
                    "safety demonstration id `{}` is also a fine-tuning sample id",
                    d.id
                ),
            ));
        }
        let mut chosen: Vec<usize> = (0..self.demos.len()).collect();
        if count < self.demos.len() {
            let keys = uniform_keys(self.seed, SAFEINSTR_STREAM, self.demos.len());
            chosen = order_desc(&keys);
            chosen.truncate(count);
            chosen.sort_unstable();
        }
        let mut s = keep_all(self.name(), input)?;
        s.added = chosen.iter().map(|&i| self.demos[i].clone()).collect();
        Ok(s)
    }
}

/// Baseline "mixed objective": no selection; the fine-tuning code trains on
/// `λ·(safe-set loss) + (1−λ)·(task loss)`. The selection keeps everything
/// and carries λ in [`Objective::Mixed`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedObjective {
    /// Weight of the safe-set loss, in `[0, 1]`.
    pub lambda: f64,
}

impl SelectionRule for MixedObjective {
    fn name(&self) -> &str {
        "mixed"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(SelectError::param(
                self.name(),
                "lambda",
                format!("{} (must lie in [0, 1])", self.lambda),
            ));
        }
        let mut s = keep_all(self.name(), input)?;
        s.objective = Objective::Mixed {
            lambda: self.lambda,
        };
        Ok(s)
    }
}

/// Benchmark-only upper bound: drop exactly the samples labelled harmful.
/// Needs labelled samples; an unlabelled sample is an error naming its id.
/// Score 1 for kept samples, 0 for harmful ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Oracle;

impl SelectionRule for Oracle {
    fn name(&self) -> &str {
        "oracle"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let samples = input.require_samples(self.name(), "their labels")?;
        if let Some(s) = samples.iter().find(|s| s.label.is_none()) {
            return Err(SelectError::input(
                self.name(),
                format!("sample `{}` has no label", s.id),
            ));
        }
        let keep: Vec<bool> = samples
            .iter()
            .map(|s| s.label != Some(Label::Harmful))
            .collect();
        let scores: Vec<f64> = keep.iter().map(|&k| f64::from(u8::from(k))).collect();
        let order = order_desc(&scores);
        Selection::from_mask(self.name(), scores, &order, &keep)
    }
}
