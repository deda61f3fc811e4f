//! Solvers on a weighted ridge regression whose lower level is closed-form.

use seal_bilevel::metrics::auroc;
use seal_bilevel::ranker::fingerprint_ids;
use seal_bilevel::ridge::RidgeProblem;
use seal_bilevel::solver::implicit_hypergradient;
use seal_bilevel::*;
use seal_model::optim::AdamWConfig;
use tch::{Device, Kind, Tensor};

fn ranker_for(n: usize, act: Activation) -> Ranker {
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let fp = fingerprint_ids(&ids);
    Ranker::new(ids, fp, act, Kind::Double, Device::Cpu).unwrap()
}

/// Perturbs the logits so the weights are not all equal.
fn perturb(r: &Ranker, seed: i64) {
    tch::manual_seed(seed);
    let _g = tch::no_grad_guard();
    let noise = Tensor::randn([r.len() as i64], (Kind::Double, Device::Cpu)) * 0.3;
    let _ = r.logits().shallow_clone().g_add_(&noise);
}

#[test]
fn implicit_hypergradient_matches_analytic() {
    let n = 40;
    let p = RidgeProblem::synthetic(n, 24, 6, 0.1, &[1, 5, 9], 3).unwrap();
    let all: Vec<usize> = (0..n).collect();
    let safe: Vec<usize> = (0..24).collect();
    for act in [Activation::Softmax, Activation::Sigmoid] {
        let r = ranker_for(n, act);
        perturb(&r, 11);
        let w = r.weights().detach();
        p.set_theta(&p.closed_form(&w).unwrap()).unwrap();
        let exact = p.analytic_hypergradient(&r).unwrap();
        // Two micro-batches of the fine-tuning set and of the safe set
        // (accumulation must give the full-batch answer).
        let ft = vec![all[..20].to_vec(), all[20..].to_vec()];
        let sf = vec![safe[..12].to_vec(), safe[12..].to_vec()];
        let (h, _) = implicit_hypergradient(
            &p,
            &r,
            &ft,
            &sf,
            InverseMethod::Cg {
                iters: 50,
                tol: 1e-14,
            },
            0.0,
        )
        .unwrap();
        let err = (&h - &exact).abs().max().double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(
            scale > 1e-4,
            "{act:?}: degenerate test, hypergradient {scale}"
        );
        assert!(err < 1e-6, "{act:?}: max error {err} (scale {scale})");
        // A wrong θ (not the lower-level solution) gives a visibly different answer.
        p.set_theta(&(p.closed_form(&w).unwrap() + 0.5)).unwrap();
        let (bad, _) = implicit_hypergradient(
            &p,
            &r,
            &ft,
            &sf,
            InverseMethod::Cg {
                iters: 50,
                tol: 1e-14,
            },
            0.0,
        )
        .unwrap();
        assert!((&bad - &exact).abs().max().double_value(&[]) > 1e-4);
        // Neumann with enough terms approaches the same answer.
        p.set_theta(&p.closed_form(&w).unwrap()).unwrap();
        let (neu, _) = implicit_hypergradient(
            &p,
            &r,
            &ft,
            &sf,
            InverseMethod::Neumann {
                iters: 400,
                alpha: 0.1,
            },
            0.0,
        )
        .unwrap();
        let nerr = (&neu - &exact).abs().max().double_value(&[]);
        assert!(
            nerr < 1e-3 * scale.max(1.0),
            "{act:?}: Neumann error {nerr}"
        );
    }
}

fn corrupted_setup() -> (RidgeProblem, Vec<bool>) {
    let n = 200;
    let corrupted: Vec<usize> = (0..n).filter(|i| i % 5 == 2).collect(); // 20%
    let p = RidgeProblem::synthetic(n, 200, 5, 0.02, &corrupted, 7).unwrap();
    let clean: Vec<bool> = (0..n).map(|i| i % 5 != 2).collect();
    (p, clean)
}

