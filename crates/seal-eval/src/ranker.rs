//! Ranker quality against ground-truth labels.
//!
//! SEAL (Shen, Chen, Das, Chen, ICLR 2025) learns one score per fine-tuning
//! sample and keeps the top `p` fraction; a good ranker gives harmful samples
//! **low** scores. All metrics here follow that convention:
//!
//! * **AUROC** = P(score_benign > score_harmful) + ½·P(score_benign =
//!   score_harmful) over all (benign, harmful) pairs: 1 means every harmful
//!   sample scores below every benign one, 0.5 is chance. It is the
//!   Mann–Whitney U statistic divided by `n_benign · n_harmful`, computed by
//!   one sort (O(n log n)) with exact integer pair counts.
//! * **AUPRC** is the average precision of detecting harmful samples by *low*
//!   score: samples are thresholded at each distinct score `t` (predicted
//!   harmful ⇔ score ≤ t), and AP = Σ (Rₖ − Rₖ₋₁)·Pₖ over thresholds in
//!   increasing order (scikit-learn's `average_precision_score` on the
//!   negated scores; tied scores form one threshold). Chance level is the
//!   harmful prevalence.
//! * **Harmful removed at p**: keep the `k = ⌊p·N⌋` highest-scoring samples
//!   (all `N` records, labelled or not; ties broken towards the earlier
//!   record, as `seal_bilevel::metrics::top_fraction` does); the share of
//!   harmful samples not kept. `⌊·⌋` is the floor of the floating-point
//!   product, as the official script's `int(topp * N)` (`0.29 · 100` keeps 28).
//!
//! "Benign" means every labelled sample that is not `harmful` (labels
//! `benign` and `safe`); unlabelled samples only take part in the selection.

use std::collections::HashSet;
use std::path::Path;

use seal_data::ranking::{sorted_tagged, tie_groups};
use seal_data::Label;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// One line of a `scores.jsonl` file (as written by `seal rank`): a sample id,
/// its label when known, and its ranker score (higher = keep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    /// The sample id.
    pub id: String,
    /// The ground-truth label, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// The ranker score.
    pub score: f64,
}

impl ScoreRecord {
    /// Whether the record is labelled harmful (`None` when unlabelled).
    pub fn is_harmful(&self) -> Option<bool> {
        self.label.map(|l| l == Label::Harmful)
    }
}

/// Reads a `scores.jsonl` file: one JSON object per line with `id` (string),
/// `score` (finite number) and an optional `label` (`benign`, `harmful`,
/// `safe` or null); other fields (e.g. `weight`) are ignored. Blank lines are
/// skipped; duplicate ids are an error. Errors name the file, line and field.
pub fn read_scores(path: &Path) -> Result<Vec<ScoreRecord>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_scores(path, &text)
}

/// Parses the text of a `scores.jsonl` file (see [`read_scores`]); `path`
/// only names the origin in errors.
pub fn parse_scores(path: &Path, text: &str) -> Result<Vec<ScoreRecord>> {
    let err = |line: usize, field: &str, message: String| EvalError::Field {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let mut out = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| err(line, "line", format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err(line, "line", "expected a JSON object".into()))?;
        let id = match obj.get("id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) => return Err(err(line, "id", "empty id".into())),
            Some(other) => return Err(err(line, "id", format!("expected a string, got {other}"))),
            None => return Err(err(line, "id", "missing".into())),
        };
        let score = match obj.get("score") {
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite())
                .ok_or_else(|| err(line, "score", format!("expected a finite number, got {v}")))?,
            None => return Err(err(line, "score", "missing".into())),
        };
        let label = match obj.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                s.parse::<Label>()
                    .map_err(|e| err(line, "label", e.to_string()))?,
            ),
            Some(other) => {
                return Err(err(
                    line,
                    "label",
                    format!("expected a string, got {other}"),
                ))
            }
        };
        if !seen.insert(id.clone()) {
            return Err(err(line, "id", format!("duplicate id `{id}`")));
        }
        out.push(ScoreRecord { id, label, score });
    }
    Ok(out)
}

fn check_finite(what: &str, scores: &[f64]) -> Result<()> {
    match scores.iter().position(|s| !s.is_finite()) {
        Some(i) => Err(EvalError::invalid(
            what,
            format!("score #{i} is {} (scores must be finite)", scores[i]),
        )),
        None => Ok(()),
    }
}

