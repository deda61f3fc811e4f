//! Fine-tuning on a selection (weighted SFT, mixed objective) on a tiny
//! random Llama with LoRA.

use seal_bilevel::*;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_model::optim::AdamWConfig;
use seal_model::{Llama, LlamaConfig, LoraConfig};
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind};

/// These tests compare trained adapters bit for bit. libtorch's CPU kernels
/// (MKL, OpenMP) are deterministic for one caller, but not when several test
/// threads drive them at once, so the tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn data() -> (Vec<TokenizedSample>, Vec<TokenizedSample>, u32, usize) {
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
    assert!(ft.len() >= 10 && safe.len() >= 4);
    (ft, safe, tok.pad_token_id().unwrap(), tok.vocab_size())
}

fn model(vocab: usize) -> Llama {
    let mut m = Llama::random(&LlamaConfig::tiny(vocab), Device::Cpu, Kind::Float, 1).unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    m.add_lora(&lora, 2).unwrap();
    m
}

fn cfg(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.epochs = 20;
    c.max_steps = Some(steps);
    c.micro_batch = 2;
    c.grad_accum = 1;
    c.model_optimizer = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    c
}

fn params(m: &Llama) -> Vec<Vec<f32>> {
    m.lora_parameters()
        .iter()
        .map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .collect()
}

fn mean_loss(m: Llama, data: &[TokenizedSample], pad: u32) -> (f64, Llama) {
    let p = LmProblem::new(m, data.to_vec(), data.to_vec(), pad).unwrap();
    let rows: Vec<usize> = (0..data.len()).collect();
    let l = {
        let _g = tch::no_grad_guard();
        p.finetune_losses(&rows)
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[])
    };
    (l, p.model)
}

fn ids(data: &[TokenizedSample], pick: &[usize]) -> Vec<String> {
    pick.iter().map(|&i| data[i].id.clone()).collect()
}

#[test]
fn sft_lowers_the_loss_on_the_kept_samples() {
    let _serial = serial();
    let (ft, _, pad, vocab) = data();
    let kept_ids = ids(&ft, &[1, 3, 4, 7]);
    let kept = keep_by_id(ft, |s| s.id.as_str(), &kept_ids).unwrap();
    assert_eq!(kept.len(), 4);
    let (before, m) = mean_loss(model(vocab), &kept, pad);
    let data = SftData {
        finetune: kept.clone(),
        ..Default::default()
    };
    let out = finetune(m, data, pad, 0.0, cfg(12)).unwrap();
    assert_eq!(out.report.total_steps, 12);
    assert_eq!(out.log.len(), 12);
    assert_eq!(out.log[0].step, 1);
    assert!(out
        .log
        .iter()
        .all(|s| s.safe_loss == 0.0 && s.lambda == 0.0));
    let (after, _) = mean_loss(out.model, &kept, pad);
    assert!(
        after < before - 0.1,
        "loss on the kept samples {before} -> {after}"
    );
}

#[test]
fn samples_not_kept_do_not_matter_and_unit_weights_are_plain_sft() {
    let _serial = serial();
    let (ft, _, pad, vocab) = data();
    let kept_ids = ids(&ft, &[0, 2, 5, 6]);
    let mut changed = ft.clone();
    changed[1].input_ids = ft[8].input_ids.clone();
    changed[1].response_start = ft[8].response_start;
    let run = |all: Vec<TokenizedSample>, weights: Option<Vec<f64>>| {
        let kept = keep_by_id(all, |s| s.id.as_str(), &kept_ids).unwrap();
        let data = SftData {
            finetune: kept,
            safe: None,
            weights,
        };
        params(
            &finetune(model(vocab), data, pad, 0.0, cfg(3))
                .unwrap()
                .model,
        )
    };
    let a = run(ft.clone(), None);
    let b = run(changed, None);
    assert!(a == b, "a sample that is not kept changed the adapter");
    let c = run(ft.clone(), Some(vec![1.0; 4]));
    assert!(a == c, "unit weights differ from plain SFT");
    let d = run(ft, Some(vec![1.0, 0.2, 3.0, 0.5]));
    assert!(a != d, "soft weights had no effect");
}

#[test]
fn lambda_one_ignores_the_task_data() {
    let _serial = serial();
    let (ft, safe, pad, vocab) = data();
    let run = |task: &[TokenizedSample]| {
        let data = SftData {
            finetune: task.to_vec(),
            safe: Some(safe.clone()),
            weights: None,
        };
        let out = finetune(model(vocab), data, pad, 1.0, cfg(3)).unwrap();
        assert!(out
            .log
            .iter()
            .all(|s| s.task_loss == 0.0 && s.safe_loss > 0.0));
        params(&out.model)
    };
    let a = run(&ft[..8]);
    let b = run(&ft[2..10]);
    assert!(a == b, "λ = 1 depends on the task data");
    // The mixed objective (0 < λ < 1) does depend on it.
    let mixed = |task: &[TokenizedSample]| {
        let data = SftData {
            finetune: task.to_vec(),
            safe: Some(safe.clone()),
            weights: None,
        };
        params(
            &finetune(model(vocab), data, pad, 0.5, cfg(2))
                .unwrap()
                .model,
        )
    };
    assert!(mixed(&ft[..8]) != mixed(&ft[2..10]));
}

