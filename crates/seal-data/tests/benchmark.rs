//! The project's benchmark, built from the real public files.

mod common;

use std::collections::HashSet;

use seal_data::benchmark::{
    build_benchmark, read_summary, Benchmark, BenchmarkSizes, SizePreset, FILES, RECIPE_VERSION,
};
use seal_data::readers::{read_samples, Format, ReadOptions};
use seal_data::testing::chatml_tokenizer;
use seal_data::tokenize::{tokenize_prompt, tokenize_samples, TokenizeConfig};
use seal_data::{Label, Role, Sample};

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
    assert!(b.safe.iter().all(|s| s.label == Some(Label::Safe)));
    // align = SafeInstr refusals + a benign Alpaca/Dolly share, interleaved.
    assert_eq!(b.align.len(), sizes.align + sizes.align_benign);
    let refusals: Vec<_> = b
        .align
        .iter()
        .filter(|s| s.label == Some(Label::Safe))
        .collect();
    let benign: Vec<_> = b
        .align
        .iter()
        .filter(|s| s.label == Some(Label::Benign))
        .collect();
    assert_eq!(
        (refusals.len(), benign.len()),
        (sizes.align, sizes.align_benign)
    );
    assert!(refusals.iter().all(|s| s.source == "safeinstr"));
    assert!(benign
        .iter()
        .all(|s| s.source == "alpaca-safety" || s.source == "dolly-safety"));
    assert!(benign.iter().any(|s| s.source == "dolly-safety"));
    assert!(b.align.iter().all(|s| s.response().is_some()));
    let half = b.align.len() / 2;
    for part in [&b.align[..half], &b.align[half..]] {
        assert!(part.iter().any(|s| s.label == Some(Label::Safe)));
        assert!(part.iter().any(|s| s.label == Some(Label::Benign)));
    }
    // Held out from the pool and the benign evaluation prompts (by id: the
    // same source records; check_disjoint below checks the prompts).
    let held: HashSet<&str> = b
        .finetune
        .iter()
        .chain(&b.eval_benign)
        .map(|s| s.id.as_str())
        .collect();
    assert!(benign.iter().all(|s| !held.contains(s.id.as_str())));
    assert!(b
        .eval_safety
        .iter()
        .chain(&b.eval_benign)
        .all(|s| s.response().is_none()));
    assert_eq!(b.eval_utility.len(), sizes.eval_utility);
    assert!(b
        .eval_utility
        .iter()
        .all(|s| s.source == "gsm8k-test" && s.label == Some(Label::Benign)));
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
    assert_eq!(back.sizes.align_benign, sizes.align_benign);
    assert_eq!(
        back.files["align.jsonl"].by_label["benign"],
        sizes.align_benign
    );
    assert_eq!(back.recipe_version, RECIPE_VERSION);
}

#[test]
fn every_preset_fits_the_sources() {
    let Some(d) = common::shared_data() else {
        return;
    };
    for preset in [SizePreset::Small, SizePreset::Medium, SizePreset::Full] {
        let sizes = BenchmarkSizes::preset(preset);
        let (b, _) = build_benchmark(&d, &sizes, 3).unwrap();
        assert_eq!(b.finetune.len(), sizes.finetune, "{preset:?}");
        assert_eq!(b.align.len(), sizes.align + sizes.align_benign);
        assert_eq!(b.eval_benign.len(), sizes.eval_benign);
    }
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
    for (sizes, part) in [
        (
            BenchmarkSizes {
                align_benign: 3000,
                ..BenchmarkSizes::default()
            },
            "align_benign",
        ),
        (
            BenchmarkSizes {
                eval_benign: 3000,
                ..BenchmarkSizes::default()
            },
            "eval_benign",
        ),
        (
            // Fits on its own, but not next to the full pool.
            BenchmarkSizes {
                align_benign: 1500,
                ..BenchmarkSizes::preset(SizePreset::Full)
            },
            "benign part of the pool",
        ),
    ] {
        let e = build_benchmark(&d, &sizes, 1).unwrap_err().to_string();
        assert!(e.contains(part), "{e}");
    }
}

