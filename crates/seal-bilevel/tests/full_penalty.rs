//! The full penalty method's auxiliary copy θ̂ ([`SealPenaltyFull`]): exact
//! ranker gradients on a ridge problem with θ̂ at the closed-form lower-level
//! solution, the θ̂ options, sign tests on a planted conflicting sample, and
//! the conjugate-gradient curvature report.

use seal_bilevel::ranker::fingerprint_ids;
use seal_bilevel::ridge::RidgeProblem;
use seal_bilevel::solver::implicit_hypergradient;
use seal_bilevel::*;
use seal_data::tokenize::TokenizedSample;
use seal_model::optim::{AdamW, AdamWConfig};
use seal_model::{Llama, LlamaConfig, LoraConfig};
use tch::{Device, Kind, Tensor};

fn ranker_for(n: usize, act: Activation, kind: Kind) -> Ranker {
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let fp = fingerprint_ids(&ids);
    Ranker::new(ids, fp, act, kind, Device::Cpu).unwrap()
}

/// Deterministic, unequal logits (no global generator: tests run in
/// parallel).
fn spread_logits(r: &Ranker) {
    let _g = tch::no_grad_guard();
    let n = r.len() as i64;
    let v = (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 1.7).sin() * 0.4;
    let _ = r
        .logits()
        .shallow_clone()
        .g_add_(&v.to_kind(r.logits().kind()));
}

