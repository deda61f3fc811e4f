//! Every rule on small synthetic inputs with exact expected kept sets.

use seal_data::{Label, Message, Sample};
use seal_select::dsir::{hashed_ngrams, words, Dsir};
use seal_select::rules::*;
use seal_select::{Budget, Objective, SelectError, SelectionInput};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

fn sample(id: &str, source: &str, label: Option<Label>, user: &str, answer: &str) -> Sample {
    Sample {
        id: id.into(),
        source: source.into(),
        label,
        messages: vec![Message::user(user), Message::assistant(answer)],
        reference: None,
        prefill: None,
    }
}

fn kept(rule: &dyn SelectionRule, input: &SelectionInput) -> Vec<usize> {
    rule.select(input).unwrap().kept_indices()
}

#[test]
fn top_p_top_k_threshold_exact_sets_and_ties() {
    let id = ids(6);
    let scores = [0.3, 0.9, 0.1, 0.9, 0.5, 0.2];
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_scores(&scores)
        .unwrap();
    // floor(0.5·6) = 3: the two 0.9s and 0.5.
    assert_eq!(kept(&TopP { p: 0.5 }, &input), vec![1, 3, 4]);
    // floor(0.34·6) = 2.
    assert_eq!(kept(&TopP { p: 0.34 }, &input), vec![1, 3]);
    // A tie at the cut: the lower index wins and ranks first.
    let s = TopK { k: 1 }.select(&input).unwrap();
    assert_eq!(s.kept_indices(), vec![1]);
    assert_eq!((s.entries[1].rank, s.entries[3].rank), (1, 2));
    assert_eq!(s.entries[2].rank, 6);
    assert_eq!(s.kept_ids(&input), vec!["s1"]);
    assert_eq!(kept(&TopP { p: 1.0 }, &input), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        kept(&Threshold { threshold: 0.3 }, &input),
        vec![0, 1, 3, 4]
    );
    // Default p is the official 0.8: floor(4.8) = 4.
    assert_eq!(TopP::default().p, 0.8);
    assert_eq!(kept(&TopP::default(), &input), vec![0, 1, 3, 4]);
}

