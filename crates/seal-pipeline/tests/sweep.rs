//! The λ sweep on a tiny random model: one ranking per λ and seed, the
//! schedule recorded per epoch, the report and plot written, a resumed
//! sweep keeps what it measured, and bad input is refused.

mod common;

use common::{config, tiny_model_dir};
use seal_pipeline::sweep::{run_lambda_sweep, LambdaSweepConfig};

#[test]
fn sweep_ranks_at_every_lambda_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    cfg.align.enabled = false;
    cfg.seeds = vec![1, 2];
    cfg.rank.epochs = 2;
    cfg.rank.max_steps = Some(2);
    cfg.rank.lambda_decay = 0.25;
    let sweep = LambdaSweepConfig {
        lambdas: vec![1.0, 0.5],
        solver: "seal".into(),
        start: None,
        resume: true,
    };
    let r = run_lambda_sweep(&cfg, &sweep).unwrap();
    assert_eq!(r.runs.len(), 4, "two λ × two seeds");
    let bench = seal_data::benchmark::Benchmark::read(&root.join("bench")).unwrap();
    assert_eq!(r.pool, bench.finetune.len());
    assert!(r.harmful > 0);
    for run in &r.runs {
        assert_eq!(run.steps, 2);
        assert_eq!(run.lambda_by_epoch.len(), 2);
        assert_eq!(run.lambda_by_epoch[0], run.lambda);
        assert_eq!(run.lambda_by_epoch[1], run.lambda - 0.25);
        let auroc = run.auroc.unwrap();
        assert!((0.0..=1.0).contains(&auroc));
        assert_eq!(run.kept, (0.8 * r.pool as f64) as usize);
        assert!(run.harmful_kept <= r.harmful);
    }
    let md = std::fs::read_to_string(cfg.out.join("lambda_sweep.md")).unwrap();
    assert!(md.contains("| 0.5 | 0.50, 0.25 |"), "{md}");
    let svg = std::fs::read_to_string(cfg.out.join("lambda_sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("seed 2"), "{svg}");
    let summary = r.summary();
    assert_eq!(summary.len(), 2);
    assert_eq!(summary[0].1.unwrap().n, 2);

    // Resumed with one more λ: the recorded rankings are kept (their
    // timings too), only the new λ runs.
    let more = LambdaSweepConfig {
        lambdas: vec![1.0, 0.5, 0.0],
        ..sweep.clone()
    };
    let r2 = run_lambda_sweep(&cfg, &more).unwrap();
    assert_eq!(r2.runs.len(), 6);
    for (a, b) in r.runs.iter().zip(&r2.runs) {
        assert_eq!(a, b);
    }
    // The sweep's wall time counts both invocations.
    let new_rankings: f64 = r2.runs[4..].iter().map(|x| x.seconds).sum();
    assert!(
        r2.seconds >= r.seconds + new_rankings,
        "{} < {} + {new_rankings}",
        r2.seconds,
        r.seconds
    );
    // Other ranking settings are refused, not mixed in.
    let mut other = cfg.clone();
    other.rank.lr *= 2.0;
    let e = run_lambda_sweep(&other, &more).unwrap_err().to_string();
    assert!(e.contains("lambda_sweep.json"), "{e}");
    // So is another precision.
    let mut other = cfg.clone();
    other.model.dtype = seal_model::WeightDtype::Bf16;
    let e = run_lambda_sweep(&other, &more).unwrap_err().to_string();
    assert!(e.contains("lambda_sweep.json"), "{e}");
}

#[test]
fn sweep_refuses_bad_lambdas() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    for lambdas in [vec![], vec![1.5], vec![f64::NAN]] {
        let sweep = LambdaSweepConfig {
            lambdas,
            solver: "seal".into(),
            start: None,
            resume: false,
        };
        let e = run_lambda_sweep(&cfg, &sweep).unwrap_err().to_string();
        assert!(e.contains("lambdas"), "{e}");
    }
    assert!(!cfg.out.exists(), "nothing written");
}
