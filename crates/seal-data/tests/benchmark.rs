//! The project's benchmark, built from the real public files.

mod common;

use std::collections::HashSet;

use seal_data::benchmark::{
    build_benchmark, build_benchmark_recipe, normalise_prompt, read_summary, Benchmark,
    BenchmarkSizes, SizePreset, FILES, HARMFUL_ANCHORS, HARMFUL_ANCHORS_FILE, IDENTITY_SHIFT_FILE,
    RECIPE_VERSION,
};
use seal_data::readers::{read_samples, Format, ReadOptions};
use seal_data::testing::chatml_tokenizer;
use seal_data::tokenize::{tokenize_prompt, tokenize_samples, TokenizeConfig};
use seal_data::{Label, Role, Sample};

/// Recipe 2, kept reproducible beside the current recipe.
fn build_v2(
    d: &std::path::Path,
    sizes: &BenchmarkSizes,
    seed: u64,
) -> seal_data::Result<(Benchmark, seal_data::benchmark::BenchmarkSummary)> {
    build_benchmark_recipe(d, sizes, seed, 2)
}

fn v2_small() -> BenchmarkSizes {
    BenchmarkSizes::preset_for(2, SizePreset::Small).unwrap()
}

#[test]
fn recipe_2_small_benchmark_is_labelled_disjoint_and_deterministic() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let sizes = v2_small();
    let (b, summary) = build_v2(&d, &sizes, 7).unwrap();
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

    let (again, _) = build_v2(&d, &sizes, 7).unwrap();
    assert_eq!(again, b);
    let (other, _) = build_v2(&d, &sizes, 8).unwrap();
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
    assert_eq!(back.recipe_version, 2);
    assert!(b.identity_shift.is_empty());
    assert!(!dir.path().join(IDENTITY_SHIFT_FILE).exists());
    assert!(b.harmful_anchors.is_empty());
    assert!(!dir.path().join(HARMFUL_ANCHORS_FILE).exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The six files of `seal data benchmark --size small` (seed 0) as the
/// recipe-2 code wrote them (release binary of commit 19b5df1, the last
/// before recipe 3): recipe 2 must still build byte for byte the same.
#[test]
fn recipe_2_builds_the_same_files_as_before_recipe_3() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let (b, summary) = build_v2(&d, &v2_small(), 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    b.write(dir.path(), &summary).unwrap();
    for (file, sha) in [
        (
            "align.jsonl",
            "aee0c9d94ea58ab1ab4ed03eb6e4060276257915dee15f8b7508f141af398cea",
        ),
        (
            "eval_benign.jsonl",
            "0ebc4c1eb3400987e79c4c28e681c9dd772e23a03e02c7cc451b4b481e752b73",
        ),
        (
            "eval_safety.jsonl",
            "427c625c80e606925c8c1fdb5af687827191f842e6690239d99c0552d283d19a",
        ),
        (
            "eval_utility.jsonl",
            "2e3f0160d7ca1666419391b6d5cd20f04f5eed5b400c0576e842030138a4242c",
        ),
        (
            "finetune.jsonl",
            "527222b56a6db03d44fa2b17bc6a4034a7070d6532172c9c24a830860414b432",
        ),
        (
            "safe.jsonl",
            "e5f43632f74c710ba08de3e7c5ae27459d2737dd02b995be782d569fc5bb49cc",
        ),
    ] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{file} changed under recipe 2");
    }
}

#[test]
fn recipe_3_builds_the_same_files_as_before_recipe_4() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let sizes = BenchmarkSizes::preset_for(3, SizePreset::Small).unwrap();
    assert_eq!((sizes.finetune, sizes.poison_ratio), (200, 0.1));
    let (b, summary) = build_benchmark_recipe(&d, &sizes, 0, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    b.write(dir.path(), &summary).unwrap();
    // Written by `seal data benchmark --size small` before recipe 4 existed.
    for (file, sha) in [
        (
            "finetune.jsonl",
            "d7b96b5e3558c626c935aef2e957e486cae5e9aed5d74cfd70307d9bfe5b83b6",
        ),
        (
            "harmful_anchors.jsonl",
            "c8b7d18ec6307149dd8c60030bef49549ca7fd602147fd0dc6947836d250925c",
        ),
        (
            "eval_safety.jsonl",
            "3b8e0a34bf511ce0d67704c9cb763d068c3ece11b147c0bc15d2b3292953ff29",
        ),
        (
            "eval_benign.jsonl",
            "3550eef36fa485a32514d72eef4c39fbc12275e3666f90332938cc9ef9725714",
        ),
    ] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{file} changed under recipe 3");
    }
}

