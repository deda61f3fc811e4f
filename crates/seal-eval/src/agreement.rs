//! Agreement of a binary judge with human labels: accuracy, precision,
//! recall, F1 and AUROC (the AUROC uses the judge's scores, so a binary
//! rule gets the AUROC of its 0/1 verdicts, i.e. its balanced accuracy).

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Agreement of verdicts (`score >= threshold`) with labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Labelled pairs.
    pub n: usize,
    /// Pairs labelled positive.
    pub positives: usize,
    /// Share of verdicts equal to the label.
    pub accuracy: f64,
    /// Of the pairs called positive, the share labelled positive (NaN-free:
    /// 0 when nothing was called positive).
    pub precision: f64,
    /// Of the pairs labelled positive, the share called positive.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Area under the ROC curve of the scores; `None` when one class is
    /// absent.
    pub auroc: Option<f64>,
}

impl Agreement {
    /// Computes the agreement of `(label, score)` pairs at `threshold`.
    pub fn compute(items: &[(bool, f64)], threshold: f64) -> Result<Self> {
        let n = items.len();
        let (mut tp, mut fp, mut tn, mut fn_) = (0usize, 0usize, 0usize, 0usize);
        for &(label, score) in items {
            match (label, score >= threshold) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
                (true, false) => fn_ += 1,
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        let pos: Vec<f64> = items.iter().filter(|i| i.0).map(|i| i.1).collect();
        let neg: Vec<f64> = items.iter().filter(|i| !i.0).map(|i| i.1).collect();
        // `ranker::auroc(a, b)` is P(a > b) + ½ P(tie).
        let auroc = crate::ranker::auroc(&pos, &neg)?;
        Ok(Self {
            n,
            positives: tp + fn_,
            accuracy: ratio(tp + tn, n),
            precision,
            recall,
            f1,
            auroc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ratios() {
        let items = [(true, 0.9), (true, 0.4), (false, 0.6), (false, 0.1)];
        let a = Agreement::compute(&items, 0.5).unwrap();
        assert_eq!((a.n, a.positives), (4, 2));
        assert_eq!(
            (a.accuracy, a.precision, a.recall, a.f1),
            (0.5, 0.5, 0.5, 0.5)
        );
        assert_eq!(a.auroc, Some(0.75));
        let one_class = Agreement::compute(&[(true, 1.0)], 0.5).unwrap();
        assert_eq!(one_class.auroc, None);
        assert_eq!(one_class.accuracy, 1.0);
    }
}
