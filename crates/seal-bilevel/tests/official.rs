//! Import of the official SEAL selectors (`../shared/data/seal-official`),
//! checked against the facts in `shared/data/README.md`.

use seal_bilevel::metrics::{kept_set_sha256, top_fraction};
use seal_bilevel::official::import_selector;
use seal_bilevel::{Activation, Ranker};
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

fn check(name: &str, n: usize, min: f64, max: f64, mean: f64, hashes: &[(f64, usize, &str)]) {
    let Some(pt) = shared(name) else { return };
    let r = import_selector(&pt, None).unwrap();
    assert_eq!(r.len(), n);
    assert_eq!(r.activation(), Activation::Softmax);
    assert_eq!(r.ids()[0], "0");
    assert_eq!(r.ids()[n - 1], (n - 1).to_string());
    let v = r.logits_vec().unwrap();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let avg = v.iter().sum::<f64>() / n as f64;
    assert!(
        (lo - min).abs() < 1e-4 && (hi - max).abs() < 1e-4 && (avg - mean).abs() < 1e-4,
        "{lo} {hi} {avg}"
    );
    for &(p, k, hash) in hashes {
        let kept = top_fraction(&v, p);
        assert_eq!(kept.len(), k);
        assert_eq!(kept_set_sha256(&kept), hash, "{name} top-{p}");
    }
    // Save / load round trip keeps the logits bit for bit.
    let dir = tempfile::tempdir().unwrap();
    r.save(dir.path()).unwrap();
    let back = Ranker::load(dir.path()).unwrap();
    assert_eq!(back.logits_vec().unwrap(), v);
    assert!(back.source.unwrap().contains(name));
}

#[test]
fn llama3_selector() {
    check(
        "seal_selector_llama3.pt",
        111_900,
        21.2455,
        26.2943,
        22.9786,
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
fn phi3_selector() {
    check(
        "seal_selector_phi3.pt",
        111_812,
        5.8098,
        7.0972,
        6.3221,
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

#[test]
fn truncated_archive_is_an_error_naming_the_file() {
    let Some(pt) = shared("seal_selector_phi3.pt") else {
        return;
    };
    let bytes = std::fs::read(&pt).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cut.pt");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = import_selector(&bad, None).unwrap_err().to_string();
    assert!(e.contains("cut.pt"), "{e}");
    // Flip a byte inside the storage: the CRC check catches it.
    let mut flipped = bytes.clone();
    flipped[1000] ^= 0xFF;
    let f = dir.path().join("flipped.pt");
    std::fs::write(&f, &flipped).unwrap();
    let e = import_selector(&f, None).unwrap_err().to_string();
    assert!(e.contains("CRC"), "{e}");
}