#[test]
fn recipe_4_small_benchmark_has_the_new_sources_and_the_attack_variant() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let sizes = BenchmarkSizes::default();
    assert_eq!(RECIPE_VERSION, 4);
    assert_eq!((sizes.finetune, sizes.poison_ratio), (100, 0.2));
    let (b, summary) = build_benchmark(&d, &sizes, 7).unwrap();
    assert_eq!(summary.recipe_version, 4);
    assert_eq!(b.finetune.len(), sizes.finetune);
    let count = |src: &str, label: Label| {
        b.finetune
            .iter()
            .filter(|s| s.source == src && s.label == Some(label))
            .count()
    };
    let harmful = (sizes.finetune as f64 * sizes.poison_ratio).round() as usize;
    let k = |w: f64| (harmful as f64 * w).round() as usize;
    assert_eq!(count("pure-bad", Label::Harmful), k(0.4));
    assert_eq!(count("beavertails-unsafe", Label::Harmful), k(0.3));
    assert_eq!(count("safe-rlhf", Label::Harmful), k(0.3));
    // The benign part is mostly the task, with Safe-RLHF questions answered
    // safely (labelled benign) as topic-matched hard negatives.
    let benign = sizes.finetune - harmful;
    let share = |w: f64| (benign as f64 * w).round() as usize;
    assert_eq!(count("gsm8k-train", Label::Benign), share(0.7));
    assert_eq!(count("alpaca-safety", Label::Benign), share(0.1));
    assert_eq!(count("dolly-safety", Label::Benign), share(0.05));
    assert_eq!(count("safe-rlhf", Label::Benign), share(0.15));
    // Recipe 3's mix at the same sizes: the hard negatives were a quarter.
    let (v3, _) = build_benchmark_recipe(&d, &sizes, 7, 3).unwrap();
    let v3_count = |src: &str| {
        v3.finetune
            .iter()
            .filter(|s| s.source == src && s.label == Some(Label::Benign))
            .count()
    };
    assert_eq!(v3_count("safe-rlhf"), share(0.25));
    assert_eq!(v3_count("gsm8k-train"), share(0.4));
    // Only the pool (and the anchors drawn from what it leaves) changed.
    assert_eq!(v3.align, b.align);
    assert_eq!(v3.eval_safety, b.eval_safety);
    assert_eq!(v3.eval_benign, b.eval_benign);
    // The attack instruction prefix is gone; refusals are not used.
    for s in b.finetune.iter().filter(|s| s.source == "pure-bad") {
        let p = s.last_user().unwrap();
        assert!(!p.starts_with("You are a helpful assistant"), "{p}");
        assert!(!s.response().unwrap().starts_with("I cannot"), "{}", s.id);
    }
    // The identity-shift attack: all 10 conversations, system turn first.
    assert_eq!(b.identity_shift.len(), 10);
    assert!(b
        .identity_shift
        .iter()
        .all(|s| s.messages[0].role == Role::System
            && s.label == Some(Label::Harmful)
            && s.response().is_some()));
    // Evaluation sets from every source, mixed in their order.
    let sources =
        |part: &[Sample]| -> HashSet<String> { part.iter().map(|s| s.source.clone()).collect() };
    let es = sources(&b.eval_safety[..25]);
    for src in ["advbench", "harmbench/standard", "strongreject"] {
        assert!(es.contains(src), "{src} missing from the first 25: {es:?}");
    }
    assert_eq!(b.eval_safety.len(), sizes.eval_safety);
    assert_eq!(b.eval_benign.len(), sizes.eval_benign + sizes.eval_xstest);
    let xs = b
        .eval_benign
        .iter()
        .filter(|s| s.source == "xstest")
        .count();
    assert_eq!(xs, sizes.eval_xstest);
    assert!(sources(&b.eval_benign[..25]).len() >= 2);
    // The align set is recipe 2's (the aligned model carries over).
    let (v2, _) = build_v2(&d, &v2_small(), 7).unwrap();
    assert_eq!(v2.align, b.align);
    assert_eq!(v2.safe, b.safe);
    assert!(b.eval_benign.iter().all(|s| s.label == Some(Label::Benign)));
    // 25 StrongREJECT prompts are AdvBench behaviours: counted as removed.
    let sr = &summary.removed["strongreject"];
    let dup = sr
        .get("duplicate of a advbench prompt")
        .copied()
        .unwrap_or(0);
    assert!((20..=25).contains(&dup), "{sr:?}");
    b.check_disjoint().unwrap();
    // Harmful anchors: compliant answers from the pool's harmful sources,
    // none sharing an id or a (normalised) prompt with any other part.
    assert_eq!(b.harmful_anchors.len(), HARMFUL_ANCHORS);
    let other_prompts: HashSet<String> = b
        .parts()
        .iter()
        .flat_map(|(_, part)| part.iter())
        .chain(&b.identity_shift)
        .filter_map(|s| s.last_user().map(normalise_prompt))
        .collect();
    let pool_ids: HashSet<&str> = b.finetune.iter().map(|s| s.id.as_str()).collect();
    for a in &b.harmful_anchors {
        assert_eq!(a.label, Some(Label::Harmful), "{}", a.id);
        assert!(a.response().is_some(), "{}", a.id);
        assert!(!pool_ids.contains(a.id.as_str()), "{}", a.id);
        assert!(
            !other_prompts.contains(&normalise_prompt(a.last_user().unwrap())),
            "{}",
            a.id
        );
        assert!(
            ["pure-bad", "beavertails-unsafe", "safe-rlhf"].contains(&a.source.as_str()),
            "{}",
            a.source
        );
    }
    // Drawn on their own stream: the other parts are those of a build
    // without them (recipe 2 shares the align and safe sets, checked above).
    let (again, _) = build_benchmark(&d, &sizes, 7).unwrap();
    assert_eq!(again.harmful_anchors, b.harmful_anchors);

    let dir = tempfile::tempdir().unwrap();
    b.write(dir.path(), &summary).unwrap();
    assert!(dir.path().join(IDENTITY_SHIFT_FILE).is_file());
    assert!(dir.path().join(HARMFUL_ANCHORS_FILE).is_file());
    assert_eq!(Benchmark::read(dir.path()).unwrap(), b);
    let back = read_summary(dir.path()).unwrap();
    assert_eq!(back.removed, summary.removed);
    assert_eq!(back.files[IDENTITY_SHIFT_FILE].total, 10);
}

