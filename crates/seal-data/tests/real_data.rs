//! Readers on the real public files in `../shared/data`.

mod common;

use seal_data::readers::{read_samples, Format, HhSide, ReadOptions};
use seal_data::{DataError, Label, Role};

fn opts() -> ReadOptions {
    ReadOptions::default()
}

#[test]
fn gsm8k_alpaca_dolly_safeinstr() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let r = read_samples(d.join("gsm8k/train.jsonl"), Format::Gsm8k, &opts()).unwrap();
    assert_eq!(r.samples.len(), 7473);
    assert!(r.skipped.is_empty());
    assert_eq!(r.samples[0].id, "train:00000");
    assert_eq!(r.samples[0].reference.as_deref(), Some("72"));
    assert_eq!(r.samples[7472].id, "train:07472");
    let t = read_samples(d.join("gsm8k/test.jsonl"), Format::Gsm8k, &opts()).unwrap();
    assert_eq!(t.samples.len(), 1319);

    let a = read_samples(
        d.join("alpaca-safety-subset/alpaca_data_safety_only.json"),
        Format::Alpaca,
        &opts(),
    )
    .unwrap();
    assert_eq!(a.samples.len(), 1904);
    // 451 records have a non-empty `input`, joined after the instruction.
    assert!(
        a.samples
            .iter()
            .filter(|s| s.messages[0].content.contains("\n\n"))
            .count()
            >= 451
    );
    let dl = read_samples(
        d.join("dolly-safety-subset/databricks-dolly-15k-safety-only.jsonl"),
        Format::Dolly,
        &opts(),
    )
    .unwrap();
    assert_eq!(dl.samples.len(), 387);
    let s = read_samples(
        d.join("safety-tuned-llamas/safety_only_data_Instructions.json"),
        Format::Alpaca,
        &ReadOptions {
            label: Some(Label::Safe),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(s.samples.len(), 2483);
    assert!(s.samples.iter().all(|x| x.label == Some(Label::Safe)));
}

#[test]
fn hh_rlhf_gz_strict_and_lenient() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let path = d.join("hh-rlhf/harmless-base-test.jsonl.gz");
    // Strict: some transcripts end with an empty assistant turn; the error
    // names file, line and field.
    let mut strict_err = None;
    for side in [HhSide::Chosen, HhSide::Rejected] {
        if let Err(e) = read_samples(
            &path,
            Format::HhRlhf,
            &ReadOptions {
                hh_side: side,
                ..opts()
            },
        ) {
            strict_err = Some(e);
        }
    }
    let e = strict_err.expect("the file has empty final responses");
    match &e {
        DataError::Field {
            path: p,
            line: Some(_),
            field,
            ..
        } => {
            assert!(p.ends_with("harmless-base-test.jsonl.gz"));
            assert!(field == "chosen" || field == "rejected", "{field}");
        }
        other => panic!("unexpected error {other}"),
    }
    let mut total_skipped = 0;
    for side in [HhSide::Chosen, HhSide::Rejected] {
        let r = read_samples(
            &path,
            Format::HhRlhf,
            &ReadOptions {
                hh_side: side,
                lenient: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(r.samples.len() + r.skipped.len(), 2312);
        total_skipped += r.skipped.len();
        assert!(r
            .samples
            .iter()
            .all(|s| s.response().is_some() && s.check().is_ok()));
        // Multi-turn transcripts are kept as alternating turns.
        let multi = r.samples.iter().filter(|s| s.messages.len() > 2).count();
        assert!(multi > 1500, "{multi} multi-turn");
        assert!(r.samples.iter().all(|s| s.messages[0].role == Role::User));
    }
    assert_eq!(total_skipped, 4);
}

#[test]
fn jailbreakbench_and_advbench() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let mut harmful = 0;
    let mut nulls = 0;
    let mut total = 0;
    for e in std::fs::read_dir(d.join("jailbreakbench")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let r = read_samples(&p, Format::JailbreakBench, &opts()).unwrap();
        harmful += r
            .samples
            .iter()
            .filter(|s| s.label == Some(Label::Harmful))
            .count();
        nulls += r
            .skipped_counts()
            .get("null response")
            .copied()
            .unwrap_or(0);
        total += r.samples.len() + r.skipped.len();
    }
    assert_eq!((total, harmful, nulls), (1800, 937, 163));

    let a = read_samples(
        d.join("advbench/harmful_behaviors.csv"),
        Format::AdvBench,
        &opts(),
    )
    .unwrap();
    assert_eq!(a.samples.len(), 520);
    assert!(a
        .samples
        .iter()
        .all(|s| s.response().is_none() && s.label == Some(Label::Harmful)));
    assert!(a
        .samples
        .iter()
        .all(|s| !s.messages[0].content.starts_with('"')));
}

#[test]
fn mt_bench_with_user_keys() {
    let Some(d) = common::shared_data() else {
        return;
    };
    // MT-Bench questions have `turns` (a list): the keys reader reports the
    // field's type rather than guessing.
    let o = ReadOptions {
        input_key: Some("turns".into()),
        ..opts()
    };
    let e = read_samples(d.join("mt-bench/question.jsonl"), Format::Keys, &o).unwrap_err();
    assert!(
        e.to_string()
            .contains("question.jsonl:1: field `turns`: expected a string"),
        "{e}"
    );
    let o = ReadOptions {
        input_key: Some("category".into()),
        ..opts()
    };
    let r = read_samples(d.join("mt-bench/question.jsonl"), Format::Keys, &o).unwrap();
    assert_eq!(r.samples.len(), 80);
}
