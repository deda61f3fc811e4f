//! Property tests of the budgeted rules.

use proptest::prelude::*;
use seal_data::{Label, Message, Sample};
use seal_select::rules::{Oracle, Random, SelectionRule, TopP};
use seal_select::{Budget, SelectionInput};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("id{i}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Top-p keeps exactly floor(p·N), every kept score is at least every
    /// cut score, ranks are a permutation with the kept first, and ties at
    /// the cut go to the lower index.
    #[test]
    fn top_p_keeps_int_p_n_dominating(
        // Few distinct values: many ties.
        scores in prop::collection::vec((0i32..6).prop_map(f64::from), 1..60),
        p in 0.01f64..=1.0,
    ) {
        let n = scores.len();
        let id = ids(n);
        let input = SelectionInput::new(&id).unwrap().with_scores(&scores).unwrap();
        let k = (p * n as f64) as usize;
        match (TopP { p }).select(&input) {
            Ok(s) => {
                prop_assert!(k >= 1);
                prop_assert_eq!(s.num_kept(), k);
                let kept = s.kept_indices();
                let min_kept = kept.iter().map(|&i| scores[i]).fold(f64::INFINITY, f64::min);
                for (i, e) in s.entries.iter().enumerate() {
                    if !e.kept {
                        prop_assert!(scores[i] <= min_kept);
                        // Tie at the cut: every kept equal score has a lower index.
                        if scores[i] == min_kept {
                            prop_assert!(kept.iter().filter(|&&j| scores[j] == min_kept).all(|&j| j < i));
                        }
                    }
                    prop_assert_eq!(e.kept, e.rank <= k);
                }
                let mut ranks: Vec<usize> = s.entries.iter().map(|e| e.rank).collect();
                ranks.sort_unstable();
                prop_assert_eq!(ranks, (1..=n).collect::<Vec<_>>());
            }
            Err(e) => {
                prop_assert_eq!(k, 0, "{}", e);
            }
        }
    }

    /// The random rule is a function of its seed and keeps exactly k.
    #[test]
    fn random_is_deterministic(n in 1usize..80, k_frac in 0.0f64..1.0, seed in any::<u64>()) {
        let id = ids(n);
        let input = SelectionInput::new(&id).unwrap();
        let k = 1 + ((n - 1) as f64 * k_frac) as usize;
        let rule = Random { budget: Budget::Count(k), seed };
        let a = rule.select(&input).unwrap();
        prop_assert_eq!(a.num_kept(), k);
        prop_assert_eq!(a, rule.select(&input).unwrap());
    }

    /// The oracle keeps exactly the non-harmful samples.
    #[test]
    fn oracle_removes_exactly_harmful(labels in prop::collection::vec(0u8..3, 1..40)) {
        let samples: Vec<Sample> = labels.iter().enumerate().map(|(i, &l)| Sample {
            id: format!("id{i}"),
            source: "s".into(),
            label: Some(Label::ALL[l as usize]),
            messages: vec![Message::user("q"), Message::assistant("a")],
            reference: None,
            prefill: None,
        }).collect();
        let id = ids(samples.len());
        let input = SelectionInput::new(&id).unwrap().with_samples(&samples).unwrap();
        let harmless: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].label != Some(Label::Harmful)).collect();
        match Oracle.select(&input) {
            Ok(s) => prop_assert_eq!(s.kept_indices(), harmless),
            Err(_) => prop_assert!(harmless.is_empty()),
        }
    }
}