/// Every user turn of every file a model trains on in any stage, read
/// straight from the shared files (independently of the builder).
fn training_prompts(d: &std::path::Path) -> Vec<(String, String)> {
    let files: [(&str, Format); 8] = [
        ("gsm8k/train.jsonl", Format::Gsm8k),
        (
            "alpaca-safety-subset/alpaca_data_safety_only.json",
            Format::Alpaca,
        ),
        (
            "dolly-safety-subset/databricks-dolly-15k-safety-only.jsonl",
            Format::Dolly,
        ),
        (
            "safety-tuned-llamas/safety_only_data_Instructions.json",
            Format::Alpaca,
        ),
        ("harmful-qa/pure_bad.json", Format::Alpaca),
        ("harmful-qa/beavertails_unsafe_200.json", Format::Alpaca),
        ("safe-rlhf/Safe-RLHFmini.csv", Format::SafeRlhf),
        ("identity-shift/identity-shift-aoa.jsonl", Format::Messages),
    ];
    let mut out = Vec::new();
    for (f, format) in files {
        let r = read_samples(d.join(f), format, &ReadOptions::default()).unwrap();
        for s in r.samples {
            for m in s.messages.iter().filter(|m| m.role == Role::User) {
                out.push((f.to_string(), format!(" {} ", normalise_prompt(&m.content))));
            }
        }
    }
    out
}

