//! SEAL's top-p on the official selectors (`../shared/data/seal-official`)
//! reproduces the kept sets whose hashes `shared/data/README.md` gives.

// Needs the model-based rules and ranker loading.
#![cfg(feature = "torch")]

use seal_bilevel::official::import_selector;
use seal_select::output::kept_set_sha256;
use seal_select::ranker::RankerScores;
use seal_select::rules::{SelectionRule, TopP};
use std::path::PathBuf;

fn shared(name: &str) -> Option<PathBuf> {
    let p = seal_testkit::workspace_root()
        .join("..")
        .join("shared")
        .join("data")
        .join("seal-official")
        .join(name);
    if p.is_file() {
        Some(p)
    } else {
        seal_data::testing::skip("data", &format!("{} not found", p.display()));
        None
    }
}

fn check(name: &str, cases: &[(f64, usize, &str)]) {
    let Some(pt) = shared(name) else { return };
    let dir = tempfile::tempdir().unwrap();
    import_selector(&pt, None)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let scores = RankerScores::load(dir.path()).unwrap();
    let input = scores.input().unwrap();
    for &(p, k, hash) in cases {
        let s = TopP { p }.select(&input).unwrap();
        assert_eq!(s.num_kept(), k, "{name} p={p}");
        assert_eq!(kept_set_sha256(&s.kept_indices()), hash, "{name} p={p}");
        // Imported ids are the positions, so the kept ids are the indices.
        let ids = s.kept_ids(&input);
        assert_eq!(ids.len(), k);
        assert!(ids
            .iter()
            .zip(s.kept_indices())
            .all(|(id, i)| *id == i.to_string()));
    }
}

#[test]
fn llama3_top_p() {
    check(
        "seal_selector_llama3.pt",
        &[
            (
                0.8,
                89_520,
                "00bbff722b68b0b8dc33308e9eda304ae4d9b878a59d2716dfb2e14ca270a074",
            ),
            (
                0.5,
                55_950,
                "7716e24f59cbf2dd09afc93c53bb90c44b61ee6a1525e758639dfe3aca659f3e",
            ),
        ],
    );
}

#[test]
fn phi3_top_p() {
    check(
        "seal_selector_phi3.pt",
        &[
            (
                0.8,
                89_449,
                "a224eb806b022dd270dc54d168c022e85840917b9911be1336a16cd0e8364a9f",
            ),
            (
                0.5,
                55_906,
                "f70670fb9b69fff987f3a6a960e65b6caf5dceb46db63cd00ae68e9fa8c03872",
            ),
        ],
    );
}