fn config(micro_batch: usize, epochs: usize) -> TrainConfig {
    let mut ranker = RankerConfig::default();
    ranker.lr = 0.05;
    let mut c = TrainConfig::default();
    c.epochs = epochs;
    c.micro_batch = micro_batch;
    c.grad_accum = 1;
    c.seed = 5;
    c.bucket_batches = None;
    c.model_optimizer = AdamWConfig {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c.ranker = ranker;
    c.lambda = LambdaSchedule {
        start: 0.9,
        decay_per_epoch: 0.0,
    };
    c
}

/// The full penalty method with θ̂'s AdamW at rate 0.05.
fn full_penalty() -> FullPenaltyConfig {
    let mut c = FullPenaltyConfig::default();
    c.optimizer = AdamWConfig {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c
}

fn train_and_score(solver: Box<dyn Solver<RidgeProblem>>, cfg: TrainConfig) -> f64 {
    train_and_score_with(solver, cfg, Activation::Softmax)
}

fn train_and_score_with(
    solver: Box<dyn Solver<RidgeProblem>>,
    cfg: TrainConfig,
    act: Activation,
) -> f64 {
    let (p, clean) = corrupted_setup();
    let r = ranker_for(p.num_finetune(), act);
    let mut t = Trainer::new(p, solver, r, cfg).unwrap();
    t.run().unwrap();
    let scores = t.ranker().logits_vec().unwrap();
    auroc(&scores, &clean).unwrap()
}

#[test]
fn seal_penalty_ranks_corrupted_lowest() {
    let a = train_and_score(Box::new(SealPenalty), config(40, 40));
    assert!(a >= 0.99, "AUROC {a}");
}

#[test]
fn seal_full_ranks_corrupted_lowest() {
    let s = SealPenaltyFull::new(full_penalty());
    let a = train_and_score(Box::new(s), config(40, 40));
    assert!(a >= 0.99, "AUROC {a}");
}

#[test]
fn implicit_ranks_corrupted_lowest() {
    let mut implicit = ImplicitConfig::default();
    implicit.inner_steps = 20;
    implicit.inverse = InverseMethod::Cg {
        iters: 20,
        tol: 1e-10,
    };
    implicit.damping = 0.0;
    let s = Implicit { config: implicit };
    // The hypergradient is signed (helpful samples get negative entries), so
    // sigmoid weights, which need no softmax centring, suit it best.
    // Full-batch hypergradients are small once θ settles, so the ranker
    // takes larger steps than the penalty methods' (0.05 gives 0.987).
    let mut cfg = config(200, 100);
    cfg.ranker.lr = 0.2;
    let a = train_and_score_with(Box::new(s), cfg, Activation::Sigmoid);
    assert!(a >= 0.99, "AUROC {a}");
}

/// A problem whose safe loss turns NaN from a given call on.
struct Poisoned {
    inner: RidgeProblem,
    calls: std::cell::Cell<usize>,
    nan_from: usize,
}

impl LowerLevel for Poisoned {
    fn num_finetune(&self) -> usize {
        self.inner.num_finetune()
    }
    fn num_safe(&self) -> usize {
        self.inner.num_safe()
    }
    fn finetune_losses(&self, rows: &[usize]) -> Result<Tensor> {
        self.inner.finetune_losses(rows)
    }
    fn safe_losses(&self, rows: &[usize]) -> Result<Tensor> {
        let c = self.calls.get();
        self.calls.set(c + 1);
        let l = self.inner.safe_losses(rows)?;
        Ok(if c >= self.nan_from { l * f64::NAN } else { l })
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.inner.parameters()
    }
    fn fork(&self, seed: i64) -> Result<Self> {
        Ok(Self {
            inner: self.inner.fork(seed)?,
            calls: std::cell::Cell::new(0),
            nan_from: self.nan_from,
        })
    }
}

#[test]
fn nan_stops_with_last_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, _) = corrupted_setup();
    let p = Poisoned {
        inner,
        calls: std::cell::Cell::new(0),
        nan_from: 7,
    };
    let r = ranker_for(200, Activation::Softmax);
    let mut cfg = config(20, 5);
    cfg.checkpoint_every = Some(3);
    cfg.checkpoint_dir = Some(dir.path().to_path_buf());
    let mut t = Trainer::new(p, Box::new(SealPenalty), r, cfg.clone()).unwrap();
    let e = t.run().unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, BilevelError::NonFinite { step: 7, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("upper-level") && msg.contains("step-6"),
        "{msg}"
    );
    // The checkpoint of step 6 is complete and loads; its ranker is finite.
    let latest = Trainer::<RidgeProblem>::latest_checkpoint(dir.path())
        .unwrap()
        .unwrap();
    assert!(latest.ends_with("step-6"));
    let saved = Ranker::load(&latest).unwrap();
    assert_eq!(saved.step, 6);
    assert!(saved.logits_vec().unwrap().iter().all(|x| x.is_finite()));
    let (fresh, _) = corrupted_setup();
    let mut t2 = Trainer::new(
        fresh,
        Box::new(SealPenalty),
        ranker_for(200, Activation::Softmax),
        cfg,
    )
    .unwrap();
    assert!(t2.resume().unwrap());
    assert_eq!(t2.step(), 6);
}

