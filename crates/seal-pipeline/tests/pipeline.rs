//! The whole pipeline on a tiny random model and the embedded dataset:
//! every method runs, selections have the sizes their rules promise, the
//! outputs and the report are written, the aligned model is cached, and
//! bad configs fail naming the field.

mod common;

use common::{config, tiny_model_dir};
use seal_pipeline::{Method, PipelineConfig};
use std::path::Path;

#[test]
fn every_method_end_to_end_with_report_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let cfg = config(root);
    let r = seal_pipeline::run(&cfg).unwrap();

    let bench = seal_data::benchmark::Benchmark::read(&root.join("bench")).unwrap();
    let n = r.data["finetune (tokenised)"];
    assert_eq!(n, bench.finetune.len(), "max_len 1024 keeps every sample");
    let harmful = r.data["finetune harmful"];
    assert!(harmful > 0);
    let k = (0.8 * n as f64) as usize;
    assert_eq!(r.runs.len(), 2 * Method::ALL.len());
    assert_eq!(r.rankers.len(), 4, "two solvers × two seeds");
    for run in &r.runs {
        let method: Method = run.method.parse().unwrap();
        let expect_kept = match method {
            Method::Full | Method::Safeinstr | Method::Mixed => n,
            Method::Oracle => n - harmful,
            _ => k,
        };
        assert_eq!(run.kept, expect_kept, "{}", run.method);
        let expect_added = match method {
            Method::Safeinstr | Method::SealSafeinstr => bench.safe.len(),
            _ => 0,
        };
        assert_eq!(run.added, expect_added, "{}", run.method);
        if method == Method::Oracle {
            assert_eq!(run.harmful_kept, 0);
            assert_eq!(run.auroc, Some(1.0));
        }
        if matches!(method, Method::GradSim | Method::RepSim) {
            let auroc = run.auroc.unwrap();
            assert!((0.0..=1.0).contains(&auroc), "{}: {auroc}", run.method);
        }
        if matches!(method, Method::Full | Method::Mixed | Method::Safeinstr) {
            assert_eq!(run.harmful_kept, harmful);
            assert_eq!(run.auroc, None, "{} does not rank", run.method);
        }
        assert_eq!(run.steps, 2);
        assert_eq!(run.log.len(), 2);
        let e = &run.eval;
        for v in [e.asr, e.over_refusal, e.gsm8k_accuracy] {
            let v = v.unwrap();
            assert!((0.0..=1.0).contains(&v), "{}: {v}", run.method);
        }
        if method == Method::Mixed {
            assert!(run.log.iter().all(|s| s.lambda == 0.5 && s.safe_loss > 0.0));
        }
        let dir = cfg
            .out
            .join(format!("seed-{}", run.seed))
            .join(method.name());
        for f in [
            "kept_ids.txt",
            "scored.jsonl",
            "train_log.jsonl",
            "safety_responses.jsonl",
        ] {
            assert!(dir.join(f).is_file(), "{}", dir.join(f).display());
        }
        assert!(dir.join("adapter/adapter_model.safetensors").is_file());
        let kept_lines = std::fs::read_to_string(dir.join("kept_ids.txt"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(kept_lines, run.kept + run.added, "{}", run.method);
    }
    // Seeds change random selections.
    let random: Vec<_> = r
        .runs
        .iter()
        .filter(|x| x.method == Method::Random.name())
        .collect();
    let kept = |seed: u64| {
        std::fs::read_to_string(cfg.out.join(format!("seed-{seed}/random/kept_ids.txt"))).unwrap()
    };
    assert_eq!(random.len(), 2);
    assert_ne!(kept(1), kept(2));
    // Report, results and figures.
    let md = std::fs::read_to_string(cfg.out.join("report.md")).unwrap();
    for m in Method::ALL {
        assert!(
            md.contains(&format!("| {} |", m.name())),
            "report misses {m}"
        );
    }
    assert!(md.contains("Goals"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["runs"].as_array().unwrap().len(),
        2 * Method::ALL.len()
    );
    for f in [
        "finetune_loss.svg",
        "scores_seal.svg",
        "scores_seal-full.svg",
        "align_loss.svg",
    ] {
        let svg = std::fs::read_to_string(cfg.out.join(f)).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
    }
    let aligned = r.aligned.as_ref().unwrap();
    assert!(!aligned.cached && aligned.dir.join("model.safetensors").is_file());
    assert!(aligned.dir.join("tokenizer.json").is_file());

    // Second run, one method: the aligned model comes from the cache.
    let mut again = cfg.clone();
    again.seeds = vec![1];
    again.select.methods = vec![Method::Random.into()];
    let r2 = seal_pipeline::run(&again).unwrap();
    let a2 = r2.aligned.as_ref().unwrap();
    assert!(a2.cached);
    assert_eq!(a2.dir, aligned.dir);
    let metrics = |e: &seal_pipeline::stages::ModelEval| {
        (e.asr, e.over_refusal, e.utility_nll, e.gsm8k_accuracy)
    };
    assert_eq!(
        metrics(r2.aligned_eval.as_ref().unwrap()),
        metrics(r.aligned_eval.as_ref().unwrap()),
        "same aligned model, same greedy evaluation"
    );

    // A cache shared across runs (`cache_dir`) is keyed by content: a run
    // in another output directory, from a copy of the base model at another
    // path, finds the aligned model the first shared run left there.
    let shared = root.join("shared-cache");
    let mut first = again.clone();
    first.out = root.join("out-shared-1");
    first.cache_dir = Some(shared.clone());
    let r3 = seal_pipeline::run(&first).unwrap();
    let a3 = r3.aligned.as_ref().unwrap();
    assert!(!a3.cached, "a new shared cache starts empty");
    assert!(a3.dir.starts_with(&shared), "{}", a3.dir.display());
    tiny_model_dir(&root.join("model-copy"));
    let mut second = first.clone();
    second.out = root.join("out-shared-2");
    second.model.dir = Some(root.join("model-copy"));
    let r4 = seal_pipeline::run(&second).unwrap();
    let a4 = r4.aligned.as_ref().unwrap();
    assert!(a4.cached, "same content at another path: a cache hit");
    assert_eq!(a4.dir, a3.dir);
    assert!(!second
        .out
        .join("cache")
        .join(a4.dir.file_name().unwrap())
        .exists());
}

#[test]
fn bad_configs_name_the_field() {
    let base = Path::new("/nonexistent");
    let parse = |text: &str| {
        PipelineConfig::from_toml(text, Path::new("x.toml"), base)
            .unwrap_err()
            .to_string()
    };
    let e = parse("seeds = []");
    assert!(e.contains("seeds"), "{e}");
    let e = parse("[select]\np = 1.5");
    assert!(e.contains("select.p"), "{e}");
    let e = parse("[select]\nmethods = [\"seal\", \"magic\"]");
    assert!(e.contains("x.toml") && e.contains("magic"), "{e}");
    let e = parse("[rank]\nranker_optimizer = \"adagrad\"");
    assert!(e.contains("rank.ranker_optimizer"), "{e}");
    let e = parse("[finetune]\nschedule = \"linear\"");
    assert!(e.contains("finetune.schedule"), "{e}");
    let e = parse("[model]\ndtype = \"f16\"");
    assert!(
        e.contains("dtype") && e.contains("f16") && e.contains("bf16"),
        "{e}"
    );
    let e = parse("unknown_key = 1");
    assert!(e.contains("unknown_key"), "{e}");
    let e = parse("[select]\nmethods = [\"seal\", \"seal\"]");
    assert!(e.contains("twice"), "{e}");
    let e = parse("[rank.full]\nlr_scale = -1.0");
    assert!(e.contains("rank.full.lr_scale"), "{e}");
    let e = parse("[rank.full]\nwarm_steps = 3");
    assert!(e.contains("warm_steps"), "{e}");
    // A partial [rank.full] keeps the solver's defaults for the rest.
    let c = PipelineConfig::from_toml("[rank.full]\ninner_steps = 4", Path::new("x.toml"), base)
        .unwrap();
    let d = seal_bilevel::FullPenaltyConfig::default();
    assert_eq!(c.rank.full.inner_steps, 4);
    assert_eq!(c.rank.full.warm_start_steps, d.warm_start_steps);
    assert_eq!(c.rank.full.read_after_update, d.read_after_update);

    // Relative paths resolve against the config's directory.
    let c = PipelineConfig::from_toml(
        "out = \"o\"\n[data]\ndir = \"d\"\n[select]\nmethods = [\"seal\", \"oracle\"]",
        Path::new("x.toml"),
        Path::new("/cfg"),
    )
    .unwrap();
    assert_eq!(c.out, Path::new("/cfg/o"));
    assert_eq!(c.data.dir.as_deref(), Some(Path::new("/cfg/d")));
    assert_eq!(c.solvers().unwrap(), ["seal"]);
    // The TOML image round-trips.
    let back =
        PipelineConfig::from_toml(&c.to_toml().unwrap(), Path::new("y"), Path::new("/")).unwrap();
    assert_eq!(back, c);
}

#[test]
fn set_overrides_land_in_the_file_tables_and_bad_ones_name_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.toml");
    std::fs::write(
        &path,
        "seeds = [1]\n[data]\ndir = \"bench\"\n[rank]\npreset = \"official\"\nepochs = 2\n",
    )
    .unwrap();
    let set = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        PipelineConfig::from_file_with(&path, &o)
    };
    let c = set(&[
        "rank.lambda=0.5",
        "rank.full.warm_start_steps = 200",
        "rank.lora.r=8",
        "device=cuda",
        "seeds=[4, 5]",
    ])
    .unwrap();
    assert_eq!(c.rank.lambda, 0.5);
    assert_eq!(c.rank.full.warm_start_steps, 200);
    // Keys not overridden keep the file's value, then the preset's.
    assert_eq!(c.rank.epochs, 2);
    assert_eq!(c.rank.ranker_lr, 5e-3);
    assert_eq!((c.rank.lora.r, c.rank.lora.alpha), (8, 16.0));
    assert_eq!(c.device, "cuda");
    assert_eq!(c.seeds, [4, 5]);
    // Paths given by an override resolve against the file's directory.
    let c = set(&["data.dir=\"other\""]).unwrap();
    assert_eq!(c.data.dir.unwrap(), tmp.path().join("other"));
    // An empty value removes the key: the preset's value applies.
    let c = set(&["rank.epochs=", "rank.nothing.here="]).unwrap();
    assert_eq!(c.rank.epochs, 3);
    // No overrides: the file as written.
    assert_eq!(set(&[]).unwrap(), PipelineConfig::from_file(&path).unwrap());
    for (o, needle) in [
        ("rank.lambda", "KEY=VALUE"),
        ("rank..lambda=1", "empty key"),
        ("seeds.first=1", "`seeds` is not a table"),
        ("rank.lamda=0.5", "lamda"),
        ("rank.lambda=1.5", "lambda"),
    ] {
        let e = set(&[o]).unwrap_err().to_string();
        assert!(e.contains(needle), "{o}: {e}");
    }
}