/// The GSM8K `answer` fields of a JSONL file, by line (= the ordinal in the
/// sample id), read straight from the file.
fn raw_gsm8k_answers(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["answer"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The position of a sample in its source file (`<source>:<ordinal>`).
fn ordinal(s: &Sample) -> usize {
    s.id.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn eval_utility_carries_the_gsm8k_solution_and_the_final_number() {
    let Some(d) = common::shared_data() else {
        return;
    };
    // `medium` is large enough to include final answers written with a
    // thousands separator (14 of the 1319 GSM8K test answers).
    let sizes = BenchmarkSizes::preset(SizePreset::Medium);
    let (b, summary) = build_benchmark(&d, &sizes, 0).unwrap();
    assert_eq!(b.eval_utility.len(), sizes.eval_utility);
    let raw = raw_gsm8k_answers(&d.join("gsm8k/test.jsonl"));
    let mut with_separator = 0;
    for s in &b.eval_utility {
        // [user question, assistant solution], nothing else.
        assert_eq!(s.messages.len(), 2, "{}", s.id);
        assert_eq!(s.messages[0].role, Role::User, "{}", s.id);
        assert_eq!(s.messages[1].role, Role::Assistant, "{}", s.id);
        // The solution verbatim from the source file, `#### n` line included.
        let answer = s.response().unwrap();
        assert_eq!(answer, raw[ordinal(s)], "{}", s.id);
        let (body, last) = answer.rsplit_once('\n').unwrap();
        assert!(!body.trim().is_empty(), "{}", s.id);
        let n = last
            .strip_prefix("#### ")
            .unwrap_or_else(|| panic!("{}", s.id));
        // `reference` is the final number (thousands separators dropped).
        let reference = s.reference.as_deref().unwrap();
        assert_eq!(n.replace(',', ""), reference, "{}", s.id);
        assert!(!reference.contains('#'), "{}", s.id);
        if n != reference {
            with_separator += 1;
        } else {
            assert!(answer.ends_with(&format!("#### {reference}")), "{}", s.id);
        }
    }
    assert!(
        with_separator > 0,
        "no reference with a separator was drawn"
    );
    assert_eq!(
        summary.files["eval_utility.jsonl"].by_label["benign"],
        sizes.eval_utility
    );

    // Rendered exactly as the pool renders GSM8K: the train samples of the
    // pool are the reader's samples unchanged, and so are these.
    let read = |rel: &str, source: &str| {
        read_samples(
            d.join(rel),
            Format::Gsm8k,
            &ReadOptions {
                source: Some(source.into()),
                label: Some(Label::Benign),
                ..Default::default()
            },
        )
        .unwrap()
        .samples
    };
    let train = read("gsm8k/train.jsonl", "gsm8k-train");
    let test = read("gsm8k/test.jsonl", "gsm8k-test");
    let pool_gsm: Vec<&Sample> = b
        .finetune
        .iter()
        .filter(|s| s.source == "gsm8k-train")
        .collect();
    assert!(!pool_gsm.is_empty());
    for s in pool_gsm {
        assert_eq!(s, &train[ordinal(s)]);
    }
    for s in &b.eval_utility {
        assert_eq!(s, &test[ordinal(s)]);
    }

    // Generation prompts hold the question and the assistant cue, never the
    // solution or its final line; the NLL path scores exactly the solution.
    let tok = chatml_tokenizer(None).unwrap();
    for s in &b.eval_utility {
        let prompt = tok
            .decode(&tokenize_prompt(&tok, None, s, false).unwrap(), false)
            .unwrap();
        let question = s.last_user().unwrap();
        assert!(
            prompt.ends_with(&format!("{question}<|im_end|>\n<|im_start|>assistant\n")),
            "{}: {prompt:?}",
            s.id
        );
        assert!(!prompt.contains("####"), "{}: {prompt:?}", s.id);
        assert!(!prompt.contains(s.response().unwrap()), "{}", s.id);
    }
    let data = tokenize_samples(
        &tok,
        &b.eval_utility,
        &TokenizeConfig {
            max_len: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data.summary.kept, sizes.eval_utility);
    for (t, s) in data.samples.iter().zip(&b.eval_utility) {
        let scored = tok.decode(t.response_ids(), false).unwrap();
        assert_eq!(scored, format!("{}<|im_end|>", s.response().unwrap()));
    }

    // The evaluation file round-trips with its assistant turns.
    let dir = tempfile::tempdir().unwrap();
    b.write(dir.path(), &summary).unwrap();
    assert_eq!(
        Benchmark::read(dir.path()).unwrap().eval_utility,
        b.eval_utility
    );
}
