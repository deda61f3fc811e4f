//! Pure ranking maths on score lists, shared by the solvers (seal-bilevel),
//! the selection rules and the metrics (seal-eval) without tying one to
//! another: AUROC with exact tie counts, the official top-k order, and the
//! fingerprints that tie a ranker to its data and a kept set to its hash.
//!
//! Convention: a good ranker gives harmful samples **low** scores; AUROC =
//! P(score_benign > score_harmful) + ½·P(tie), the Mann–Whitney U statistic
//! over `n_benign · n_harmful`, by one sort with exact integer pair counts.

use crate::tokenize::TokenizedSample;
use sha2::{Digest, Sha256};

/// Scores sorted ascending, each tagged harmful (`true`) or not.
pub fn sorted_tagged(benign: &[f64], harmful: &[f64]) -> Vec<(f64, bool)> {
    let mut all: Vec<(f64, bool)> = benign
        .iter()
        .map(|&s| (s, false))
        .chain(harmful.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all
}

/// Groups of equal scores in an ascending list: `(n_benign, n_harmful)` each.
pub fn tie_groups(sorted: &[(f64, bool)]) -> Vec<(u64, u64)> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        let (mut b, mut h) = (0u64, 0u64);
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            if sorted[j].1 {
                h += 1;
            } else {
                b += 1;
            }
            j += 1;
        }
        groups.push((b, h));
        i = j;
    }
    groups
}

/// AUROC = P(benign > harmful) + ½ P(tie); `None` when either list is empty
/// or a score is not finite. O(n log n).
pub fn auroc(benign: &[f64], harmful: &[f64]) -> Option<f64> {
    if benign.is_empty() || harmful.is_empty() {
        return None;
    }
    if benign.iter().chain(harmful).any(|s| !s.is_finite()) {
        return None;
    }
    // Twice the number of winning pairs plus the number of tied pairs.
    let (mut twice, mut harmful_below) = (0u128, 0u128);
    for (b, h) in tie_groups(&sorted_tagged(benign, harmful)) {
        twice += 2 * u128::from(b) * harmful_below + u128::from(b) * u128::from(h);
        harmful_below += u128::from(h);
    }
    let pairs = benign.len() as f64 * harmful.len() as f64;
    Some(twice as f64 / 2.0 / pairs)
}

/// Indices of the `k` highest scores (ties towards the lower index), in
/// increasing index order.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k.min(scores.len()));
    order.sort_unstable();
    order
}

/// SHA-256 of the ids joined by newlines: the fingerprint of data known only
/// by its sample ids (`ids-sha256:…`).
pub fn fingerprint_ids<S: AsRef<str>>(ids: &[S]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_ref().as_bytes());
        h.update(b"\n");
    }
    format!("ids-sha256:{:x}", h.finalize())
}

/// SHA-256 over the tokenised fine-tuning samples (ids, tokens, loss
/// start): what a ranker's logits are about (`tokens-sha256:…`).
pub fn dataset_fingerprint(samples: &[TokenizedSample]) -> String {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.id.as_bytes());
        h.update([0u8]);
        h.update((s.response_start as u64).to_le_bytes());
        for t in &s.input_ids {
            h.update(t.to_le_bytes());
        }
        h.update([1u8]);
    }
    format!("tokens-sha256:{:x}", h.finalize())
}

/// SHA-256 (lowercase hex) of the indices joined by commas, no spaces: the
/// kept-set hash `shared/data/README.md` documents.
pub fn kept_set_sha256(indices: &[usize]) -> String {
    let text = indices
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ties_half_and_refuses_non_finite_scores() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auroc(&[0.5], &[0.5]), Some(0.5));
        assert_eq!(auroc(&[0.3, 0.4], &[0.1, 0.35]), Some(0.75));
        assert_eq!(auroc(&[], &[0.1]), None);
        assert_eq!(auroc(&[f64::NAN], &[0.1]), None);
        assert_eq!(top_k(&[0.3, 0.9, 0.1, 0.9], 2), vec![1, 3]);
    }
}
