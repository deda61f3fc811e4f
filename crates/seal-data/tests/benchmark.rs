//! The project's benchmark, built from the real public files.

mod common;

use std::collections::HashSet;

use seal_data::benchmark::{build_benchmark, read_summary, Benchmark, BenchmarkSizes, FILES};
use seal_data::Label;

#[test]
fn small_benchmark_is_labelled_disjoint_and_deterministic() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let sizes = BenchmarkSizes::default();
    let (b, summary) = build_benchmark(&d, &sizes, 7).unwrap();
    assert_eq!(b.finetune.len(), sizes.finetune);
    let harmful = b
        .finetune
        .iter()
        .filter(|s| s.label == Some(Label::Harmful))
        .count();
    assert_eq!(harmful, (sizes.finetune as f64 * 0.1).round() as usize);
    assert!(b
        .finetune
        .iter()
        .all(|s| s.response().is_some() && s.label.is_some()));
    let sources: HashSet<&str> = b
        .finetune
        .iter()
        .map(|s| s.source.split('/').next().unwrap())
        .collect();
    for src in [
        "gsm8k-train",
        "alpaca-safety",
        "dolly-safety",
        "jbb",
        "hh-harmless-rejected",
    ] {
        assert!(
            sources.contains(src),
            "{src} missing from the pool: {sources:?}"
        );
    }
    assert_eq!(b.safe.len(), sizes.safe);
    assert_eq!(b.align.len(), sizes.align);
    assert!(b
        .safe
        .iter()
        .chain(&b.align)
        .all(|s| s.label == Some(Label::Safe)));
    assert!(b
        .eval_safety
        .iter()
        .chain(&b.eval_utility)
        .chain(&b.eval_benign)
        .all(|s| s.response().is_none()));
    assert!(b.eval_utility.iter().all(|s| s.reference.is_some()));
    b.check_disjoint().unwrap();
    // The harmful part is labelled harmful whatever the source reader said.
    assert!(b
        .finetune
        .iter()
        .filter(|s| s.source.starts_with("jbb/"))
        .all(|s| s.label == Some(Label::Harmful)));
    assert_eq!(
        summary
            .sources
            .iter()
            .filter(|s| s.path.starts_with("jailbreakbench/"))
            .count(),
        18
    );
    let gsm = summary
        .sources
        .iter()
        .find(|s| s.path == "gsm8k/train.jsonl")
        .unwrap();
    assert_eq!(
        gsm.sha256,
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"
    );

    let (again, _) = build_benchmark(&d, &sizes, 7).unwrap();
    assert_eq!(again, b);
    let (other, _) = build_benchmark(&d, &sizes, 8).unwrap();
    assert_ne!(other.finetune, b.finetune);

    let dir = tempfile::tempdir().unwrap();
    b.write(dir.path(), &summary).unwrap();
    for f in FILES {
        assert!(dir.path().join(f).is_file());
    }
    assert_eq!(Benchmark::read(dir.path()).unwrap(), b);
    let back = read_summary(dir.path()).unwrap();
    assert_eq!(back.files["finetune.jsonl"].by_label["harmful"], harmful);
}

#[test]
fn oversized_requests_fail_clearly() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let sizes = BenchmarkSizes {
        eval_safety: 10_000,
        ..BenchmarkSizes::default()
    };
    let e = build_benchmark(&d, &sizes, 1).unwrap_err().to_string();
    assert!(e.contains("eval_safety"), "{e}");
}