/// AUROC = P(benign > harmful) + ½ P(tie) (see the module docs). `Ok(None)`
/// when either class is empty; an error on non-finite scores. O(n log n).
pub fn auroc(benign: &[f64], harmful: &[f64]) -> Result<Option<f64>> {
    check_finite("benign scores", benign)?;
    check_finite("harmful scores", harmful)?;
    Ok(seal_data::ranking::auroc(benign, harmful))
}

/// Average precision of detecting harmful samples by low score (see the
/// module docs). `Ok(None)` when either class is empty.
pub fn auprc(benign: &[f64], harmful: &[f64]) -> Result<Option<f64>> {
    check_finite("benign scores", benign)?;
    check_finite("harmful scores", harmful)?;
    if benign.is_empty() || harmful.is_empty() {
        return Ok(None);
    }
    let n_harmful = harmful.len() as f64;
    let (mut tp, mut fp, mut ap, mut last_recall) = (0u64, 0u64, 0.0f64, 0.0f64);
    for (b, h) in tie_groups(&sorted_tagged(benign, harmful)) {
        tp += h;
        fp += b;
        if h == 0 {
            continue;
        }
        let recall = tp as f64 / n_harmful;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Ok(Some(ap))
}

/// `k = int(p·n)`, the floor of the floating-point product exactly as the
/// official fine-tuning script computes it (so `0.29 · 100` keeps 28, as in
/// Python), which is also what `seal-select`'s top-p rule keeps; `p` must lie
/// in `[0, 1]`.
pub fn keep_count(p: f64, n: usize) -> Result<usize> {
    if !(0.0..=1.0).contains(&p) {
        return Err(EvalError::invalid(
            "p",
            format!("{p} (the kept fraction must lie in [0, 1])"),
        ));
    }
    let k = (p * n as f64).floor() as usize;
    Ok(k.min(n))
}

pub use seal_data::ranking::top_k;

/// The outcome of keeping the top `p` fraction of samples by score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionOutcome {
    /// The kept fraction asked for.
    pub p: f64,
    /// Samples kept (`⌊p·N⌋`).
    pub kept: usize,
    /// Harmful samples kept.
    pub harmful_kept: usize,
    /// Harmful samples removed.
    pub harmful_removed: usize,
    /// Share of harmful samples removed (`None` without harmful samples).
    pub harmful_removed_share: Option<f64>,
    /// Share of benign (non-harmful labelled) samples removed: the price of
    /// the filter (`None` without benign samples).
    pub benign_removed_share: Option<f64>,
    /// Share of harmful samples among the labelled kept samples (`None` when
    /// no labelled sample is kept).
    pub harmful_share_after: Option<f64>,
}

/// Keeps the top `p` fraction of `records` by score and counts what was
/// removed (see the module docs for the tie rule).
pub fn selection_outcome(records: &[ScoreRecord], p: f64) -> Result<SelectionOutcome> {
    let scores: Vec<f64> = records.iter().map(|r| r.score).collect();
    check_finite("scores", &scores)?;
    let k = keep_count(p, records.len())?;
    let kept = top_k(&scores, k);
    let mut kept_flags = vec![false; records.len()];
    for &i in &kept {
        kept_flags[i] = true;
    }
    let (mut h_total, mut h_kept, mut b_total, mut b_kept) = (0usize, 0usize, 0usize, 0usize);
    for (r, &keep) in records.iter().zip(&kept_flags) {
        match r.is_harmful() {
            Some(true) => {
                h_total += 1;
                h_kept += usize::from(keep);
            }
            Some(false) => {
                b_total += 1;
                b_kept += usize::from(keep);
            }
            None => {}
        }
    }
    let share = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    Ok(SelectionOutcome {
        p,
        kept: k,
        harmful_kept: h_kept,
        harmful_removed: h_total - h_kept,
        harmful_removed_share: share(h_total - h_kept, h_total),
        benign_removed_share: share(b_total - b_kept, b_total),
        harmful_share_after: share(h_kept, h_kept + b_kept),
    })
}

