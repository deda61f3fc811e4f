//! Checks that a ranker belongs to the dataset it is applied to.
//!
//! A ranker (`seal rank`, or an official SEAL selector imported with `seal
//! import-selector`; Shen et al., ICLR 2025, <https://github.com/hanshen95/SEAL>)
//! stores one logit per sample id, in order, and a fingerprint of the data
//! it was trained on. Applying it to other data would keep the wrong
//! samples without any visible symptom, so the ids must match position by
//! position and the fingerprint must be reproducible:
//!
//! * `ids-sha256:…` ([`seal_data::ranking::fingerprint_ids`]) is recomputed
//!   from the dataset's ids;
//! * `tokens-sha256:…` ([`seal_data::ranking::dataset_fingerprint`]) depends on the
//!   tokeniser and `max_len` the ranker was trained with; it is compared when
//!   the caller passes the fingerprint of the tokenised dataset, and reported
//!   as not verified otherwise.

use crate::error::{Result, SelectError};
use seal_data::ranking::fingerprint_ids;
use std::collections::HashSet;

/// Prefix of fingerprints over sample ids.
pub const IDS_FINGERPRINT_PREFIX: &str = "ids-sha256:";
/// Prefix of fingerprints over tokenised samples.
pub const TOKENS_FINGERPRINT_PREFIX: &str = "tokens-sha256:";

/// How far the fingerprint could be checked (the ids always are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FingerprintCheck {
    /// The fingerprint was recomputed and matches.
    Verified,
    /// The ids match, but the fingerprint could not be recomputed.
    NotVerified {
        /// Why not.
        reason: String,
    },
}

/// What is compared: a ranker (by name, ids and fingerprint) and a dataset
/// (by name and ids).
#[derive(Debug, Clone, Copy)]
pub struct RankerDataset<'a> {
    /// The ranker's name in errors (e.g. its directory).
    pub ranker: &'a str,
    /// The ranker's sample ids, in logit order.
    pub ranker_ids: &'a [String],
    /// The ranker's data fingerprint.
    pub fingerprint: &'a str,
    /// The dataset's name in errors (e.g. its file).
    pub dataset: &'a str,
    /// The dataset's sample ids, in order.
    pub dataset_ids: &'a [String],
}

impl RankerDataset<'_> {
    fn mismatch(&self, message: String) -> SelectError {
        SelectError::Mismatch {
            ranker: self.ranker.to_string(),
            dataset: self.dataset.to_string(),
            message,
        }
    }

    /// Checks ids and fingerprint. `tokens_fingerprint` is the
    /// `tokens-sha256:` fingerprint of the tokenised dataset, when the
    /// caller computed it. Errors describe the first difference.
    pub fn check(&self, tokens_fingerprint: Option<&str>) -> Result<FingerprintCheck> {
        let (r, d) = (self.ranker_ids, self.dataset_ids);
        if r.len() != d.len() {
            let rs: HashSet<&str> = r.iter().map(String::as_str).collect();
            let ds: HashSet<&str> = d.iter().map(String::as_str).collect();
            let detail = if let Some(id) = d.iter().find(|id| !rs.contains(id.as_str())) {
                format!("; dataset id `{id}` is not in the ranker")
            } else if let Some(id) = r.iter().find(|id| !ds.contains(id.as_str())) {
                format!("; ranker id `{id}` is not in the dataset")
            } else {
                String::new()
            };
            return Err(self.mismatch(format!(
                "the ranker scores {} samples, the dataset has {}{detail}",
                r.len(),
                d.len()
            )));
        }
        if let Some(i) = (0..r.len()).find(|&i| r[i] != d[i]) {
            let rs: HashSet<&str> = r.iter().map(String::as_str).collect();
            let same_set = d.iter().all(|id| rs.contains(id.as_str()));
            return Err(self.mismatch(format!(
                "position {i}: the ranker has id `{}`, the dataset `{}`{}",
                r[i],
                d[i],
                if same_set {
                    " (the same ids in another order)"
                } else {
                    ""
                }
            )));
        }
        if self.fingerprint.starts_with(IDS_FINGERPRINT_PREFIX) {
            let fp = fingerprint_ids(d);
            if fp != self.fingerprint {
                return Err(self.mismatch(format!(
                    "fingerprint {} (ranker) vs {fp} (dataset ids)",
                    self.fingerprint
                )));
            }
            return Ok(FingerprintCheck::Verified);
        }
        if self.fingerprint.starts_with(TOKENS_FINGERPRINT_PREFIX) {
            return match tokens_fingerprint {
                Some(fp) if fp == self.fingerprint => Ok(FingerprintCheck::Verified),
                Some(fp) => Err(self.mismatch(format!(
                    "fingerprint {} (ranker) vs {fp} (tokenised dataset): other sample \
                     content, tokeniser, chat template or max_len",
                    self.fingerprint
                ))),
                None => Ok(FingerprintCheck::NotVerified {
                    reason: "the ranker's fingerprint is over tokenised samples; give the \
                             model (tokeniser) and max_len it was trained with to verify it"
                        .into(),
                }),
            };
        }
        Ok(FingerprintCheck::NotVerified {
            reason: format!("unknown fingerprint scheme `{}`", self.fingerprint),
        })
    }
}