fn resume_case(solver: fn() -> Box<dyn Solver<RidgeProblem>>) {
    let cfg = |dir: &std::path::Path| {
        let mut c = config(20, 2);
        c.checkpoint_every = Some(4);
        c.checkpoint_dir = Some(dir.to_path_buf());
        c.grad_accum = 2;
        c.micro_batch = 20;
        c
    };
    let d1 = tempfile::tempdir().unwrap();
    let (p, _) = corrupted_setup();
    let mut full = Trainer::new(
        p,
        solver(),
        ranker_for(200, Activation::Softmax),
        cfg(d1.path()),
    )
    .unwrap();
    full.run().unwrap();
    let reference = full.ranker().logits_vec().unwrap();

    let d2 = tempfile::tempdir().unwrap();
    let (p, _) = corrupted_setup();
    let mut stopped = cfg(d2.path());
    stopped.max_steps = Some(9);
    let mut first =
        Trainer::new(p, solver(), ranker_for(200, Activation::Softmax), stopped).unwrap();
    first.run().unwrap();
    assert_eq!(first.step(), 9);
    drop(first); // lose all in-memory state
    let (p, _) = corrupted_setup();
    let mut second = Trainer::new(
        p,
        solver(),
        ranker_for(200, Activation::Softmax),
        cfg(d2.path()),
    )
    .unwrap();
    assert!(second.resume().unwrap());
    assert_eq!(second.step(), 8);
    second.run().unwrap();
    assert_eq!(
        second.ranker().logits_vec().unwrap(),
        reference,
        "resume is not bitwise exact"
    );
    // Other seeds change the data order: a checkpoint of another run is refused.
    let (p, _) = corrupted_setup();
    let mut reseeded = cfg(d2.path());
    reseeded.seed = 99;
    let mut other =
        Trainer::new(p, solver(), ranker_for(200, Activation::Softmax), reseeded).unwrap();
    let e = other.resume().unwrap_err().to_string();
    assert!(e.contains("trainer.json") && e.contains("seed"), "{e}");
}

#[test]
fn resume_is_bitwise_exact_seal() {
    resume_case(|| Box::new(SealPenalty));
}

#[test]
fn resume_is_bitwise_exact_seal_full() {
    resume_case(|| Box::new(SealPenaltyFull::new(full_penalty())));
}