#[test]
fn rank_tables_start_from_their_preset_and_keys_override_it() {
    use seal_bilevel::{EpochLength, RankPreset};
    let parse = |text: &str| PipelineConfig::from_toml(text, Path::new("x.toml"), Path::new("/"));
    // Each preset's settings, read back from the config.
    for preset in [RankPreset::Small, RankPreset::Official] {
        let s = preset.settings();
        let c = parse(&format!("[rank]\npreset = \"{}\"", preset.as_str())).unwrap();
        let r = &c.rank;
        assert_eq!(r.preset, preset);
        assert_eq!(r.epochs, s.epochs);
        assert_eq!(r.lr, s.model_lr);
        assert_eq!(r.ranker_lr, s.ranker_lr);
        assert_eq!(r.ranker_betas, [s.ranker_betas.0, s.ranker_betas.1]);
        assert_eq!(Some(r.ranker_clip), s.ranker_max_grad_norm);
        assert_eq!(r.lambda_decay, s.lambda_decay);
        assert_eq!(r.epoch_length, s.epoch_length);
        assert_eq!((r.lora.r, r.lora.alpha), (s.lora_r, s.lora_alpha));
        assert_eq!(r.lora.targets, ["q_proj", "v_proj"]);
        // The written image reads back to the same settings.
        let back = parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.rank, c.rank);
    }
    let official = parse("[rank]\npreset = \"official\"").unwrap().rank;
    assert_eq!(official.ranker_optimizer, "adam");
    assert_eq!(official.ranker_lr, 5e-3);
    assert_eq!(official.ranker_clip, 10.0);
    assert_eq!(official.lora.alpha, 16.0);
    assert_eq!(official.lr, 1e-5);
    assert_eq!(official.epochs, 3);
    assert_eq!(official.epoch_length, EpochLength::Shorter);
    // No preset: the small one, as `seal rank`.
    assert_eq!(parse("").unwrap().rank.preset, RankPreset::Small);
    assert_eq!(parse("").unwrap().rank.ranker_optimizer, "sgd");
    // Keys given override the preset; the rest stay the preset's.
    let c = parse("[rank]\npreset = \"official\"\nepochs = 1\n[rank.lora]\nr = 8").unwrap();
    assert_eq!(c.rank.epochs, 1);
    assert_eq!((c.rank.lora.r, c.rank.lora.alpha), (8, 16.0));
    assert_eq!(c.rank.ranker_lr, 5e-3);
    // Bad values name their key.
    for (text, key) in [
        ("[rank]\npreset = \"huge\"", "huge"),
        ("[rank]\nranker_clip = -1.0", "rank.ranker_clip"),
        ("[rank]\nranker_betas = [0.9, 1.5]", "rank.ranker_betas"),
        ("[rank]\nepoch_length = \"longest\"", "longest"),
        ("[rank]\nrankr_lr = 1.0", "rankr_lr"),
        (
            "[select.similarity]\nresponse_tokens = 0",
            "select.similarity",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn anchor_methods_without_anchors_fail_before_any_training() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    // The embedded dataset has no harmful anchors.
    cfg.data.dir = None;
    cfg.seeds = vec![1];
    cfg.align.enabled = false;
    cfg.select.methods = vec![Method::Random.into(), Method::RepSim.into()];
    let e = seal_pipeline::run(&cfg).unwrap_err().to_string();
    assert!(e.contains("harmful_anchors.jsonl"), "{e}");
    assert!(!cfg.out.join("seed-1").exists(), "nothing ran");
}

#[test]
fn partial_align_tables_keep_the_alignment_defaults() {
    let parse = |text: &str| PipelineConfig::from_toml(text, Path::new("x.toml"), Path::new("/"));
    let defaults = seal_pipeline::config::AlignConfig::default();
    let c = parse("[align.sft]\nepochs = 1\nschedule = \"cosine\"").unwrap();
    assert_eq!(c.align.sft.epochs, 1);
    assert_eq!(c.align.sft.schedule, "cosine");
    // Fields not written stay those of the alignment stage, not of a plain
    // SFT run (whose adapter covers q_proj and v_proj only).
    assert_eq!(c.align.sft.lr, defaults.sft.lr);
    assert_eq!(c.align.sft.lora, defaults.sft.lora);
    assert!(c.align.sft.lora.targets.len() > 2);
    let c = parse("[align.sft.lora]\nr = 4").unwrap();
    assert_eq!(c.align.sft.lora.r, 4);
    assert_eq!(c.align.sft.lora.targets, defaults.sft.lora.targets);
    assert_eq!(c.align.sft.epochs, defaults.sft.epochs);
    // Unknown keys are still refused, at every level.
    let e = parse("[align.sft]\nepoch = 1").unwrap_err().to_string();
    assert!(e.contains("epoch"), "{e}");
    let e = parse("[align.sft.lora]\nrank = 4").unwrap_err().to_string();
    assert!(e.contains("rank"), "{e}");
    // The written image reads back to the same configuration.
    let c = parse("[align]\nseed = 3\n[align.sft]\nlr = 1e-4").unwrap();
    let back = parse(&c.to_toml().unwrap()).unwrap();
    assert_eq!(back, c);
    // Token weighting: off by default, and left out of the written image
    // then (so existing runs and cached aligned models keep their keys).
    assert!(!c.align.sft.token_weighted && !c.finetune.token_weighted);
    assert!(!c.to_toml().unwrap().contains("token_weighted"));
    let c = parse("[align.sft]\ntoken_weighted = true\n[finetune]\ntoken_weighted = true").unwrap();
    assert!(c.align.sft.token_weighted && c.finetune.token_weighted);
    assert_eq!(c.align.sft.lora, defaults.sft.lora);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
    // Self-distillation: off by default and then not written; a partial
    // table takes the defaults; unknown keys are refused.
    assert!(c.align.self_distill.is_none());
    assert!(!c.to_toml().unwrap().contains("self_distill"));
    let c = parse(
        "[align.self_distill]
max_new_tokens = 64",
    )
    .unwrap();
    let d = c.align.self_distill.clone().unwrap();
    assert_eq!(d.max_new_tokens, 64);
    assert_eq!(d.batch, seal_pipeline::config::SelfDistill::default().batch);
    assert_eq!(c.align.sft, defaults.sft);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
    let e = parse(
        "[align.self_distill]
tokens = 64",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tokens"), "{e}");
    // The refusal epochs: 0 by default and then not written.
    assert_eq!(defaults.refusal_epochs, 0);
    assert!(!parse("")
        .unwrap()
        .to_toml()
        .unwrap()
        .contains("refusal_epochs"));
    let c = parse("[align]\nrefusal_epochs = 2").unwrap();
    assert_eq!(c.align.refusal_epochs, 2);
    assert_eq!(c.align.sft, defaults.sft);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
}

