//! The three solvers on a tiny random Llama with LoRA.

use seal_bilevel::*;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig};
use seal_model::optim::AdamWConfig;
use seal_model::{AttentionImpl, Llama, LlamaConfig, LoraConfig};
use tch::{Device, Kind};

fn problem(math: bool) -> (LmProblem<Llama>, Ranker) {
    let tok = seal_data::testing::chatml_tokenizer(None).unwrap();
    let bench = seal_data::embedded::embedded_default().unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 160;
    let ft = tokenize_samples(&tok, &bench.finetune[..12], &cfg)
        .unwrap()
        .samples;
    let safe = tokenize_samples(&tok, &bench.safe[..6], &cfg)
        .unwrap()
        .samples;
    assert!(ft.len() >= 8 && safe.len() >= 4);
    let mut model = Llama::random(
        &LlamaConfig::tiny(tok.vocab_size()),
        Device::Cpu,
        Kind::Float,
        1,
    )
    .unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    model.add_lora(&lora, 2).unwrap();
    if math {
        model.set_attention_impl(AttentionImpl::Math);
    }
    let ids: Vec<String> = ft.iter().map(|s| s.id.clone()).collect();
    let fp = dataset_fingerprint(&ft);
    let pad = tok.pad_token_id().unwrap();
    let p = LmProblem::new(model, ft, safe, pad).unwrap();
    let r = Ranker::new(ids, fp, Activation::Softmax, Kind::Float, Device::Cpu).unwrap();
    (p, r)
}

fn cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.epochs = 1;
    c.max_steps = Some(2);
    c.micro_batch = 2;
    c.grad_accum = 2;
    c.model_optimizer = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c.lambda = LambdaSchedule {
        start: 0.5,
        decay_per_epoch: 0.0,
    };
    c
}

fn run(solver: Box<dyn Solver<LmProblem<Llama>>>, math: bool) -> (Vec<f64>, Vec<f64>) {
    let (p, r) = problem(math);
    let before: Vec<f64> = p
        .parameters()
        .iter()
        .map(|(_, t)| t.abs().sum(Kind::Double).double_value(&[]))
        .collect();
    let mut t = Trainer::new(p, solver, r, cfg()).unwrap();
    let report = t.run().unwrap();
    assert_eq!(report.total_steps, 2);
    assert!(report.tokens > 0 && report.last.upper_loss.is_finite());
    let after: Vec<f64> = t
        .problem()
        .parameters()
        .iter()
        .map(|(_, t)| t.abs().sum(Kind::Double).double_value(&[]))
        .collect();
    assert_ne!(before, after, "the LoRA did not move");
    (t.ranker().logits_vec().unwrap(), after)
}

fn assert_moved(logits: &[f64]) {
    let lo = logits.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(hi - lo > 1e-4, "ranker logits did not separate: {lo}..{hi}");
}

#[test]
fn seal_penalty_on_tiny_llama() {
    let (l, _) = run(Box::new(SealPenalty), false);
    assert_moved(&l);
}

#[test]
fn seal_full_on_tiny_llama() {
    let mut config = FullPenaltyConfig::default();
    config.optimizer = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let s = SealPenaltyFull::new(config);
    let (l, _) = run(Box::new(s), false);
    assert_moved(&l);
}

#[test]
fn implicit_on_tiny_llama() {
    // One inner step from a random model is far from a lower-level minimum:
    // the Hessian has negative directions (CG reports one at δ = 1e-2), so
    // the damping must dominate them.
    let mut config = ImplicitConfig::default();
    config.inner_steps = 1;
    config.inverse = InverseMethod::Cg {
        iters: 3,
        tol: 1e-8,
    };
    config.damping = 10.0;
    let s = Implicit { config };
    let (l, _) = run(Box::new(s), true);
    assert_moved(&l);
}

#[test]
fn full_penalty_refuses_full_finetuning() {
    let (mut p, _) = problem(false);
    p.model.set_full_finetune(true);
    let e = match p.fork(1) {
        Ok(_) => panic!("fork of a fully fine-tuned model must fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("fully fine-tuned"), "{e}");
}