#[test]
fn bad_parameters_and_empty_selections_are_errors() {
    let id = ids(3);
    let scores = [1.0, 2.0, 3.0];
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_scores(&scores)
        .unwrap();
    for p in [0.0, -0.1, 1.01, f64::NAN] {
        let e = TopP { p }.select(&input).unwrap_err();
        assert!(
            matches!(e, SelectError::Param { ref param, .. } if param == "p"),
            "{p}: {e}"
        );
    }
    // 0.2·3 rounds down to nothing.
    let e = TopP { p: 0.2 }.select(&input).unwrap_err();
    assert!(matches!(e, SelectError::EmptySelection { .. }), "{e}");
    assert!(TopK { k: 0 }.select(&input).is_err());
    let e = TopK { k: 4 }.select(&input).unwrap_err().to_string();
    assert!(e.contains("4") && e.contains("3 samples"), "{e}");
    let e = Threshold { threshold: 3.5 }
        .select(&input)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("keeps no sample") && e.contains("largest: 3"),
        "{e}"
    );
    // Score rules without scores name what is missing.
    let bare = SelectionInput::new(&id).unwrap();
    let e = TopP::default().select(&bare).unwrap_err().to_string();
    assert!(e.contains("top-p") && e.contains("scores"), "{e}");
    // Inconsistent inputs.
    assert!(SelectionInput::new(&[]).is_err());
    let dup = vec!["a".to_string(), "a".to_string()];
    assert!(SelectionInput::new(&dup)
        .unwrap_err()
        .to_string()
        .contains("`a`"));
    let e = SelectionInput::new(&id)
        .unwrap()
        .with_scores(&[1.0, f64::NAN, 2.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`s1`") && e.contains("NaN"), "{e}");
    assert!(SelectionInput::new(&id)
        .unwrap()
        .with_scores(&[1.0])
        .is_err());
}

#[test]
fn full_soft_and_mixed_keep_everything() {
    let id = ids(4);
    let scores = [0.1, 0.4, 0.3, 0.2];
    let weights = [0.5, 1.5, 1.2, 0.8];
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_scores(&scores)
        .unwrap()
        .with_weights(&weights)
        .unwrap();
    let full = Full.select(&input).unwrap();
    assert_eq!(full.num_kept(), 4);
    assert_eq!(full.objective, Objective::Standard);
    let ranks: Vec<usize> = full.entries.iter().map(|e| e.rank).collect();
    assert_eq!(ranks, vec![4, 1, 2, 3]);
    let soft = SoftWeights.select(&input).unwrap();
    assert_eq!(soft.num_kept(), 4);
    assert_eq!(soft.objective, Objective::Weighted);
    let w: Vec<f64> = soft.entries.iter().map(|e| e.weight.unwrap()).collect();
    assert_eq!(w, weights);
    assert!(SoftWeights
        .select(&SelectionInput::new(&id).unwrap())
        .is_err());
    let mixed = MixedObjective { lambda: 0.3 }.select(&input).unwrap();
    assert_eq!(mixed.num_kept(), 4);
    assert_eq!(mixed.objective, Objective::Mixed { lambda: 0.3 });
    assert!(MixedObjective { lambda: 1.5 }.select(&input).is_err());
    // Full needs nothing but ids.
    assert_eq!(
        Full.select(&SelectionInput::new(&id).unwrap())
            .unwrap()
            .num_kept(),
        4
    );
}

#[test]
fn random_is_seeded_and_sized() {
    let id = ids(50);
    let input = SelectionInput::new(&id).unwrap();
    let a = Random {
        budget: Budget::Fraction(0.3),
        seed: 7,
    }
    .select(&input)
    .unwrap();
    let b = Random {
        budget: Budget::Fraction(0.3),
        seed: 7,
    }
    .select(&input)
    .unwrap();
    let c = Random {
        budget: Budget::Fraction(0.3),
        seed: 8,
    }
    .select(&input)
    .unwrap();
    assert_eq!(a.num_kept(), 15);
    assert_eq!(a, b);
    assert_ne!(a.kept_indices(), c.kept_indices());
    // Kept samples hold the largest random keys.
    let min_kept = a
        .entries
        .iter()
        .filter(|e| e.kept)
        .map(|e| e.score)
        .fold(1.0, f64::min);
    assert!(a
        .entries
        .iter()
        .filter(|e| !e.kept)
        .all(|e| e.score < min_kept));
    assert_eq!(
        Random {
            budget: Budget::Count(3),
            seed: 1
        }
        .select(&input)
        .unwrap()
        .num_kept(),
        3
    );
}

#[test]
fn stratified_keeps_each_sources_share() {
    // Source a: 6 samples, b: 3, c: 1 (10 in all); keep 5.
    let mut samples = Vec::new();
    for i in 0..10 {
        let src = if i < 6 {
            "a"
        } else if i < 9 {
            "b"
        } else {
            "c"
        };
        samples.push(sample(&format!("x{i}"), src, None, "q", "r"));
    }
    let id: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
    let scores = [1.0, 6.0, 2.0, 5.0, 3.0, 4.0, 0.5, 0.7, 0.6, 9.0];
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&samples)
        .unwrap()
        .with_scores(&scores)
        .unwrap();
    // Quotas 5·6/10 = 3, 5·3/10 = 1.5, 5·1/10 = 0.5: b's remainder 5 ties
    // c's; b sorts first and gets the extra slot: a 3, b 2, c 0.
    let s = Stratified {
        budget: Budget::Count(5),
        seed: 0,
    }
    .select(&input)
    .unwrap();
    assert_eq!(s.kept_indices(), vec![1, 3, 5, 7, 8]);
    // Kept samples rank first.
    assert!(s.entries.iter().all(|e| e.kept == (e.rank <= 5)));
    // Without scores: seeded random within each source, same shares.
    let bare = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&samples)
        .unwrap();
    let r = Stratified {
        budget: Budget::Count(5),
        seed: 3,
    }
    .select(&bare)
    .unwrap();
    let per = |lo: usize, hi: usize| {
        r.kept_indices()
            .iter()
            .filter(|&&i| i >= lo && i < hi)
            .count()
    };
    assert_eq!((per(0, 6), per(6, 9), per(9, 10)), (3, 2, 0));
    assert_eq!(
        r,
        Stratified {
            budget: Budget::Count(5),
            seed: 3
        }
        .select(&bare)
        .unwrap()
    );
    assert!(Stratified {
        budget: Budget::Count(5),
        seed: 3
    }
    .select(&SelectionInput::new(&id).unwrap())
    .unwrap_err()
    .to_string()
    .contains("sources"));
}

#[test]
fn oracle_drops_exactly_the_harmful() {
    let labels = [
        Label::Benign,
        Label::Harmful,
        Label::Safe,
        Label::Harmful,
        Label::Benign,
    ];
    let samples: Vec<Sample> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| sample(&format!("o{i}"), "mix", Some(*l), "q", "r"))
        .collect();
    let id: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&samples)
        .unwrap();
    assert_eq!(kept(&Oracle, &input), vec![0, 2, 4]);
    let mut unlabelled = samples.clone();
    unlabelled[2].label = None;
    let e = Oracle
        .select(
            &SelectionInput::new(&id)
                .unwrap()
                .with_samples(&unlabelled)
                .unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("`o2`") && e.contains("no label"), "{e}");
    let all_bad: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            label: Some(Label::Harmful),
            ..s.clone()
        })
        .collect();
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&all_bad)
        .unwrap();
    assert!(matches!(
        Oracle.select(&input).unwrap_err(),
        SelectError::EmptySelection { .. }
    ));
    // Samples out of order relative to the ids are rejected.
    let mut swapped = samples.clone();
    swapped.swap(0, 1);
    let e = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&swapped)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`o1`") && e.contains("`o0`"), "{e}");
}