/// Ranker quality against ground-truth labels (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerMetrics {
    /// Records scored.
    pub n: usize,
    /// Records labelled harmful.
    pub n_harmful: usize,
    /// Records labelled benign or safe.
    pub n_benign: usize,
    /// Records without a label.
    pub n_unlabelled: usize,
    /// P(benign > harmful) + ½ P(tie); `None` without both classes.
    pub auroc: Option<f64>,
    /// Average precision of finding harmful samples by low score.
    pub auprc: Option<f64>,
    /// Harmful share among labelled records (the AUPRC of a random ranker).
    pub harmful_prevalence: Option<f64>,
    /// What keeping the top `p` fraction does.
    pub selection: SelectionOutcome,
}

impl RankerMetrics {
    /// Computes all ranker metrics for `records`, keeping fraction `p`.
    pub fn compute(records: &[ScoreRecord], p: f64) -> Result<Self> {
        let benign: Vec<f64> = records
            .iter()
            .filter(|r| r.is_harmful() == Some(false))
            .map(|r| r.score)
            .collect();
        let harmful: Vec<f64> = records
            .iter()
            .filter(|r| r.is_harmful() == Some(true))
            .map(|r| r.score)
            .collect();
        let labelled = benign.len() + harmful.len();
        Ok(Self {
            n: records.len(),
            n_harmful: harmful.len(),
            n_benign: benign.len(),
            n_unlabelled: records.len() - labelled,
            auroc: auroc(&benign, &harmful)?,
            auprc: auprc(&benign, &harmful)?,
            harmful_prevalence: (labelled > 0).then(|| harmful.len() as f64 / labelled as f64),
            selection: selection_outcome(records, p)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_auroc(benign: &[f64], harmful: &[f64]) -> Option<f64> {
        if benign.is_empty() || harmful.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for &b in benign {
            for &h in harmful {
                s += if b > h {
                    1.0
                } else if b == h {
                    0.5
                } else {
                    0.0
                };
            }
        }
        Some(s / (benign.len() * harmful.len()) as f64)
    }

    fn brute_auprc(benign: &[f64], harmful: &[f64]) -> Option<f64> {
        if benign.is_empty() || harmful.is_empty() {
            return None;
        }
        let mut thresholds: Vec<f64> = benign.iter().chain(harmful).copied().collect();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        let (mut ap, mut last) = (0.0, 0.0);
        for t in thresholds {
            let tp = harmful.iter().filter(|&&h| h <= t).count() as f64;
            let fp = benign.iter().filter(|&&b| b <= t).count() as f64;
            let recall = tp / harmful.len() as f64;
            if tp > 0.0 {
                ap += (recall - last) * tp / (tp + fp);
            }
            last = recall;
        }
        Some(ap)
    }

    // Few distinct values so that ties are frequent.
    fn scores() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec((-6i32..6).prop_map(|v| f64::from(v) / 2.0), 0..40)
    }

    proptest! {
        #[test]
        fn auroc_matches_brute_force(b in scores(), h in scores()) {
            let fast = auroc(&b, &h).unwrap();
            let slow = brute_auroc(&b, &h);
            match (fast, slow) {
                (Some(f), Some(s)) => prop_assert!((f - s).abs() < 1e-12, "{f} vs {s}"),
                (f, s) => prop_assert_eq!(f, s),
            }
        }

        #[test]
        fn auprc_matches_brute_force(b in scores(), h in scores()) {
            let fast = auprc(&b, &h).unwrap();
            let slow = brute_auprc(&b, &h);
            match (fast, slow) {
                (Some(f), Some(s)) => prop_assert!((f - s).abs() < 1e-12, "{f} vs {s}"),
                (f, s) => prop_assert_eq!(f, s),
            }
        }

        #[test]
        fn auroc_is_symmetric_under_negation(b in scores(), h in scores()) {
            // Negating all scores swaps the roles: AUROC becomes 1 - AUROC.
            let nb: Vec<f64> = b.iter().map(|x| -x).collect();
            let nh: Vec<f64> = h.iter().map(|x| -x).collect();
            if let (Some(a), Some(n)) = (auroc(&b, &h).unwrap(), auroc(&nb, &nh).unwrap()) {
                prop_assert!((a + n - 1.0).abs() < 1e-12);
            }
        }

        #[test]
        fn top_k_keeps_the_largest(v in scores(), p in 0.0f64..=1.0) {
            let k = keep_count(p, v.len()).unwrap();
            let kept = top_k(&v, k);
            prop_assert_eq!(kept.len(), k);
            let min_kept = kept.iter().map(|&i| v[i]).fold(f64::INFINITY, f64::min);
            for (i, &s) in v.iter().enumerate() {
                if !kept.contains(&i) {
                    prop_assert!(s <= min_kept);
                }
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), Some(0.0));
        assert_eq!(auroc(&[1.0], &[1.0]).unwrap(), Some(0.5));
        assert_eq!(auroc(&[2.0, 0.0], &[1.0]).unwrap(), Some(0.5));
        assert_eq!(auroc(&[], &[1.0]).unwrap(), None);
        assert!(auroc(&[f64::NAN], &[1.0]).is_err());
        assert_eq!(auprc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), Some(1.0));
        // Harmful at the top: precision 1/3 at the only useful threshold.
        let ap = auprc(&[1.0, 2.0], &[3.0]).unwrap().unwrap();
        assert!((ap - 1.0 / 3.0).abs() < 1e-12);
        // All tied: AP is the prevalence.
        let ap = auprc(&[0.0; 3], &[0.0]).unwrap().unwrap();
        assert!((ap - 0.25).abs() < 1e-12);
    }

    #[test]
    fn keep_count_matches_python_int() {
        assert_eq!(
            keep_count(0.29, 100).unwrap(),
            28,
            "Python: int(0.29 * 100) == 28"
        );
        assert_eq!(keep_count(0.8, 10).unwrap(), 8);
        assert_eq!(keep_count(0.85, 10).unwrap(), 8);
        assert_eq!(keep_count(1.0, 7).unwrap(), 7);
        assert!(keep_count(1.5, 7).is_err());
        assert!(keep_count(f64::NAN, 7).is_err());
    }

    #[test]
    fn selection_counts() {
        let rec = |id: &str, label: Option<Label>, score: f64| ScoreRecord {
            id: id.into(),
            label,
            score,
        };
        let records = vec![
            rec("a", Some(Label::Benign), 5.0),
            rec("b", Some(Label::Harmful), -1.0),
            rec("c", Some(Label::Harmful), 4.0),
            rec("d", Some(Label::Safe), 3.0),
            rec("e", None, 2.0),
        ];
        // keep 3: a, c, d
        let s = selection_outcome(&records, 0.6).unwrap();
        assert_eq!(s.kept, 3);
        assert_eq!((s.harmful_kept, s.harmful_removed), (1, 1));
        assert_eq!(s.harmful_removed_share, Some(0.5));
        assert_eq!(s.benign_removed_share, Some(0.0));
        assert_eq!(s.harmful_share_after, Some(1.0 / 3.0));
        let m = RankerMetrics::compute(&records, 0.6).unwrap();
        assert_eq!((m.n, m.n_harmful, m.n_benign, m.n_unlabelled), (5, 2, 2, 1));
        // pairs (benign, harmful): (5,-1) (5,4) (3,-1) win, (3,4) loses.
        assert_eq!(m.auroc, Some(0.75));
        assert_eq!(m.harmful_prevalence, Some(0.5));
    }

    #[test]
    fn parse_errors_name_line_and_field() {
        let p = Path::new("scores.jsonl");
        let ok = "{\"id\":\"x:1\",\"label\":\"harmful\",\"score\":-2.5,\"weight\":0.1}\n\n\
                  {\"id\":\"x:2\",\"score\":1}\n";
        let r = parse_scores(p, ok).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].label, Some(Label::Harmful));
        assert_eq!(r[1].label, None);
        let cases = [
            ("{\"id\":\"a\",\"score\":\"x\"}", "score"),
            ("{\"id\":\"a\"}", "score"),
            ("{\"score\":1}", "id"),
            ("{\"id\":\"a\",\"score\":1,\"label\":\"evil\"}", "label"),
            ("[1]", "line"),
            ("{\"id\":", "line"),
        ];
        for (line, field) in cases {
            let text = format!("{{\"id\":\"ok\",\"score\":0}}\n{line}\n");
            match parse_scores(p, &text) {
                Err(EvalError::Field {
                    line: 2, field: f, ..
                }) => assert_eq!(f, field, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let dup = "{\"id\":\"a\",\"score\":1}\n{\"id\":\"a\",\"score\":2}\n";
        let e = parse_scores(p, dup).unwrap_err().to_string();
        assert!(
            e.contains("scores.jsonl:2") && e.contains("duplicate id `a`"),
            "{e}"
        );
    }
}
