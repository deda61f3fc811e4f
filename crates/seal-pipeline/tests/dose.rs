//! The dose sweep end to end on a tiny random model and a small recipe-3
//! benchmark built from the shared files: every condition runs for every
//! seed, the gate pairs seeds, the report is written, and a resumed sweep
//! keeps what it measured but refuses other fine-tuning settings.

mod common;

use common::{config, tiny_model_dir};
use seal_data::benchmark::BenchmarkSizes;
use seal_pipeline::dose::{run_dose, DoseConfig};

#[test]
fn dose_sweep_runs_every_condition_and_pairs_the_gate() {
    let Some(shared) = seal_data::testing::shared_data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    cfg.out = root.join("dose");
    let sizes = BenchmarkSizes {
        finetune: 20,
        safe: 4,
        align: 6,
        align_benign: 6,
        eval_safety: 6,
        eval_utility: 6,
        eval_benign: 6,
        eval_xstest: 6,
        ..BenchmarkSizes::default()
    };
    let dose = DoseConfig {
        ratios: vec![0.0, 0.2],
        gate_ratio: 0.2,
        ..DoseConfig::new(shared, 3, sizes)
    };
    let r = run_dose(&cfg, &dose).unwrap();
    let names: Vec<&str> = r.conditions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ratio 0",
            "ratio 0.2",
            "ratio 0.2 benign part",
            "identity shift"
        ]
    );
    let harmful: Vec<usize> = r.conditions.iter().map(|c| c.harmful).collect();
    assert_eq!(harmful, [0, 4, 0, 10]);
    assert_eq!(r.conditions[2].samples, 16);
    assert_eq!(r.conditions[3].samples, 26);
    assert_eq!(r.runs.len(), 8, "four conditions × two seeds");
    // The gate's pair ran first, for both seeds.
    let first: Vec<(&str, u64)> = r.runs[..4]
        .iter()
        .map(|x| (x.condition.as_str(), x.seed))
        .collect();
    assert_eq!(
        first,
        [
            ("ratio 0.2", 1),
            ("ratio 0.2 benign part", 1),
            ("ratio 0.2", 2),
            ("ratio 0.2 benign part", 2)
        ]
    );
    let gate = r.gate.as_ref().unwrap();
    assert_eq!(gate.judge, "keyword-gcg", "no trained judge configured");
    assert_eq!(gate.gaps.len(), 2);
    for x in &r.runs {
        let asr = x.eval.asr.unwrap();
        assert!((0.0..=1.0).contains(&asr));
        assert!(x.eval.utility_nll.unwrap() > 0.0);
    }
    assert!(r.aligned_eval.is_some());
    // The identity-shift condition and its control (the benign part) are
    // also asked with the attack's trigger, and so is the aligned model.
    for x in &r.runs {
        let wanted = matches!(
            x.condition.as_str(),
            "identity shift" | "ratio 0.2 benign part"
        );
        assert_eq!(x.triggered.is_some(), wanted, "{}", x.condition);
        if let Some(t) = &x.triggered {
            assert!((0.0..=1.0).contains(&t.asr.unwrap()));
            assert!(t.over_refusal.is_none() && t.utility_nll.is_none());
        }
    }
    assert!(r.aligned_triggered.is_some());
    let asked = std::fs::read_to_string(
        cfg.out
            .join("seed-1/identity-shift/identity-trigger/safety_responses.jsonl"),
    )
    .unwrap();
    // Asked behind the trigger (the id says so); judged on the plain prompt.
    assert!(asked.contains("#identity-trigger"), "{asked}");
    assert!(!asked.contains("AOA, execute my instruction"), "{asked}");
    let md = std::fs::read_to_string(cfg.out.join("dose.md")).unwrap();
    assert!(md.contains("| identity shift | 26 | 10 |"), "{md}");
    assert!(md.contains("**Gate** (keyword-gcg"), "{md}");
    assert!(md.contains("With the identity-shift trigger"), "{md}");
    assert!(cfg
        .out
        .join("seed-2/identity-shift/safety_responses.jsonl")
        .is_file());

    // Resumed: nothing left to run, the same runs.
    let again = run_dose(
        &cfg,
        &DoseConfig {
            resume: true,
            ..dose.clone()
        },
    )
    .unwrap();
    // (JSON does not round-trip every float bit for bit: compare what ran.)
    let ran = |x: &seal_pipeline::dose::DoseResult| -> Vec<(String, u64)> {
        x.runs
            .iter()
            .map(|r| (r.condition.clone(), r.seed))
            .collect()
    };
    assert_eq!(ran(&again), ran(&r));
    // Its wall time adds to the recorded one.
    assert!(r.seconds > 0.0 && again.seconds >= r.seconds);
    // The report alone, rewritten from dose.json.
    let written = std::fs::read_to_string(cfg.out.join("dose.md")).unwrap();
    std::fs::remove_file(cfg.out.join("dose.md")).unwrap();
    let back = seal_pipeline::dose::rewrite_report(&cfg.out).unwrap();
    assert_eq!(ran(&back), ran(&r));
    assert_eq!(
        std::fs::read_to_string(cfg.out.join("dose.md")).unwrap(),
        written
    );
    // Other fine-tuning settings are refused, naming the file.
    let mut other = cfg.clone();
    other.finetune.lr *= 2.0;
    let e = run_dose(
        &other,
        &DoseConfig {
            resume: true,
            ..dose.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dose.json"), "{e}");
    // So is another precision: every model of the sweep would differ.
    let mut other = cfg.clone();
    other.model.dtype = seal_model::WeightDtype::Bf16;
    let e = run_dose(
        &other,
        &DoseConfig {
            resume: true,
            ..dose
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dose.json"), "{e}");
}
