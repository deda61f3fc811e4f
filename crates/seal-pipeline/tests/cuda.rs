//! The CUDA path checked against the CPU on a tiny random model: per-sample
//! losses, greedy generation, two steps of each solver (a CUDA ranker and a
//! CPU ranker over a CUDA model), and the whole pipeline with every method on
//! the GPU.
//!
//! Each test prints a message and returns where libtorch sees no GPU, so a
//! CPU-only machine (CI) passes them without checking anything; on a GPU
//! machine run `cargo test -p seal-pipeline --test cuda -- --nocapture`.

mod common;

use seal_bilevel::*;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_model::generate::{generate, GenerationOptions};
use seal_model::optim::AdamWConfig;
use seal_model::{AttentionImpl, DynLm, LoadOptions, LoraConfig, LoraLm, Pretrained};
use seal_pipeline::Method;
use std::path::Path;
use tch::{Device, Kind};

fn gpu() -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        seal_data::testing::skip("gpu", "libtorch sees no CUDA device");
        None
    }
}

fn load(dir: &Path, device: Device) -> Pretrained {
    let mut options = LoadOptions::default();
    options.device = device;
    options.kind = Kind::Float;
    Pretrained::load(dir, &options).unwrap()
}

fn data(p: &Pretrained) -> (Vec<TokenizedSample>, Vec<TokenizedSample>) {
    let bench = seal_data::embedded::embedded_default().unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 160;
    let ft = tokenize_samples(&p.tokenizer, &bench.finetune[..12], &cfg)
        .unwrap()
        .samples;
    let safe = tokenize_samples(&p.tokenizer, &bench.safe[..6], &cfg)
        .unwrap()
        .samples;
    assert!(ft.len() >= 8 && safe.len() >= 4);
    (ft, safe)
}