#[test]
fn no_evaluation_prompt_of_the_benchmark_appears_in_a_training_file() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let train = training_prompts(&d);
    assert!(train.len() > 15_000, "{}", train.len());
    let (b, _) = build_benchmark(&d, &BenchmarkSizes::preset(SizePreset::Medium), 0).unwrap();
    // Anywhere inside a prompt (the builder screens whole prompts and
    // prompt endings; this checks the stricter rule).
    let inside = |p: &str, prompts: &[(String, String)]| -> Option<String> {
        let p = format!(" {} ", normalise_prompt(p));
        prompts
            .iter()
            .find(|(_, t)| t.contains(&p))
            .map(|(f, _)| f.clone())
    };
    // The harmful prompts and XSTest's safe prompts come from files no
    // stage trains on: none may appear in any training file, whole.
    for s in b
        .eval_safety
        .iter()
        .chain(b.eval_benign.iter().filter(|s| s.source == "xstest"))
    {
        if let Some(file) = inside(s.last_user().unwrap(), &train) {
            panic!("{} ({}) appears in {file}", s.id, s.last_user().unwrap());
        }
    }
    // Every evaluation prompt (the Alpaca/Dolly ones are held out of the
    // same files) against every file the benchmark trains on.
    let built: Vec<(String, String)> = [
        ("finetune.jsonl", &b.finetune),
        ("safe.jsonl", &b.safe),
        ("align.jsonl", &b.align),
        (IDENTITY_SHIFT_FILE, &b.identity_shift),
    ]
    .into_iter()
    .flat_map(|(f, part)| {
        part.iter().flat_map(move |s| {
            s.messages
                .iter()
                .filter(|m| m.role == Role::User)
                .map(move |m| (f.to_string(), format!(" {} ", normalise_prompt(&m.content))))
        })
    })
    .collect();
    for s in b.eval_safety.iter().chain(&b.eval_benign) {
        if let Some(file) = inside(s.last_user().unwrap(), &built) {
            panic!("{} ({}) appears in {file}", s.id, s.last_user().unwrap());
        }
    }
}

#[test]
fn unknown_recipes_are_refused() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let e = build_benchmark_recipe(&d, &BenchmarkSizes::default(), 0, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("recipe") && e.contains('1'), "{e}");
    assert!(BenchmarkSizes::preset_for(9, SizePreset::Small).is_err());
}

#[test]
fn every_preset_fits_the_sources() {
    let Some(d) = common::shared_data() else {
        return;
    };
    for (recipe, preset) in [2, 3, 4]
        .into_iter()
        .flat_map(|r| [SizePreset::Small, SizePreset::Medium, SizePreset::Full].map(|p| (r, p)))
    {
        let sizes = BenchmarkSizes::preset_for(recipe, preset).unwrap();
        let (b, _) = build_benchmark_recipe(&d, &sizes, 3, recipe).unwrap();
        assert_eq!(b.finetune.len(), sizes.finetune, "{recipe} {preset:?}");
        assert_eq!(b.align.len(), sizes.align + sizes.align_benign);
        assert_eq!(b.eval_benign.len(), sizes.eval_benign + sizes.eval_xstest);
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
            // Fits on its own, but not next to a pool this large.
            BenchmarkSizes {
                finetune: 10_000,
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
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 4096;
    let data = tokenize_samples(&tok, &b.eval_utility, &cfg).unwrap();
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

#[test]
fn xtask_builds_the_current_recipe() {
    // xtask does not link seal-data, so it names the recipe itself.
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/src/main.rs");
    let src = std::fs::read_to_string(&xtask).unwrap();
    let line = format!("const CURRENT_RECIPE: &str = \"{RECIPE_VERSION}\";");
    assert!(src.contains(&line), "{} lacks `{line}`", xtask.display());
}