#[test]
fn refusal_epochs_continue_on_the_refusals_alone() {
    use seal_data::Label;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let cfg = config(root);
    let align = seal_data::embedded::embedded_default().unwrap().align;
    let refusals = align
        .iter()
        .filter(|s| s.label == Some(Label::Safe))
        .count();
    assert!(refusals > 0 && refusals < align.len());
    let mut ac = cfg.align.clone();
    ac.sft.epochs = 1;
    ac.sft.batch = 8;
    ac.sft.max_steps = None;
    let run = |ac: &seal_pipeline::config::AlignConfig, out: &str| {
        seal_pipeline::stages::align_to(
            &root.join("model"),
            &align,
            ac,
            cfg.max_len,
            tch::Device::Cpu,
            seal_model::WeightDtype::F32,
            &root.join(out),
            false,
            None,
        )
        .unwrap()
    };
    let plain = run(&ac, "plain");
    assert_eq!(plain.log.len(), align.len().div_ceil(8));
    ac.refusal_epochs = 1;
    let deep = run(&ac, "deep");
    // One more epoch, over the refusals only.
    assert_eq!(deep.log.len(), plain.log.len() + refusals.div_ceil(8));
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_ne!(weights(&plain.dir), weights(&deep.dir));
    // Refused when there is nothing to continue on.
    let benign_only: Vec<_> = align
        .iter()
        .filter(|s| s.label != Some(Label::Safe))
        .cloned()
        .collect();
    let e = seal_pipeline::stages::align_to(
        &root.join("model"),
        &benign_only,
        &ac,
        cfg.max_len,
        tch::Device::Cpu,
        seal_model::WeightDtype::F32,
        &root.join("none"),
        false,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("refusal"), "{e}");
}