/// Per-sample response NLL of every fine-tuning sample under `p`, on the CPU.
fn losses(p: Pretrained, ft: &[TokenizedSample], safe: &[TokenizedSample]) -> Vec<f64> {
    let pad = p.tokenizer.pad_token_id().unwrap();
    let rows: Vec<usize> = (0..ft.len()).collect();
    let problem = LmProblem::new(p.model, ft.to_vec(), safe.to_vec(), pad).unwrap();
    let l = problem.finetune_losses(&rows).unwrap();
    Vec::<f64>::try_from(l.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn train_config() -> TrainConfig {
    // Plain gradient steps: Adam's first step is the sign of each
    // gradient, which rounding can flip where a gradient is near zero.
    let mut ranker = RankerConfig::default();
    ranker.optimizer = RankerOptimizerKind::Sgd;
    ranker.lr = 1.0;
    let mut c = TrainConfig::default();
    c.epochs = 1;
    c.max_steps = Some(2);
    c.micro_batch = 2;
    c.grad_accum = 2;
    c.model_optimizer = AdamWConfig {
        lr: 1e-2,
        beta2: 0.95,
        ..Default::default()
    };
    c.ranker = ranker;
    c.lambda = LambdaSchedule {
        start: 0.5,
        decay_per_epoch: 0.0,
    };
    c
}

fn solver(name: &str) -> Box<dyn Solver<LmProblem<DynLm>>> {
    match name {
        "seal" => Box::new(SealPenalty),
        "seal-full" => {
            let mut config = seal_bilevel::FullPenaltyConfig::default();
            config.optimizer = train_config().model_optimizer;
            config.warm_start_steps = 2;
            Box::new(SealPenaltyFull::new(config))
        }
        _ => {
            let mut config = ImplicitConfig::default();
            config.inner_steps = 1;
            config.inverse = InverseMethod::Cg {
                iters: 3,
                tol: 1e-8,
            };
            config.damping = 10.0;
            Box::new(Implicit { config })
        }
    }
}

/// Ranker logits after two steps of `name` with the model on `model_device`
/// and the ranker on `ranker_device`.
fn two_steps(dir: &Path, name: &str, model_device: Device, ranker_device: Device) -> Vec<f64> {
    let p = load(dir, model_device);
    let (ft, safe) = data(&p);
    let mut model = p.model;
    let mut lora = LoraConfig::default();
    lora.r = 4;
    model.add_lora(&lora, 2).unwrap();
    if name == "implicit" {
        // Hessian-vector products need double backward: the math path.
        model.set_attention_impl(AttentionImpl::Math);
    }
    let ids: Vec<String> = ft.iter().map(|s| s.id.clone()).collect();
    let fp = dataset_fingerprint(&ft);
    let pad = p.tokenizer.pad_token_id().unwrap();
    let problem = LmProblem::new(model, ft, safe, pad).unwrap();
    let ranker = Ranker::new(ids, fp, Activation::Softmax, Kind::Float, ranker_device).unwrap();
    let mut t = Trainer::new(problem, solver(name), ranker, train_config()).unwrap();
    let report = t.run().unwrap();
    assert_eq!(report.total_steps, 2, "{name}");
    t.ranker().logits_vec().unwrap()
}

#[test]
fn losses_generation_and_solvers_match_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    seal_testkit::write_tiny_model_dir(&dir, |_| {}).unwrap();

    // Per-sample response NLL.
    let (cpu, gpu) = (load(&dir, Device::Cpu), load(&dir, cuda));
    assert_eq!(seal_model::CausalLm::device(&gpu.model), cuda);
    let (ft, safe) = data(&cpu);
    let (lc, lg) = (losses(cpu, &ft, &safe), losses(gpu, &ft, &safe));
    let d = max_abs_diff(&lc, &lg);
    eprintln!("per-sample NLL: max |cpu - cuda| = {d:.2e}");
    assert!(d < 1e-4, "CPU {lc:?} vs CUDA {lg:?}");

    // Greedy generation: the first token of every prompt comes from the
    // prefill's argmax and must agree; later ones may part after a near tie.
    let (cpu, gpu) = (load(&dir, Device::Cpu), load(&dir, cuda));
    let prompts: Vec<Vec<u32>> = ft
        .iter()
        .take(6)
        .map(|s| s.input_ids[..s.response_start].to_vec())
        .collect();
    let mut opts = GenerationOptions::greedy(&cpu.tokenizer, 8);
    opts.eos_token_ids.clear(); // a random model may stop at once: run all 8
    let oc = generate(&cpu.model, &prompts, &opts).unwrap();
    let og = generate(&gpu.model, &prompts, &opts).unwrap();
    let (mut same, mut total) = (0, 0);
    for (a, b) in oc.iter().zip(&og) {
        assert_eq!(a.first(), b.first(), "first generated token");
        same += a.iter().zip(b).filter(|(x, y)| x == y).count();
        total += a.len().max(b.len());
    }
    assert_eq!(total, 6 * 8);
    eprintln!("greedy generation: {same}/{total} tokens agree");

    // Two steps of each solver, with the ranker beside the model and with a
    // CPU ranker over the CUDA model.
    for name in ["seal", "seal-full", "implicit"] {
        let reference = two_steps(&dir, name, Device::Cpu, Device::Cpu);
        let moved = reference
            .iter()
            .map(|x| (x - reference[0]).abs())
            .fold(0.0, f64::max);
        assert!(moved > 1e-6, "{name}: the CPU ranker did not separate");
        for ranker_device in [cuda, Device::Cpu] {
            let got = two_steps(&dir, name, cuda, ranker_device);
            let d = max_abs_diff(&reference, &got);
            eprintln!(
                "{name}, ranker on {ranker_device:?}: max |Δ logit| = {d:.2e} (spread {moved:.2e})"
            );
            assert!(d <= 1e-3 * moved + 1e-6, "{name}: {reference:?} vs {got:?}");
        }
    }
}

#[test]
fn pipeline_runs_every_method_on_the_gpu() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::tiny_model_dir(&root.join("model"));
    let mut cfg = common::config(root);
    cfg.name = "tiny on CUDA".into();
    cfg.out = root.join("cuda");
    cfg.seeds = vec![1];
    cfg.device = "cuda".into();
    let r = seal_pipeline::run(&cfg).unwrap();
    assert_eq!(r.runs.len(), Method::ALL.len());
    for run in &r.runs {
        let e = &run.eval;
        for v in [e.asr, e.over_refusal, e.gsm8k_accuracy] {
            let v = v.unwrap();
            assert!((0.0..=1.0).contains(&v), "{}: {v}", run.method);
        }
        assert!(e.utility_nll.unwrap().is_finite(), "{}", run.method);
    }

    // The same configuration on the CPU: the aligned model and the seeded
    // selections agree.
    let mut on_cpu = cfg.clone();
    on_cpu.device = "cpu".into();
    on_cpu.out = root.join("cpu");
    on_cpu.select.methods = vec![Method::Random.into(), Method::Oracle.into()];
    let c = seal_pipeline::run(&on_cpu).unwrap();
    let nll =
        |r: &seal_pipeline::PipelineResult| r.aligned_eval.as_ref().unwrap().utility_nll.unwrap();
    let (a, b) = (nll(&r), nll(&c));
    eprintln!("aligned model's utility NLL: cuda {a:.6}, cpu {b:.6}");
    assert!((a - b).abs() <= 1e-3 * b.abs(), "cuda {a} vs cpu {b}");
    for m in ["random", "oracle"] {
        let kept = |out: &Path| {
            std::fs::read_to_string(out.join(format!("seed-1/{m}/kept_ids.txt"))).unwrap()
        };
        assert_eq!(kept(&cfg.out), kept(&on_cpu.out), "{m}");
    }
}

