//! The harm judge's feature study: extracts frozen SmolLM2 features of the
//! judge's label files once (cached under `target/seal-cache/judge-features`,
//! the cache `seal judge train` reads), prints extraction throughput beside
//! the machine's matmul peak, and then fits the judge head on subsets of
//! the layers to show what a cheaper feature spec saves and costs in
//! agreement.
//!
//! Run: `cargo bench -p seal-benches --bench judge_study` (needs
//! `cargo xtask setup`'s SmolLM2 and `../shared/data`). `SEAL_STUDY_STEP`
//! (default 2) sets the spacing of the layers extracted,
//! `SEAL_STUDY_MAX_LAYER` the deepest, `SEAL_STUDY_FRAMING=judge_prompt` the
//! framing, `SEAL_STUDY_FILES=N` the number of label files extracted,
//! `SEAL_STUDY_ONLY=TEXT` the head variants fitted, and
//! `SEAL_STUDY_PHASE=heads` skips extraction.

use anyhow::{Context, Result};
use seal_eval::features::{self, FeatureCache, FeatureSpec, Pooling};
use seal_model::{Llama, LoadOptions, Pretrained};

fn main() -> Result<()> {
    let dir = seal_testkit::smollm2_dir()?.context("SmolLM2 not found: run `cargo xtask setup`")?;
    let data = seal_testkit::workspace_root().join("../shared/data");
    let pre = Pretrained::load_with(&dir, &LoadOptions::default(), Llama::load)?;
    let fingerprint = features::base_model_fingerprint(&dir)?;
    let step: usize = std::env::var("SEAL_STUDY_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let env = |k: &str| std::env::var(k).ok();
    let max_layer: usize = env("SEAL_STUDY_MAX_LAYER")
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let framing = match env("SEAL_STUDY_FRAMING").as_deref() {
        Some("judge_prompt") => features::Framing::JudgePrompt,
        _ => features::Framing::Chat,
    };
    let files_limit: usize = env("SEAL_STUDY_FILES")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let spec = FeatureSpec {
        layers: (1..=max_layer).filter(|l| l % step == 0).collect(),
        pooling: vec![Pooling::ResponseMean, Pooling::Last],
        framing,
        ..FeatureSpec::default()
    };
    let cache = FeatureCache::new(seal_testkit::cache_dir().join("judge-features"));
    if std::env::var("SEAL_STUDY_PHASE").as_deref() == Ok("heads") {
        return heads(&data, &fingerprint, &spec, &cache);
    }
    let peak = seal_benches::matmul_peak_gflops(2048, tch::Device::Cpu);
    println!(
        "matmul peak (f32, 2048², {} threads): {peak:.1} GFLOP/s",
        tch::get_num_threads()
    );
    for file in seal_data::judgments::default_label_files(&data)
        .into_iter()
        .take(files_limit)
    {
        let set = seal_eval::classifier::LabelledSet::read(&file)?;
        let queries = set.queries();
        let key = FeatureCache::key(&fingerprint, &spec, &set.sha256);
        let mut last = std::time::Instant::now();
        let (_, stats) = features::cached_blocks(
            &pre.model,
            &pre.tokenizer,
            &queries,
            &spec,
            Some((&cache, &key)),
            &mut |done, total| {
                if last.elapsed().as_secs() >= 30 {
                    eprintln!("{}: {done}/{total}", file.display());
                    last = std::time::Instant::now();
                }
            },
        )?;
        match stats {
            Some(s) => {
                let flops =
                    seal_benches::llama_forward_flops(pre.model.config(), s.tokens, 1, 0, 0)
                        * spec.depth() as f64
                        / 30.0;
                println!(
                    "{}: {} pairs, {} tokens ({} padded), {:.1} s, {:.2} pairs/s, {:.0} tokens/s, {:.1} GFLOP/s = {:.0}% of peak",
                    file.file_name().unwrap().to_string_lossy(),
                    s.pairs,
                    s.tokens,
                    s.padded_tokens,
                    s.seconds,
                    s.pairs_per_second(),
                    s.tokens_per_second(),
                    flops / s.seconds / 1e9,
                    100.0 * flops / s.seconds / 1e9 / peak
                );
            }
            None => println!("{}: cached", file.display()),
        }
    }
    heads(&data, &fingerprint, &spec, &cache)
}

/// Fits heads on cached features of several specs and prints held-out
/// agreement (files whose features are not cached are left out).
fn heads(
    data: &std::path::Path,
    fingerprint: &str,
    full: &FeatureSpec,
    cache: &FeatureCache,
) -> Result<()> {
    use seal_eval::classifier::{self, HeadConfig, LabelledSet, TrainOptions};
    let mut sets = Vec::new();
    let mut blocks = Vec::new();
    for file in seal_data::judgments::default_label_files(data) {
        let set = LabelledSet::read(&file)?;
        let b = cache.load(&FeatureCache::key(fingerprint, full, &set.sha256))?;
        if b.values()
            .next()
            .is_none_or(|t| t.size()[0] != set.pairs.len() as i64)
        {
            println!("{}: not cached, left out", file.display());
            continue;
        }
        sets.push(set);
        blocks.push(b);
    }
    let mean_last = vec![Pooling::ResponseMean, Pooling::Last];
    // The MLP the study started with, and the shipped default (a small,
    // heavily regularised MLP).
    let mlp256 = HeadConfig {
        hidden: 256,
        lr: 1e-3,
        dropout: 0.3,
        weight_decay: 0.05,
        ..HeadConfig::default()
    };
    let strong = HeadConfig::default();
    let l12_20 = vec![12, 16, 20];
    let candidates: Vec<(&str, Vec<usize>, Vec<Pooling>, HeadConfig)> = vec![
        (
            "probe: L10,20,30 mean, logistic",
            vec![10, 20, 30],
            vec![Pooling::ResponseMean],
            HeadConfig {
                hidden: 0,
                ..mlp256.clone()
            },
        ),
        (
            "L10,20,30 mean+last, MLP",
            vec![10, 20, 30],
            mean_last.clone(),
            mlp256.clone(),
        ),
        (
            "six blocks L8-30, MLP",
            vec![8, 12, 16, 20, 24, 30],
            mean_last.clone(),
            mlp256.clone(),
        ),
        (
            "all even layers, MLP",
            full.layers.clone(),
            mean_last.clone(),
            mlp256.clone(),
        ),
        (
            "shallow: L8,12,16, MLP",
            vec![8, 12, 16],
            mean_last.clone(),
            mlp256.clone(),
        ),
        (
            "shallow: L12,16,20, MLP",
            l12_20.clone(),
            mean_last.clone(),
            mlp256,
        ),
        (
            "L12,16,20, small MLP, strong regularisation",
            l12_20.clone(),
            mean_last.clone(),
            strong.clone(),
        ),
        (
            "L12,16,20, logistic, strong decay",
            l12_20.clone(),
            mean_last.clone(),
            HeadConfig {
                hidden: 0,
                weight_decay: 1.0,
                ..strong.clone()
            },
        ),
        (
            "L10-22 even, small MLP, strong regularisation",
            vec![10, 12, 14, 16, 18, 20, 22],
            mean_last.clone(),
            strong.clone(),
        ),
        (
            "L12,16,20 mean only, small MLP, strong regularisation",
            l12_20,
            vec![Pooling::ResponseMean],
            strong,
        ),
    ];
    let only = std::env::var("SEAL_STUDY_ONLY").ok();
    let base = classifier::BaseModelRef {
        fingerprint: fingerprint.to_string(),
        path: String::new(),
    };
    for (label, layers, pooling, head) in candidates {
        if only.as_deref().is_some_and(|o| !label.contains(o)) {
            continue;
        }
        if !layers.iter().all(|l| full.layers.contains(l)) {
            continue;
        }
        let spec = FeatureSpec {
            layers,
            pooling,
            ..full.clone()
        };
        let x = blocks
            .iter()
            .map(|b| features::assemble(b, &spec))
            .collect::<seal_eval::Result<Vec<_>>>()?;
        let t = std::time::Instant::now();
        let opts = TrainOptions {
            features: spec.clone(),
            head,
            ..TrainOptions::default()
        };
        let trained = classifier::train_judge(&sets, &x, base.clone(), &opts)?;
        println!(
            "\n## {label} (depth {}, dim {}, head fit {:.1} s, best epoch {}/{})",
            spec.depth(),
            spec.dim(576),
            t.elapsed().as_secs_f64(),
            trained.card.best_epoch,
            trained.card.epochs_run
        );
        print!("{}", classifier::agreement_markdown(&trained.card.metrics));
    }
    Ok(())
}