#[test]
fn shorter_epochs_stop_with_the_shorter_set_as_the_official_zipped_loaders() {
    let p = RidgeProblem::synthetic(40, 12, 3, 0.1, &[], 2).unwrap();
    let r = ranker_for(40, Activation::Softmax);
    let mut cfg = config(4, 2);
    cfg.epochs = 2;
    cfg.micro_batch = 4;
    cfg.bucket_batches = None;
    cfg.epoch_length = EpochLength::Shorter;
    let mut t = Trainer::new(p, Box::new(SealPenalty), r, cfg.clone()).unwrap();
    // 10 fine-tuning batches, 3 safe batches: an epoch is 3 steps.
    assert_eq!(t.steps_per_epoch(), 3);
    assert_eq!(t.total_steps(), 6);
    let epoch: Vec<StepBatch> = (0..3).map(|s| t.batch_for_step(s)).collect();
    let mut safe_rows: Vec<usize> = epoch.iter().flat_map(|b| b.safe[0].clone()).collect();
    safe_rows.sort();
    assert_eq!(
        safe_rows,
        (0..12).collect::<Vec<_>>(),
        "each epoch sees the whole safe set"
    );
    let mut ft_rows: Vec<usize> = epoch.iter().flat_map(|b| b.finetune[0].clone()).collect();
    ft_rows.sort();
    ft_rows.dedup();
    assert_eq!(
        ft_rows.len(),
        12,
        "12 distinct fine-tuning rows in the first epoch"
    );
    // The default runs one pass over the fine-tuning set.
    let p = RidgeProblem::synthetic(40, 12, 3, 0.1, &[], 2).unwrap();
    let r = ranker_for(40, Activation::Softmax);
    let mut task_epochs = cfg;
    task_epochs.epoch_length = EpochLength::Task;
    let t = Trainer::new(p, Box::new(SealPenalty), r, task_epochs).unwrap();
    assert_eq!(t.steps_per_epoch(), 10);
}

/// Builds a model optimiser over a problem's parameters.
type MakeOptimizer<'a> = &'a dyn Fn(&RidgeProblem) -> Box<dyn seal_model::optim::Optimizer>;

#[test]
fn the_trainer_takes_any_optimizer_through_the_trait() {
    use seal_model::optim::{AdamW, Sgd, SgdConfig};
    let cfg = config(40, 3);
    let run = |swap: Option<MakeOptimizer>| {
        let (p, _) = corrupted_setup();
        let r = ranker_for(p.num_finetune(), Activation::Softmax);
        let mut t = Trainer::new(p, Box::new(SealPenalty), r, cfg.clone()).unwrap();
        if let Some(make) = swap {
            let opt = make(t.problem());
            t = t.with_optimizer(opt).unwrap();
        }
        t.run().unwrap();
        (
            t.optimizer().name().to_string(),
            t.ranker().logits_vec().unwrap(),
        )
    };
    let (default_name, default) = run(None);
    // The config's AdamW passed in by hand: the same ranker, bit for bit.
    let same = |p: &RidgeProblem| -> Box<dyn seal_model::optim::Optimizer> {
        Box::new(AdamW::new(p.parameters(), cfg.model_optimizer))
    };
    let (name, by_hand) = run(Some(&same));
    assert_eq!((default_name.as_str(), name.as_str()), ("adamw", "adamw"));
    assert_eq!(default, by_hand);
    // Another rule really is used.
    let sgd = |p: &RidgeProblem| -> Box<dyn seal_model::optim::Optimizer> {
        Box::new(Sgd::new(
            p.parameters(),
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        ))
    };
    let (name, other) = run(Some(&sgd));
    assert_eq!(name, "sgd");
    assert_ne!(default, other);
    // An optimiser over other parameters is refused.
    let (p, _) = corrupted_setup();
    let r = ranker_for(p.num_finetune(), Activation::Softmax);
    let t = Trainer::new(p, Box::new(SealPenalty), r, cfg.clone()).unwrap();
    let stray = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let err = t
        .with_optimizer(Box::new(Sgd::new(
            vec![("stray".into(), stray)],
            SgdConfig::default(),
        )))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not the problem's"), "{err}");
}

#[test]
fn the_sgd_ranker_step_is_plain_gradient_descent_bit_for_bit() {
    let r = ranker_for(6, Activation::Sigmoid);
    perturb(&r, 3);
    let mut cfg = RankerConfig::default();
    cfg.optimizer = RankerOptimizerKind::Sgd;
    cfg.lr = 0.7;
    cfg.max_grad_norm = None;
    let mut opt = RankerOptimizer::new(&r, cfg);
    let before = r.logits().detach().copy();
    (r.weights() * Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0, -0.25, 1.5]))
        .sum(Kind::Double)
        .backward();
    let g = r.logits().grad().copy();
    opt.step().unwrap();
    let expected = before - g * 0.7;
    assert!(r.logits().detach().equal(&expected));
    assert_eq!(opt.optimizer().name(), "sgd");
}