/// `seal --tf32` (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1) really changes how
/// CUDA runs f32 matmuls, and only by TF32's rounding: with
/// `SEAL_EXPECT_TF32=1` (and the override set; libtorch reads it once per
/// process, so scripts/gpu_check.sh runs this test in a process of its own)
/// a 512² f32 matmul is off the f64 product by TF32's error (above 1e-5
/// relative, below 1e-2) and a model's losses stay within 1e-2 of the
/// CPU's; without them, the error is f32's (below 1e-5).
#[test]
fn tf32_override_switches_cuda_f32_matmuls_to_tf32_rounding() {
    let Some(device) = gpu() else { return };
    let expect = std::env::var_os("SEAL_EXPECT_TF32").is_some();
    assert_eq!(
        expect,
        seal_model::runtime::tf32_requested(),
        "SEAL_EXPECT_TF32 and {} must be set together",
        seal_model::runtime::TF32_OVERRIDE_VAR
    );
    tch::manual_seed(0);
    let a = tch::Tensor::randn([512, 512], (Kind::Double, Device::Cpu));
    let b = tch::Tensor::randn([512, 512], (Kind::Double, Device::Cpu));
    let exact = a.matmul(&b);
    let got = a
        .to_kind(Kind::Float)
        .to_device(device)
        .matmul(&b.to_kind(Kind::Float).to_device(device))
        .to_device(Device::Cpu)
        .to_kind(Kind::Double);
    let rel = (&got - &exact).norm().double_value(&[]) / exact.norm().double_value(&[]);
    println!("f32 matmul relative error on CUDA: {rel:.2e} (TF32 expected: {expect})");
    if !expect {
        assert!(rel < 1e-5, "{rel}");
        return;
    }
    assert!(rel > 1e-5 && rel < 1e-2, "{rel}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    seal_testkit::write_tiny_model_dir(&dir, |_| {}).unwrap();
    let (cpu, gpu_model) = (load(&dir, Device::Cpu), load(&dir, device));
    let (ft, safe) = data(&cpu);
    let d = max_abs_diff(&losses(cpu, &ft, &safe), &losses(gpu_model, &ft, &safe));
    println!("per-sample NLL, CUDA with TF32 against the CPU: max diff {d:.2e}");
    assert!(d < 1e-2, "{d}");
}