#[test]
fn errors() {
    let _serial = serial();
    let (ft, _, pad, vocab) = data();
    let e = keep_by_id(ft.clone(), |s| s.id.as_str(), &["no-such-id".to_string()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-id"), "{e}");
    let e = keep_by_id(ft.clone(), |s| s.id.as_str(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty selection"), "{e}");
    let data = |w: Option<Vec<f64>>| SftData {
        finetune: ft[..4].to_vec(),
        safe: None,
        weights: w,
    };
    let e = finetune(model(vocab), data(None), pad, 1.5, cfg(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[0, 1]"), "{e}");
    let e = finetune(model(vocab), data(None), pad, 0.3, cfg(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs a safe set"), "{e}");
    let e = finetune(model(vocab), data(Some(vec![1.0; 3])), pad, 0.0, cfg(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("3 weights for 4"), "{e}");
    let e = finetune(
        model(vocab),
        data(Some(vec![1.0, -1.0, 1.0, 1.0])),
        pad,
        0.0,
        cfg(1),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(">= 0"), "{e}");
}

/// The fine-tuning loop and the same step as a solver in the bilevel
/// trainer (with a ranker it never reads) give bitwise the same adapter and
/// log, for plain, weighted and mixed objectives; and a run checkpointed,
/// dropped and resumed by a new loop ends bitwise where an uninterrupted
/// one does.
#[test]
fn the_sft_loop_equals_the_solver_form_and_resumes_exactly() {
    let _serial = serial();
    let (ft, safe, pad, vocab) = data();
    let weights = vec![1.0, 0.2, 3.0, 0.5, 1.5, 0.0, 2.0, 1.0];
    for (lambda, weights, safe) in [
        (0.0, None, None),
        (0.0, Some(weights), None),
        (0.5, None, Some(safe.clone())),
    ] {
        let sft = SftData {
            finetune: ft[..8].to_vec(),
            safe: safe.clone(),
            weights: weights.clone(),
        };
        let ours = finetune(model(vocab), sft, pad, lambda, cfg(4)).unwrap();

        let solver = WeightedSft::new(weights).unwrap();
        let log = solver.log();
        let problem = LmProblem::new(
            model(vocab),
            ft[..8].to_vec(),
            safe.unwrap_or_else(|| ft[..8].to_vec()),
            pad,
        )
        .unwrap();
        let ids: Vec<String> = ft[..8].iter().map(|s| s.id.clone()).collect();
        let ranker = Ranker::new(
            ids,
            dataset_fingerprint(&ft[..8]),
            Activation::Sigmoid,
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let mut config = cfg(4);
        config.lambda = LambdaSchedule {
            start: lambda,
            decay_per_epoch: 0.0,
        };
        let mut trainer = Trainer::new(problem, Box::new(solver), ranker, config).unwrap();
        trainer.run().unwrap();
        let (problem, _) = trainer.into_parts();
        assert!(
            params(&ours.model) == params(&problem.model),
            "λ {lambda}: the loop and the solver form differ"
        );
        assert_eq!(ours.log, *log.lock().unwrap(), "λ {lambda}");
        assert_eq!(ours.log.len(), 4);
    }

    // Checkpoint at step 2 of 4, drop the loop, resume in a new one.
    let tmp = tempfile::tempdir().unwrap();
    let data = || SftData {
        finetune: ft[..8].to_vec(),
        safe: None,
        weights: None,
    };
    let whole = finetune(model(vocab), data(), pad, 0.0, cfg(4)).unwrap();
    let mut config = cfg(4);
    config.checkpoint_dir = Some(tmp.path().to_path_buf());
    // An interrupted run: two steps done, then its checkpoint.
    let mut interrupted = config.clone();
    interrupted.max_steps = Some(2);
    let mut first = SftTrainer::new(model(vocab), data(), pad, 0.0, interrupted).unwrap();
    first.run().unwrap();
    first.save_checkpoint().unwrap();
    drop(first);
    let mut resumed = SftTrainer::new(model(vocab), data(), pad, 0.0, config.clone()).unwrap();
    // A different λ is another run: refused, nothing loaded.
    let mut other = SftTrainer::new(
        model(vocab),
        SftData {
            safe: Some(safe.clone()),
            ..data()
        },
        pad,
        0.5,
        config,
    )
    .unwrap();
    let err = other.resume().unwrap_err().to_string();
    assert!(err.contains("config"), "{err}");
    assert!(resumed.resume().unwrap());
    assert_eq!(resumed.step(), 2);
    let report = resumed.run().unwrap();
    assert_eq!((report.steps, report.resumed_from), (2, 2));
    let out = resumed.into_outcome(report);
    assert!(
        params(&out.model) == params(&whole.model),
        "resume is not exact"
    );
    assert_eq!(out.log, whole.log);
}
