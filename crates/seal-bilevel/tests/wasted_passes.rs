//! The SEAL step does no pass whose result it does not use: at λ = 1 the
//! task term carries no model gradient, so its forward runs without a graph
//! and its backward is skipped; at λ = 0 the same holds for the safe term;
//! the ranker step reuses the task forward of the model step. This test
//! runs a reference solver that takes every pass (graphs for both terms,
//! both backward passes, whatever λ) beside [`SealPenalty`] and checks that
//! the rankers and the model parameters come out bitwise equal on the CPU.

use seal_bilevel::*;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig};
use seal_model::optim::AdamWConfig;
use seal_model::{Llama, LlamaConfig, LoraConfig};
use tch::{Device, Kind, Tensor};

/// SEAL's model and ranker steps with every pass taken.
struct EveryPass;

impl<P: LowerLevel> Solver<P> for EveryPass {
    fn name(&self) -> &'static str {
        "every-pass"
    }

    fn step(
        &mut self,
        problem: &P,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> seal_bilevel::Result<StepStats> {
        let m = batch.finetune.len() as f64;
        let lambda = ctx.lambda;
        let weights = ctx.ranker.weights().detach();
        ctx.optimizer.zero_grad();
        let mut losses = Vec::new();
        for (ft, sf) in batch.finetune.iter().zip(&batch.safe) {
            let safe = problem.safe_losses(sf)?;
            let f = safe.mean(safe.kind());
            (&f * (lambda / m)).backward();
            let rows = Tensor::from_slice(&ft.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let w = weights.index_select(0, &rows);
            let ft_loss = problem.finetune_losses(ft)?;
            let w = w.to_kind(ft_loss.kind());
            let g = (&w * &ft_loss).mean(ft_loss.kind());
            (&g * ((1.0 - lambda) / m)).backward();
            losses.push(ft_loss.detach());
        }
        let grad_norm = ctx.optimizer.grad_norm();
        if let Some(max) = ctx.max_grad_norm {
            ctx.optimizer.clip_grad_norm(max);
        }
        ctx.optimizer.step()?;
        // The ranker step on the detached losses of the model step's forward.
        ctx.ranker_optimizer.zero_grad();
        let weights = ctx.ranker.weights();
        let mut total: Option<Tensor> = None;
        for (ft, c) in batch.finetune.iter().zip(&losses) {
            let rows = Tensor::from_slice(&ft.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let w = weights.index_select(0, &rows);
            let term = (w * c.to_kind(weights.kind())).mean(weights.kind()) / m;
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        let total = total.unwrap();
        total.backward();
        let ranker_grad_norm = ctx.ranker_optimizer.step()?;
        ctx.ranker.step += 1;
        Ok(StepStats {
            ranker_loss: total.double_value(&[]),
            grad_norm,
            ranker_grad_norm,
            ..StepStats::default()
        })
    }
}

fn problem() -> (LmProblem<Llama>, Ranker) {
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
    let ids: Vec<String> = ft.iter().map(|s| s.id.clone()).collect();
    let fp = dataset_fingerprint(&ft);
    let pad = tok.pad_token_id().unwrap();
    let p = LmProblem::new(model, ft, safe, pad).unwrap();
    let r = Ranker::new(ids, fp, Activation::Softmax, Kind::Float, Device::Cpu).unwrap();
    (p, r)
}

/// Three steps at a constant λ; the ranker logits and every LoRA value.
fn train(solver: Box<dyn Solver<LmProblem<Llama>>>, lambda: f64) -> (Vec<f64>, Vec<Vec<f32>>) {
    let (p, r) = problem();
    let mut c = TrainConfig::default();
    c.epochs = 1;
    c.max_steps = Some(3);
    c.micro_batch = 2;
    c.grad_accum = 2;
    c.max_grad_norm = Some(1.0);
    c.model_optimizer = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c.lambda = LambdaSchedule {
        start: lambda,
        decay_per_epoch: 0.0,
    };
    let mut t = Trainer::new(p, solver, r, c).unwrap();
    t.run().unwrap();
    let params = t
        .problem()
        .parameters()
        .iter()
        .map(|(_, p)| Vec::<f32>::try_from(p.flatten(0, -1)).unwrap())
        .collect();
    (t.ranker().logits_vec().unwrap(), params)
}

#[test]
fn skipped_passes_change_no_bit_of_the_ranker_or_the_model() {
    for lambda in [1.0, 0.0, 0.5] {
        let (fast_logits, fast_params) = train(Box::new(SealPenalty), lambda);
        let (full_logits, full_params) = train(Box::new(EveryPass), lambda);
        let lo = fast_logits.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = fast_logits
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(hi > lo, "λ = {lambda}: the ranker did not move");
        assert_eq!(fast_logits, full_logits, "λ = {lambda}: ranker logits");
        assert!(fast_params == full_params, "λ = {lambda}: model parameters");
    }
}
