//! Win rates as the SEAL paper reports them: each method's answers against
//! a reference model's (standard SFT) on the same prompts, judged pairwise.
//!
//! Every prompt is asked in both orders (the candidate as A, then as B), so
//! a judge that favours a position cancels out: a judge that always says
//! "A" gives every prompt ½. A prompt scores the mean of its two verdicts
//! (win 1, tie ½, loss 0); the win rate is the mean over prompts, with a
//! percentile-bootstrap interval over prompts (seeded, so reports are
//! reproducible).

use crate::error::{EvalError, Result};
use crate::judge::{Judge, PairQuery, Winner};
use crate::safety::ResponseRecord;
use seal_data::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct WinRateOptions {
    /// Bootstrap resamples (2000 by default).
    pub resamples: usize,
    /// Interval coverage (0.95).
    pub confidence: f64,
    /// Seed of the resampling.
    pub seed: u64,
}

impl Default for WinRateOptions {
    fn default() -> Self {
        Self {
            resamples: 2000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// One prompt's two verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairOutcome {
    /// The verdict with the candidate shown first (as A).
    pub candidate_first: Winner,
    /// The verdict with the reference shown first (the candidate as B).
    pub reference_first: Winner,
    /// The candidate's score in `[0, 1]`: the mean of its two outcomes.
    pub score: f64,
}

/// A candidate's win rate against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    /// The judge that compared them.
    pub judge: String,
    /// Prompts compared.
    pub prompts: usize,
    /// Mean score (ties count ½).
    pub rate: f64,
    /// Lower end of the bootstrap interval.
    pub low: f64,
    /// Upper end of the bootstrap interval.
    pub high: f64,
    /// Prompts the candidate won (score above ½).
    pub wins: usize,
    /// Prompts at exactly ½ (ties, or the two orders disagreeing).
    pub ties: usize,
    /// Prompts the candidate lost.
    pub losses: usize,
    /// Prompts whose two orders gave opposite winners (position bias).
    pub inconsistent: usize,
    /// Every prompt's outcome, in order.
    pub outcomes: Vec<PairOutcome>,
}

/// The candidate's score of one verdict: `candidate_is_a` says where it was
/// shown.
fn score_of(w: Winner, candidate_is_a: bool) -> f64 {
    match (w, candidate_is_a) {
        (Winner::Tie, _) => 0.5,
        (Winner::A, true) | (Winner::B, false) => 1.0,
        _ => 0.0,
    }
}

/// `candidate[i]` against `reference[i]` as answers to `prompts[i]`, asked
/// in both orders.
pub fn win_rate(
    judge: &dyn Judge,
    prompts: &[&str],
    candidate: &[&str],
    reference: &[&str],
    opts: &WinRateOptions,
) -> Result<WinRate> {
    if prompts.len() != candidate.len() || prompts.len() != reference.len() {
        return Err(EvalError::invalid(
            "win rate",
            format!(
                "{} prompts, {} candidate answers and {} reference answers",
                prompts.len(),
                candidate.len(),
                reference.len()
            ),
        ));
    }
    if prompts.is_empty() {
        return Err(EvalError::invalid("win rate", "no prompts"));
    }
    let mut queries = Vec::with_capacity(2 * prompts.len());
    for i in 0..prompts.len() {
        queries.push(PairQuery {
            prompt: prompts[i],
            a: candidate[i],
            b: reference[i],
        });
        queries.push(PairQuery {
            prompt: prompts[i],
            a: reference[i],
            b: candidate[i],
        });
    }
    let verdicts = judge.prefer_batch(&queries)?;
    if verdicts.len() != queries.len() {
        return Err(EvalError::invalid(
            "win rate",
            format!(
                "judge `{}` returned {} verdicts for {} pairs",
                judge.name(),
                verdicts.len(),
                queries.len()
            ),
        ));
    }
    let outcomes: Vec<PairOutcome> = verdicts
        .chunks(2)
        .map(|v| {
            let (first, second) = (v[0].winner, v[1].winner);
            PairOutcome {
                candidate_first: first,
                reference_first: second,
                score: (score_of(first, true) + score_of(second, false)) / 2.0,
            }
        })
        .collect();
    let scores: Vec<f64> = outcomes.iter().map(|o| o.score).collect();
    let (low, high) = bootstrap_interval(&scores, opts)?;
    let inconsistent = outcomes
        .iter()
        .filter(|o| {
            let (a, b) = (
                score_of(o.candidate_first, true),
                score_of(o.reference_first, false),
            );
            (a - b).abs() == 1.0
        })
        .count();
    Ok(WinRate {
        judge: judge.name().to_string(),
        prompts: scores.len(),
        rate: mean(&scores),
        low,
        high,
        wins: scores.iter().filter(|&&s| s > 0.5).count(),
        ties: scores.iter().filter(|&&s| s == 0.5).count(),
        losses: scores.iter().filter(|&&s| s < 0.5).count(),
        inconsistent,
        outcomes,
    })
}

/// Reads a responses file (`*_responses.jsonl` as `seal eval` and the
/// pipeline write it: `id`, `prompt`, `response` per line); errors name the
/// file and line.
pub fn read_responses(path: &Path) -> Result<Vec<ResponseRecord>> {
    let bytes = seal_data::fsutil::read_bytes(path)?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in seal_data::fsutil::lines(path, &bytes) {
        let (n, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let r: ResponseRecord = serde_json::from_str(text).map_err(|e| EvalError::Field {
            path: path.to_path_buf(),
            line: n,
            field: "line".into(),
            message: e.to_string(),
        })?;
        if !seen.insert(r.id.clone()) {
            return Err(EvalError::Field {
                path: path.to_path_buf(),
                line: n,
                field: "id".into(),
                message: format!("`{}` appears twice", r.id),
            });
        }
        out.push(r);
    }
    Ok(out)
}

/// The win rate of the responses in `candidate` against those in
/// `reference`, paired by sample id (both files must answer the same
/// prompts; the first id missing from either is named).
pub fn win_rate_of_files(
    judge: &dyn Judge,
    candidate: &Path,
    reference: &Path,
    opts: &WinRateOptions,
) -> Result<WinRate> {
    let cand = read_responses(candidate)?;
    let refs = read_responses(reference)?;
    let by_id: HashMap<&str, &ResponseRecord> = refs.iter().map(|r| (r.id.as_str(), r)).collect();
    let candidate_ids: std::collections::HashSet<&str> =
        cand.iter().map(|c| c.id.as_str()).collect();
    if let Some(extra) = refs.iter().find(|r| !candidate_ids.contains(r.id.as_str())) {
        return Err(EvalError::invalid(
            "win rate",
            format!(
                "sample `{}` of {} has no response in {}",
                extra.id,
                reference.display(),
                candidate.display()
            ),
        ));
    }
    let mut prompts = Vec::with_capacity(cand.len());
    let mut ref_answers = Vec::with_capacity(cand.len());
    for c in &cand {
        let r = by_id.get(c.id.as_str()).ok_or_else(|| {
            EvalError::invalid(
                "win rate",
                format!(
                    "sample `{}` of {} has no response in {}",
                    c.id,
                    candidate.display(),
                    reference.display()
                ),
            )
        })?;
        prompts.push(c.prompt.as_str());
        ref_answers.push(r.response.as_str());
    }
    let cand_answers: Vec<&str> = cand.iter().map(|c| c.response.as_str()).collect();
    win_rate(judge, &prompts, &cand_answers, &ref_answers, opts)
}

/// One estimate from several: the mean of every prompt's score pooled over
/// `rates` (e.g. seeds), with a bootstrap interval over the pooled prompts.
pub fn pooled(rates: &[&WinRate], opts: &WinRateOptions) -> Result<(f64, f64, f64)> {
    let scores: Vec<f64> = rates
        .iter()
        .flat_map(|w| w.outcomes.iter().map(|o| o.score))
        .collect();
    let (low, high) = bootstrap_interval(&scores, opts)?;
    Ok((mean(&scores), low, high))
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The percentile-bootstrap interval of the mean of `scores`: `resamples`
/// means of resamples with replacement, cut at the tails of
/// `1 − confidence`.
pub fn bootstrap_interval(scores: &[f64], opts: &WinRateOptions) -> Result<(f64, f64)> {
    if scores.is_empty() || opts.resamples == 0 {
        return Err(EvalError::invalid(
            "bootstrap",
            "needs at least one score and one resample",
        ));
    }
    if !(opts.confidence > 0.0 && opts.confidence < 1.0) {
        return Err(EvalError::invalid(
            "bootstrap",
            format!("confidence {}: expected a value in (0, 1)", opts.confidence),
        ));
    }
    let mut rng = SplitMix64::new(opts.seed);
    let n = scores.len();
    let mut means: Vec<f64> = (0..opts.resamples)
        .map(|_| (0..n).map(|_| scores[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - opts.confidence) / 2.0;
    let at = |q: f64| {
        let i = (q * (means.len() - 1) as f64).round() as usize;
        means[i.min(means.len() - 1)]
    };
    Ok((at(tail), at(1.0 - tail)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Preference;

    /// Prefers whatever is shown first.
    struct FirstJudge;
    impl Judge for FirstJudge {
        fn name(&self) -> &str {
            "first"
        }
        fn judge_harm(&self, _: &str, _: &str) -> Result<crate::HarmVerdict> {
            unreachable!()
        }
        fn prefer(&self, _: &str, _: &str, _: &str) -> Result<Preference> {
            Ok(Preference {
                winner: Winner::A,
                prob_a: 1.0,
                rationale: String::new(),
            })
        }
    }

    /// Prefers the longer answer.
    struct LongerJudge;
    impl Judge for LongerJudge {
        fn name(&self) -> &str {
            "longer"
        }
        fn judge_harm(&self, _: &str, _: &str) -> Result<crate::HarmVerdict> {
            unreachable!()
        }
        fn prefer(&self, _: &str, a: &str, b: &str) -> Result<Preference> {
            let winner = match a.len().cmp(&b.len()) {
                std::cmp::Ordering::Greater => Winner::A,
                std::cmp::Ordering::Less => Winner::B,
                std::cmp::Ordering::Equal => Winner::Tie,
            };
            Ok(Preference {
                winner,
                prob_a: 0.5,
                rationale: String::new(),
            })
        }
    }

    #[test]
    fn position_bias_cancels_out() {
        let p = ["q1", "q2", "q3"];
        let w = win_rate(
            &FirstJudge,
            &p,
            &["a", "b", "c"],
            &["x", "y", "z"],
            &WinRateOptions::default(),
        )
        .unwrap();
        assert_eq!(w.rate, 0.5);
        assert_eq!((w.wins, w.ties, w.losses), (0, 3, 0));
        assert_eq!(w.inconsistent, 3);
        assert_eq!((w.low, w.high), (0.5, 0.5));
    }

    #[test]
    fn the_longer_judge_counts_wins_losses_and_ties() {
        let p = ["q1", "q2", "q3", "q4"];
        let cand = ["long answer", "s", "same", "longer one"];
        let refr = ["short", "long answer", "SAME", "x"];
        let w = win_rate(&LongerJudge, &p, &cand, &refr, &WinRateOptions::default()).unwrap();
        assert_eq!((w.wins, w.ties, w.losses), (2, 1, 1));
        assert_eq!(w.rate, (1.0 + 0.0 + 0.5 + 1.0) / 4.0);
        assert_eq!(w.inconsistent, 0);
        assert!(w.low <= w.rate && w.rate <= w.high && w.low < w.high);
    }

    #[test]
    fn the_interval_narrows_with_more_prompts_and_is_seeded() {
        let opts = WinRateOptions::default();
        let few: Vec<f64> = (0..10).map(|i| (i % 2) as f64).collect();
        let many: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let (a, b) = bootstrap_interval(&few, &opts).unwrap();
        let (c, d) = bootstrap_interval(&many, &opts).unwrap();
        assert!(b - a > d - c, "{a} {b} {c} {d}");
        assert!(c < 0.5 && d > 0.5);
        assert_eq!(bootstrap_interval(&few, &opts).unwrap(), (a, b));
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let e = win_rate(
            &FirstJudge,
            &["q"],
            &["a", "b"],
            &["x"],
            &WinRateOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 candidate answers"), "{e}");
    }

    #[test]
    fn response_files_are_paired_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, rows: &[(&str, &str)]| {
            let path = dir.path().join(name);
            let text: String = rows
                .iter()
                .map(|(id, r)| {
                    format!(
                        "{}\n",
                        serde_json::json!({"id": id, "prompt": format!("prompt {id}"),
                                           "response": r, "refusal_marker": null})
                    )
                })
                .collect();
            std::fs::write(&path, text).unwrap();
            path
        };
        let cand = write("c.jsonl", &[("1", "a long answer"), ("2", "x")]);
        // Another order: pairs follow ids, not lines.
        let refr = write("r.jsonl", &[("2", "a longer one"), ("1", "short")]);
        let w = win_rate_of_files(&LongerJudge, &cand, &refr, &WinRateOptions::default()).unwrap();
        assert_eq!((w.wins, w.losses), (1, 1));
        let other = write("o.jsonl", &[("1", "a"), ("3", "b")]);
        let e = win_rate_of_files(&LongerJudge, &cand, &other, &WinRateOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`3`") || e.contains("`2`"), "{e}");
        let dup = write("d.jsonl", &[("1", "a"), ("1", "b")]);
        let e = read_responses(&dup).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("twice"), "{e}");
        let (rate, low, high) = pooled(&[&w, &w], &WinRateOptions::default()).unwrap();
        assert_eq!(rate, w.rate);
        assert!(low <= rate && rate <= high);
    }
}