#[test]
fn token_weights_make_the_loss_a_mean_over_tokens() {
    use seal_data::tokenize::TokenizedSample;
    let sample = |prompt: usize, response: usize| TokenizedSample {
        id: format!("{prompt}-{response}"),
        index: 0,
        label: None,
        input_ids: vec![5; prompt + response],
        response_start: prompt,
    };
    let rows = [sample(10, 2), sample(3, 6), sample(7, 4)];
    let w = seal_pipeline::stages::token_weights(&rows);
    // Response lengths 2, 6, 4 (mean 4): weights 0.5, 1.5, 1.0.
    assert_eq!(w, vec![0.5, 1.5, 1.0]);
    // mean(w_i · ℓ_i) with per-sample means ℓ_i equals the token mean.
    let (nll, len) = ([2.0, 1.0, 3.0], [2.0, 6.0, 4.0]);
    let weighted: f64 = w.iter().zip(nll).map(|(a, b)| a * b).sum::<f64>() / 3.0;
    let token_mean = nll.iter().zip(len).map(|(a, b)| a * b).sum::<f64>() / len.iter().sum::<f64>();
    assert!((weighted - token_mean).abs() < 1e-12);
}

#[test]
fn a_selection_equal_to_an_earlier_one_reuses_its_run_and_matches_a_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    cfg.seeds = vec![1];
    // At p = 1 random and the loss rule keep the whole pool, as `full` does
    // (in pool order): the same data and objective, so one fine-tuning.
    cfg.select.p = 1.0;
    cfg.select.methods = vec![
        Method::Full.into(),
        Method::Random.into(),
        Method::Loss.into(),
    ];
    let r = seal_pipeline::run(&cfg).unwrap();
    let full = r.runs.iter().find(|x| x.method == "full").unwrap();
    assert_eq!(full.reused_from, None);
    assert!(full.finetune_seconds > 0.0);
    let seed_dir = cfg.out.join("seed-1");
    let adapter = |m: &str| {
        std::fs::read(seed_dir.join(m).join("adapter/adapter_model.safetensors")).unwrap()
    };
    let eval_json = |e: &seal_pipeline::stages::ModelEval| {
        let mut e = e.clone();
        e.seconds = 0.0;
        serde_json::to_string(&e).unwrap()
    };
    for m in ["random", "loss"] {
        let run = r.runs.iter().find(|x| x.method == m).unwrap();
        assert_eq!(run.reused_from.as_deref(), Some("full"), "{m}");
        assert_eq!((run.finetune_seconds, run.eval.seconds), (0.0, 0.0), "{m}");
        assert_eq!(eval_json(&run.eval), eval_json(&full.eval), "{m}");
        assert_eq!(run.log.len(), full.log.len());
        assert_eq!(adapter(m), adapter("full"), "{m}");
        // The method's own audit outputs, the reused run's responses.
        assert!(seed_dir.join(m).join("kept_ids.txt").is_file());
        assert_eq!(
            std::fs::read(seed_dir.join(m).join("safety_responses.jsonl")).unwrap(),
            std::fs::read(seed_dir.join("full/safety_responses.jsonl")).unwrap()
        );
    }
    let md = std::fs::read_to_string(cfg.out.join("report.md")).unwrap();
    assert!(md.contains("`random` that of `full` (seed 1)"), "{md}");

    // The claim behind the reuse: run on its own, `random` gives the very
    // same fine-tuning and evaluation.
    let mut alone = cfg.clone();
    alone.out = root.join("out-alone");
    alone.select.methods = vec![Method::Random.into()];
    let a = seal_pipeline::run(&alone).unwrap();
    let own = &a.runs[0];
    assert_eq!(own.reused_from, None);
    assert_eq!(eval_json(&own.eval), eval_json(&full.eval));
    let losses = |run: &seal_pipeline::MethodRun| -> Vec<u64> {
        run.log.iter().map(|s| s.loss.to_bits()).collect()
    };
    assert_eq!(losses(own), losses(full));
    assert_eq!(
        std::fs::read(
            alone
                .out
                .join("seed-1/random/adapter/adapter_model.safetensors")
        )
        .unwrap(),
        adapter("full")
    );

    // Different data is never reused: at p = 0.8 random keeps a subset.
    let mut subset = cfg.clone();
    subset.out = root.join("out-subset");
    subset.select.p = 0.8;
    subset.select.methods = vec![Method::Full.into(), Method::Random.into()];
    let s = seal_pipeline::run(&subset).unwrap();
    assert!(s.runs.iter().all(|x| x.reused_from.is_none()));
}