#[test]
fn safeinstr_adds_demonstrations() {
    let id = ids(3);
    let input = SelectionInput::new(&id).unwrap();
    let demos: Vec<Sample> = (0..4)
        .map(|i| {
            sample(
                &format!("safe{i}"),
                "safeinstr",
                Some(Label::Safe),
                "bad?",
                "No.",
            )
        })
        .collect();
    let all = SafeInstr {
        demos: demos.clone(),
        count: None,
        seed: 0,
    }
    .select(&input)
    .unwrap();
    assert_eq!(all.num_kept(), 3);
    assert_eq!(
        all.kept_ids(&input),
        vec!["s0", "s1", "s2", "safe0", "safe1", "safe2", "safe3"]
    );
    let two = SafeInstr {
        demos: demos.clone(),
        count: Some(2),
        seed: 5,
    }
    .select(&input)
    .unwrap();
    assert_eq!(two.added.len(), 2);
    assert!(two.added[0].id < two.added[1].id, "file order");
    assert!(SafeInstr {
        demos: demos.clone(),
        count: Some(5),
        seed: 5
    }
    .select(&input)
    .is_err());
    // A demonstration id colliding with a pool id.
    let clash = vec![sample("s1", "safeinstr", None, "q", "r")];
    let e = SafeInstr {
        demos: clash,
        count: None,
        seed: 0,
    }
    .select(&input)
    .unwrap_err();
    assert!(e.to_string().contains("`s1`"), "{e}");
}

#[test]
fn dsir_features_and_ranking() {
    assert_eq!(
        words("Hello, WORLD! it's 42"),
        vec!["hello", "world", "it", "s", "42"]
    );
    let (f, n) = hashed_ngrams("a b c", 10_000);
    assert_eq!((f.len(), n), (5, 3)); // 3 unigrams + 2 bigrams
    assert!(f.iter().all(|&b| b < 10_000));
    // Stable hash: the same text always lands in the same buckets.
    assert_eq!(hashed_ngrams("a b c", 10_000).0, f);

    let math = [
        "what is 12 plus 7 the answer is 19",
        "compute 3 times 4 the answer is 12",
        "what is 100 minus 1 the answer is 99",
    ];
    let cooking = [
        "whisk the eggs and fold in the flour",
        "bake the bread in a hot oven until golden",
        "simmer the tomato sauce with garlic and basil",
    ];
    let mut samples = Vec::new();
    for (i, t) in cooking.iter().chain(math.iter()).enumerate() {
        samples.push(sample(&format!("d{i}"), "pool", None, t, "ok"));
    }
    let id: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
    let input = SelectionInput::new(&id)
        .unwrap()
        .with_samples(&samples)
        .unwrap();
    let target: Vec<String> = [
        "what is 5 plus 5 the answer is 10",
        "compute 6 times 7 the answer is 42",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut dsir = Dsir::new(target, Budget::Count(3));
    dsir.gumbel = false;
    let s = dsir.select(&input).unwrap();
    assert_eq!(s.kept_indices(), vec![3, 4, 5], "{:?}", s.entries);
    let min_math = s.entries[3..]
        .iter()
        .map(|e| e.score)
        .fold(f64::INFINITY, f64::min);
    let max_cook = s.entries[..3]
        .iter()
        .map(|e| e.score)
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(min_math > max_cook, "{min_math} vs {max_cook}");
    // Gumbel resampling is seeded and, with these weight gaps, still
    // prefers the math texts on average.
    dsir.gumbel = true;
    let mut math_kept = 0;
    for seed in 0..40 {
        dsir.seed = seed;
        let a = dsir.select(&input).unwrap();
        assert_eq!(a, dsir.select(&input).unwrap());
        math_kept += a.kept_indices().iter().filter(|&&i| i >= 3).count();
    }
    assert!(math_kept > 40 * 3 * 2 / 3, "{math_kept} of 120");
    // Minimum length: only texts of at least 10 words (prompt + "ok") are
    // eligible: d1, d3 and d5.
    dsir.min_len = 10;
    dsir.gumbel = false;
    dsir.budget = Budget::Count(2);
    let s = dsir.select(&input).unwrap();
    assert_eq!(s.kept_indices(), vec![3, 5]);
    assert_eq!(s.entries[0].score, f64::NEG_INFINITY);
    dsir.budget = Budget::Count(4);
    let e = dsir.select(&input).unwrap_err().to_string();
    assert!(e.contains("min_len"), "{e}");
}
