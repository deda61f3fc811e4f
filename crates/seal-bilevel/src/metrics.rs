//! Ranking metrics and the official top-p selection.
//!
//! The official fine-tuning script (<https://github.com/hanshen95/SEAL>,
//! `examples/train_sft_mix.py` with `--topp`) keeps the `k = int(p·N)`
//! samples with the largest selector logits. [`top_fraction`] returns that
//! kept set (ties broken towards the lower index) sorted ascending, and
//! [`kept_set_sha256`] hashes it the way `shared/data/README.md` documents
//! (indices joined by commas, SHA-256, lowercase hex).

/// Area under the ROC curve of `scores` for telling `positive` samples from
/// the rest (probability that a random positive outscores a random negative,
/// ties counting one half), computed by [`seal_data::ranking::auroc`]. `None`
/// without both classes, on mismatched lengths or on non-finite scores.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.len() != positive.len() {
        return None;
    }
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for (&s, &p) in scores.iter().zip(positive) {
        if p {
            pos.push(s)
        } else {
            neg.push(s)
        }
    }
    seal_data::ranking::auroc(&pos, &neg)
}

/// Indices of the `k = floor(p·N)` largest values, sorted ascending (ties
/// towards the lower index). `p` is clamped to `[0, 1]`.
pub fn top_fraction(values: &[f64], p: f64) -> Vec<usize> {
    let k = ((p.clamp(0.0, 1.0) * values.len() as f64) as usize).min(values.len());
    top_k(values, k)
}

/// Indices of the `k` largest values, sorted ascending (ties towards the
/// lower index).
pub use seal_data::ranking::top_k;

pub use seal_data::ranking::kept_set_sha256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_basics() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.9, 0.8], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.1, 0.2], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(
            auroc(&[0.1, 0.4, 0.35, 0.8], &[false, true, false, true]),
            Some(1.0)
        );
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // one swapped pair out of 4
        assert_eq!(
            auroc(&[0.1, 0.3, 0.2, 0.4], &[false, false, true, true]),
            Some(0.75)
        );
    }

    #[test]
    fn top_fraction_and_hash() {
        let v = [0.3, 0.9, 0.1, 0.9, 0.5];
        assert_eq!(top_fraction(&v, 0.4), vec![1, 3]);
        assert_eq!(top_fraction(&v, 0.6), vec![1, 3, 4]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        // sha256("0,10,13")
        assert_eq!(kept_set_sha256(&[0, 10, 13]).len(), 64);
        assert_eq!(
            kept_set_sha256(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