#[test]
fn resume_keeps_finished_work_and_refuses_another_config() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    cfg.seeds = vec![1];
    cfg.select.methods = vec![Method::Seal.into(), Method::Random.into()];
    let resume = seal_pipeline::RunOptions { resume: true };
    // Nothing to resume yet: a fresh run.
    let first = seal_pipeline::run_with(&cfg, &resume).unwrap();
    assert_eq!(first.runs.len(), 2);
    let adapter = cfg
        .out
        .join("seed-1/seal/adapter/adapter_model.safetensors");
    let written = std::fs::metadata(&adapter).unwrap().modified().unwrap();

    // A second seed: seed 1 is kept as recorded (timings included, so it
    // was not run again), seed 2 is run.
    cfg.seeds = vec![1, 2];
    let second = seal_pipeline::run_with(&cfg, &resume).unwrap();
    assert_eq!(second.runs.len(), 4);
    assert_eq!(second.rankers.len(), 2);
    let json = |v: &seal_pipeline::MethodRun| serde_json::to_string(v).unwrap();
    for (a, b) in first.runs.iter().zip(&second.runs) {
        assert_eq!(json(a), json(b));
    }
    assert_eq!(first.rankers[0].seconds, second.rankers[0].seconds);
    assert_eq!(first.rankers[0].logits, second.rankers[0].logits);
    assert_eq!(first.base_eval, second.base_eval);
    assert_eq!(
        std::fs::metadata(&adapter).unwrap().modified().unwrap(),
        written
    );
    assert!(second.runs.iter().any(|r| r.seed == 2));
    // The total wall time counts both invocations: the first one's
    // recorded time plus the second's own.
    assert!(first.seconds > 0.0);
    assert!(
        second.seconds > first.seconds + second.runs[2].finetune_seconds,
        "{} vs {} + {}",
        second.seconds,
        first.seconds,
        second.runs[2].finetune_seconds
    );

    // Another setting: refused, naming the line that differs.
    cfg.select.p = 0.5;
    let e = seal_pipeline::run_with(&cfg, &resume)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another configuration") && e.contains("p = "),
        "{e}"
    );

    // A recorded ranker that cannot be read back is an error, not a rerun.
    cfg.select.p = 0.8;
    std::fs::remove_dir_all(cfg.out.join("seed-2/rank-seal")).unwrap();
    let e = seal_pipeline::run_with(&cfg, &resume)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ranker seal of seed 2"), "{e}");
}