fn adam(lr: f64) -> AdamWConfig {
    AdamWConfig {
        lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

/// Plain gradient descent at rate 0 and no clipping: the step leaves the
/// logits as they are and their gradient readable.
fn frozen_sgd(r: &Ranker) -> RankerOptimizer {
    let mut config = RankerConfig::default();
    config.optimizer = RankerOptimizerKind::Sgd;
    config.lr = 0.0;
    config.max_grad_norm = None;
    RankerOptimizer::new(r, config)
}

/// One solver step at λ = 1 with every fine-tuning row in one micro-batch;
/// returns the ranker's gradient.
fn one_step<P: LowerLevel>(
    problem: &P,
    solver: &mut dyn Solver<P>,
    ranker: &mut Ranker,
    safe_rows: Vec<usize>,
) -> Tensor {
    solver.prepare(problem, 3).unwrap();
    let mut opt = AdamW::new(problem.parameters(), adam(0.05));
    let mut ropt = frozen_sgd(ranker);
    let batch = StepBatch {
        finetune: vec![(0..problem.num_finetune()).collect()],
        safe: vec![safe_rows],
    };
    let mut ctx = StepContext {
        optimizer: &mut opt,
        ranker,
        ranker_optimizer: &mut ropt,
        lambda: 1.0,
        max_grad_norm: None,
        step: 0,
    };
    solver.step(problem, &mut ctx, &batch).unwrap();
    ranker.logits().grad().copy()
}

/// Per-sample fine-tuning losses of the ridge problem at `theta`.
fn ridge_losses(p: &RidgeProblem, theta: &Tensor) -> Tensor {
    (p.x.mv(theta) - &p.y).square() + theta.dot(theta) * p.rho
}

/// The lower level's value `v(ω) = mean_i w_i(ω)·ℓ_i(θ*(w(ω)))`, with the
/// closed-form minimiser.
fn value(p: &RidgeProblem, act: Activation, logits: &Tensor) -> f64 {
    let w = act.apply(logits);
    let theta = p.closed_form(&w).unwrap();
    (w * ridge_losses(p, &theta))
        .mean(Kind::Double)
        .double_value(&[])
}

#[test]
fn ranker_gradient_is_the_penalty_gradient_with_theta_hat_at_the_inner_solution() {
    let p = RidgeProblem::synthetic(12, 8, 4, 0.1, &[2, 7], 3).unwrap();
    for act in [Activation::Softmax, Activation::Sigmoid] {
        let mut r = ranker_for(12, act, Kind::Double);
        spread_logits(&r);
        let logits = r.logits().detach().copy();
        let w = act.apply(&logits);
        // θ somewhere that is not the lower-level solution, θ̂ exactly at it.
        let theta = Tensor::from_slice(&[0.3f64, -0.2, 0.1, 0.4]);
        p.set_theta(&theta).unwrap();
        let theta_star = p.closed_form(&w).unwrap();
        let mut config = FullPenaltyConfig::default();
        config.inner_steps = 0;
        config.warm_start_steps = 0;
        let mut solver =
            SealPenaltyFull::new(config).with_start(vec![("theta".into(), theta_star.copy())]);
        let got = one_step(&p, &mut solver, &mut r, (0..8).collect());

        // ∇_ω g(θ, ω) by autograd, at the θ the model had before its step.
        let lg = logits.copy().set_requires_grad(true);
        let g = (act.apply(&lg) * ridge_losses(&p, &theta)).mean(Kind::Double);
        let dg = seal_bilevel::problem::grad(&g, std::slice::from_ref(&lg), false, false)
            .unwrap()
            .remove(0);
        // ∇_ω v(ω) by central differences of the closed-form value.
        let h = 1e-6;
        let dv: Vec<f64> = (0..12)
            .map(|i| {
                let e = Tensor::zeros([12], (Kind::Double, Device::Cpu));
                let _ = e.narrow(0, i, 1).fill_(h);
                (value(&p, act, &(&logits + &e)) - value(&p, act, &(&logits - &e))) / (2.0 * h)
            })
            .collect();
        let want = dg - Tensor::from_slice(&dv);
        let scale = want.abs().max().double_value(&[]);
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(scale > 1e-3, "{act:?}: degenerate test ({scale})");
        assert!(
            err < 1e-6 * scale.max(1.0),
            "{act:?}: ranker gradient off by {err} (scale {scale})"
        );

        // θ̂ started as the model's own function (the old default) gives a
        // visibly different gradient: the θ̂ term is what is checked above.
        let mut r2 = ranker_for(12, act, Kind::Double);
        spread_logits(&r2);
        p.set_theta(&theta).unwrap();
        let mut config = FullPenaltyConfig::default();
        config.inner_steps = 1;
        config.warm_start_steps = 0;
        config.read_after_update = false;
        let mut fresh = SealPenaltyFull::new(config);
        let old = one_step(&p, &mut fresh, &mut r2, (0..8).collect());
        assert!(
            (&old - &want).abs().max().double_value(&[]) > 1e-2 * scale,
            "{act:?}: a fresh θ̂ should not give the penalty gradient"
        );
    }
}

#[test]
fn theta_hat_options_do_what_they_say() {
    let p = RidgeProblem::synthetic(16, 8, 4, 0.1, &[3], 5).unwrap();
    let aux_theta = |s: &SealPenaltyFull<RidgeProblem>| s.aux().unwrap().parameters()[0].1.copy();
    // Warm start: θ̂ is trained on the task before the first step.
    let mut cold_config = FullPenaltyConfig::default();
    cold_config.warm_start_steps = 0;
    let mut cold = SealPenaltyFull::<RidgeProblem>::new(cold_config);
    Solver::prepare(&mut cold, &p, 1).unwrap();
    let mut warm_config = FullPenaltyConfig::default();
    warm_config.optimizer = adam(0.05);
    warm_config.warm_start_steps = 40;
    warm_config.warm_start_batch = 4;
    let mut warm = SealPenaltyFull::<RidgeProblem>::new(warm_config);
    Solver::prepare(&mut warm, &p, 1).unwrap();
    let task = |t: &Tensor| ridge_losses(&p, t).mean(Kind::Double).double_value(&[]);
    let (c, w) = (task(&aux_theta(&cold)), task(&aux_theta(&warm)));
    assert!(w < 0.5 * c, "warm start did not fit the task: {c} -> {w}");
    assert_eq!(Solver::<RidgeProblem>::state_step(&warm), 40);

    // Inner steps: θ̂'s optimiser takes exactly that many per outer step.
    for inner in [0usize, 1, 3] {
        let mut config = FullPenaltyConfig::default();
        config.inner_steps = inner;
        config.warm_start_steps = 0;
        let mut s = SealPenaltyFull::new(config);
        let mut r = ranker_for(16, Activation::Softmax, Kind::Double);
        let _ = one_step(&p, &mut s, &mut r, (0..8).collect());
        assert_eq!(Solver::<RidgeProblem>::state_step(&s), inner as i64);
    }

    // Reading ℓ(θ̂) after its update changes the ranker's coefficients.
    let grad_with = |after: bool| {
        let mut config = FullPenaltyConfig::default();
        config.optimizer = adam(0.05);
        config.inner_steps = 1;
        config.warm_start_steps = 0;
        config.read_after_update = after;
        let mut s = SealPenaltyFull::new(config);
        let mut r = ranker_for(16, Activation::Softmax, Kind::Double);
        spread_logits(&r);
        p.set_theta(&Tensor::zeros([4], (Kind::Double, Device::Cpu)))
            .unwrap();
        one_step(&p, &mut s, &mut r, (0..8).collect())
    };
    let diff = (grad_with(true) - grad_with(false))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff > 1e-6, "read_after_update made no difference");
}

#[test]
fn theta_hat_start_and_settings_errors_name_the_field() {
    let p = RidgeProblem::synthetic(8, 4, 3, 0.1, &[], 1).unwrap();
    let mut s =
        SealPenaltyFull::<RidgeProblem>::new(FullPenaltyConfig::default()).with_start(vec![(
            "other".into(),
            Tensor::zeros([3], (Kind::Double, Device::Cpu)),
        )]);
    let e = Solver::prepare(&mut s, &p, 0).unwrap_err().to_string();
    assert!(e.contains("`theta`"), "{e}");
    let mut s =
        SealPenaltyFull::<RidgeProblem>::new(FullPenaltyConfig::default()).with_start(vec![(
            "theta".into(),
            Tensor::zeros([5], (Kind::Double, Device::Cpu)),
        )]);
    let e = Solver::prepare(&mut s, &p, 0).unwrap_err().to_string();
    assert!(
        e.contains("`theta`") && e.contains("[5]") && e.contains("[3]"),
        "{e}"
    );
    let mut config = FullPenaltyConfig::default();
    config.warm_start_batch = 0;
    let mut s = SealPenaltyFull::<RidgeProblem>::new(config);
    let e = Solver::prepare(&mut s, &p, 0).unwrap_err().to_string();
    assert!(e.contains("warm_start_batch"), "{e}");
    let mut config = FullPenaltyConfig::default();
    config.lr_scale = f64::NAN;
    let mut s = SealPenaltyFull::<RidgeProblem>::new(config);
    let e = Solver::prepare(&mut s, &p, 0).unwrap_err().to_string();
    assert!(e.contains("lr_scale"), "{e}");
}

#[test]
fn conjugate_gradient_reports_non_positive_curvature() {
    let mut p = RidgeProblem::synthetic(10, 6, 3, 0.1, &[], 2).unwrap();
    // A strongly negative ridge makes the lower level concave.
    p.rho = -50.0;
    let r = ranker_for(10, Activation::Sigmoid, Kind::Double);
    let hypergradient = |damping: f64| {
        implicit_hypergradient(
            &p,
            &r,
            &[(0..10).collect()],
            &[(0..6).collect()],
            InverseMethod::Cg {
                iters: 10,
                tol: 1e-12,
            },
            damping,
        )
    };
    let err = hypergradient(0.0).unwrap_err();
    assert!(
        matches!(err, BilevelError::NonPositiveCurvature { iteration: 0, curvature } if curvature < 0.0),
        "{err}"
    );
    assert!(err.to_string().contains("damping"), "{err}");
    // Enough damping makes it positive definite again.
    let _ = hypergradient(1e4).unwrap();
}

/// A tiny LM problem with a planted conflict. The safe set answers prompts
/// `[1, 2, 3, k]` with `10 11 12 13` and prompts `[50+k, 51+k, 32]` with
/// `40 41 42 43`; pool sample 0 answers `[1, 2, 3, 5]` with `20 21 22 23`
/// (against the safe answer), the other pool samples answer `[30+k, 31+k,
/// 32]` with `40 41 42 43` (as the safe set does).
fn planted_lm() -> (LmProblem<Llama>, usize) {
    let sample = |id: String, index: usize, prompt: Vec<u32>, response: Vec<u32>| {
        let start = prompt.len();
        let mut input_ids = prompt;
        input_ids.extend(response);
        input_ids.push(2);
        TokenizedSample {
            id,
            index,
            label: None,
            input_ids,
            response_start: start,
        }
    };
    let mut safe: Vec<TokenizedSample> = (0..4u32)
        .map(|k| {
            sample(
                format!("s{k}"),
                k as usize,
                vec![1, 2, 3, 4 + k],
                vec![10, 11, 12, 13],
            )
        })
        .collect();
    for k in 0..4u32 {
        safe.push(sample(
            format!("t{k}"),
            4 + k as usize,
            vec![50 + k, 51 + k, 32],
            vec![40, 41, 42, 43],
        ));
    }
    let mut pool = vec![sample(
        "planted".into(),
        0,
        vec![1, 2, 3, 5],
        vec![20, 21, 22, 23],
    )];
    for k in 1..8u32 {
        pool.push(sample(
            format!("b{k}"),
            k as usize,
            vec![30 + k, 31 + k, 32],
            vec![40, 41, 42, 43],
        ));
    }
    let mut model = Llama::random(&LlamaConfig::tiny(64), Device::Cpu, Kind::Float, 4).unwrap();
    {
        // N(0, 0.02) tied embeddings bound the logits to about ±1, so the
        // frozen head could not fit anything: scale them to unit variance.
        let _g = tch::no_grad_guard();
        for (name, t) in model.base_parameters() {
            if name.contains("embed_tokens") {
                let _ = t.shallow_clone().g_mul_scalar_(50.0);
            }
        }
    }
    let mut lora = LoraConfig::default();
    lora.r = 4;
    lora.target_modules = seal_model::lora::LORA_TARGETABLE
        .iter()
        .map(|s| s.to_string())
        .collect();
    model.add_lora(&lora, 5).unwrap();
    (LmProblem::new(model, pool, safe, 0).unwrap(), 0)
}

/// Trains the ranker for `steps` full-batch steps at `lambda` and returns the
/// planted sample's logit and the lowest other logit.
fn planted_logits(
    solver: Box<dyn Solver<LmProblem<Llama>>>,
    steps: usize,
    lambda: f64,
) -> (f64, f64) {
    let (p, planted) = planted_lm();
    let ids: Vec<String> = (0..p.num_finetune()).map(|i| format!("r{i}")).collect();
    let fp = fingerprint_ids(&ids);
    let r = Ranker::new(ids, fp, Activation::Softmax, Kind::Float, Device::Cpu).unwrap();
    let mut ranker = RankerConfig::default();
    ranker.optimizer = RankerOptimizerKind::Sgd;
    ranker.lr = 1.0;
    let mut cfg = TrainConfig::default();
    cfg.epochs = steps;
    cfg.micro_batch = 8;
    cfg.grad_accum = 1;
    cfg.seed = 1;
    cfg.model_optimizer = adam(5e-2);
    cfg.ranker = ranker;
    cfg.lambda = LambdaSchedule {
        start: lambda,
        decay_per_epoch: 0.0,
    };
    let mut t = Trainer::new(p, solver, r, cfg).unwrap();
    t.run().unwrap();
    let logits = t.ranker().logits_vec().unwrap();
    let others = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != planted)
        .map(|(_, &v)| v)
        .fold(f64::INFINITY, f64::min);
    (logits[planted], others)
}

#[test]
fn planted_conflicting_sample_loses_weight_memory_efficient() {
    let (planted, others) = planted_logits(Box::new(SealPenalty), 30, 1.0);
    assert!(planted < 0.0, "planted logit rose: {planted}");
    assert!(
        planted < others,
        "planted {planted} vs lowest other {others}"
    );
}

/// At λ < 1 the model θ also fits the weighted task data; only where the
/// task conflicts with the safe set does ℓ(θ) stay above ℓ(θ̂), the copy
/// that fits the task alone: the value gap then singles out the planted
/// sample.
#[test]
fn planted_conflicting_sample_loses_weight_full_penalty() {
    let mut config = FullPenaltyConfig::default();
    config.optimizer = adam(5e-2);
    config.warm_start_steps = 60;
    config.warm_start_batch = 8;
    let solver = SealPenaltyFull::new(config);
    let (planted, others) = planted_logits(Box::new(solver), 30, 0.5);
    assert!(planted < 0.0, "planted logit rose: {planted}");
    assert!(
        planted < others,
        "planted {planted} vs lowest other {others}"
    );
}