#[test]
fn bf16_weights_run_every_stage_with_their_own_aligned_model() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    let mut cfg = config(root);
    cfg.seeds = vec![1];
    cfg.align.enabled = true;
    cfg.cache_dir = Some(root.join("cache"));
    cfg.select.methods = vec![
        Method::Seal.into(),
        Method::Random.into(),
        Method::GradSim.into(),
    ];
    let full = seal_pipeline::run(&cfg).unwrap();
    let mut low = cfg.clone();
    low.model.dtype = seal_model::WeightDtype::Bf16;
    low.out = root.join("out-bf16");
    let half = seal_pipeline::run(&low).unwrap();

    // The bf16 run aligns its own model: the f32 entry is not reused.
    let (a, b) = (full.aligned.unwrap(), half.aligned.unwrap());
    assert_ne!(a.dir, b.dir);
    assert!(!b.cached);
    assert_eq!(full.runs.len(), half.runs.len());
    for (x, y) in full.runs.iter().zip(&half.runs) {
        assert_eq!((&x.method, x.kept), (&y.method, y.kept));
        // First step: the same data on weights that differ by bf16 rounding.
        let (lx, ly) = (x.log[0].loss, y.log[0].loss);
        assert!(
            ly.is_finite() && lx != ly && (lx - ly).abs() < 0.02 * lx,
            "{}: f32 {lx} vs bf16 {ly} (equal: bf16 not used)",
            x.method
        );
        assert!(y.eval.utility_nll.unwrap().is_finite(), "{}", y.method);
    }
    // Recorded: f32 runs keep the config they had before the field existed.
    let recorded = |out: &Path| std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(recorded(&low.out).contains("dtype = \"bf16\""));
    assert!(!recorded(&cfg.out).contains("dtype"));
}
