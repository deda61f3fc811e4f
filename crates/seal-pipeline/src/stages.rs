//! The pipeline's stages as plain functions, each usable on its own:
//! [`resolve_model`], [`align`], [`rank`], [`select`], [`finetune_on`] and
//! [`evaluate`].

use crate::config::{
    AlignConfig, EvalConfig, LoraShape, Method, RankConfig, SelfDistill, SftConfig,
    SimilarityShape, Solver,
};
use crate::error::{PipelineError, Result};
use seal_bilevel::{
    dataset_fingerprint, LambdaSchedule, LmProblem, Ranker, RankerConfig, SealPenalty,
    SealPenaltyFull, SftData, SftStep, TrainConfig, TrainReport, Trainer,
};
use seal_data::fsutil::StagingDir;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_data::{Label, Sample, TextTokenizer};
use seal_eval::refusal::RefusalMatcher;
use seal_eval::KeywordJudge;
use seal_model::generate::GenerationOptions;
use seal_model::optim::AdamWConfig;
use seal_model::{CausalLm, DynLm, LoadOptions, LoraConfig, LoraLm, Pretrained};
use seal_select::dsir::{sample_text, Dsir};
use seal_select::loss::{response_nll, LossBased};
use seal_select::rules::{Full, MixedObjective, Oracle, Random, SafeInstr, SelectionRule, TopP};
use seal_select::similarity::{
    anchor_scores, features, AnchorSimilarity, FeatureConfig, FeatureKind,
};
use seal_select::{Budget, Objective, Selection, SelectionInput};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

/// Files of a model directory besides the weights and `config.json`.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Marks a finished cache entry (written last).
const COMPLETE: &str = ".seal-complete";

/// The model directory to start from: `dir`, or `gguf` imported once into
/// `cache`, or (neither given) the SmolLM2-135M-Instruct GGUF of the
/// project's `.venv` (`$SEAL_SMOLLM2_GGUF` overrides its location).
pub fn resolve_model(dir: Option<&Path>, gguf: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    let gguf = match gguf {
        Some(g) => g.to_path_buf(),
        None => seal_model::locate::smollm2_gguf().ok_or_else(|| {
            PipelineError::config(
                "model",
                "no model given and the SmolLM2 GGUF is not installed (run `cargo xtask setup`, \
                 or set model.dir / model.gguf)",
            )
        })?,
    };
    let stem = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let meta = std::fs::metadata(&gguf).map_err(|e| PipelineError::io(&gguf, e))?;
    // Keyed by the canonical path: `a/../b` and a symlink name the same file.
    let gguf = std::fs::canonicalize(&gguf).unwrap_or(gguf);
    let key = short_hash(&[
        gguf.display().to_string().as_bytes(),
        &meta.len().to_le_bytes(),
    ]);
    let target = cache.join(format!("{stem}-{key}"));
    if target.join(COMPLETE).is_file() {
        return Ok(target);
    }
    tracing::info!("importing {} into {}", gguf.display(), target.display());
    let staging = StagingDir::new(&target)?;
    seal_model::gguf::import_gguf(&gguf, staging.path())?;
    finish_cache_entry(staging)?;
    Ok(target)
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Moves a finished staging directory to `target` (file by file when
/// `target` exists: only the files written here are replaced) and marks it
/// complete last, so a killed run never leaves an entry a later run trusts.
fn finish_cache_entry(staging: StagingDir) -> Result<()> {
    let dir = staging.commit()?;
    seal_data::fsutil::write_atomic(&dir.join(COMPLETE), b"ok\n")?;
    Ok(())
}

/// Loads an f32 model directory (weights and tokenizer).
pub fn load(dir: &Path, device: Device) -> Result<Pretrained> {
    Ok(Pretrained::load(
        dir,
        &LoadOptions {
            device,
            kind: Kind::Float,
        },
    )?)
}

/// The padding id: the pad token, else the first EOS, else 0.
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .pad_token_id()
        .or_else(|| tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0)
}

/// Tokenises `samples` with the chat template (response-only loss), warning
/// about samples too long for `max_len`.
pub fn tokenize(
    tokenizer: &TextTokenizer,
    name: &str,
    samples: &[Sample],
    max_len: usize,
) -> Result<Vec<TokenizedSample>> {
    let cfg = TokenizeConfig {
        max_len,
        ..Default::default()
    };
    let d = tokenize_samples(tokenizer, samples, &cfg)?;
    let dropped = d.summary.total - d.summary.kept;
    if dropped > 0 {
        tracing::warn!(
            "{name}: {dropped} of {} samples longer than max_len {max_len} are left out",
            d.summary.total
        );
    }
    Ok(d.samples)
}

fn lora(shape: &LoraShape) -> LoraConfig {
    LoraConfig {
        r: shape.r,
        alpha: shape.alpha,
        target_modules: shape.targets.clone(),
        ..Default::default()
    }
}

/// Tokenises the fine-tuning pool ([`tokenize`]); a pool with no sample
/// that fits `max_len` is an error.
pub fn tokenize_pool(
    tokenizer: &TextTokenizer,
    pool: &[Sample],
    max_len: usize,
) -> Result<Vec<TokenizedSample>> {
    let tokens = tokenize(tokenizer, "fine-tuning pool", pool, max_len)?;
    if tokens.is_empty() {
        return Err(PipelineError::stage(
            "data",
            format!("every pool sample is longer than max_len {max_len}"),
        ));
    }
    Ok(tokens)
}

/// The model optimiser of every training stage: AdamW, betas (0.9, 0.95),
/// eps 1e-8, no weight decay.
pub fn model_optimizer(lr: f64) -> AdamWConfig {
    AdamWConfig {
        lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

/// Where a training stage keeps its checkpoints (`step-<n>/` and
/// `latest`, see [`seal_bilevel::Trainer`]) and whether it continues from
/// the newest one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointing {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// A checkpoint every this many optimiser steps.
    pub every: usize,
    /// Continue from the newest checkpoint in `dir`, when there is one.
    pub resume: bool,
}

fn sft_train_config(
    c: &SftConfig,
    seed: u64,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<TrainConfig> {
    Ok(TrainConfig {
        checkpoint_every: checkpoints.map(|c| c.every),
        checkpoint_dir: checkpoints.map(|c| c.dir.clone()),
        resume: checkpoints.is_some_and(|c| c.resume),
        epochs: c.epochs,
        max_steps: c.max_steps,
        micro_batch: c.batch,
        grad_accum: 1,
        seed,
        bucket_batches: Some(16),
        model_optimizer: model_optimizer(c.lr),
        model_schedule: c
            .schedule
            .parse()
            .map_err(|e: seal_bilevel::BilevelError| {
                PipelineError::config("schedule", e.to_string())
            })?,
        max_grad_norm: Some(1.0),
        progress,
        log_every: 10,
        ..Default::default()
    })
}

/// A LoRA SFT run's outcome.
pub struct SftRun {
    /// The model with its trained adapter.
    pub model: DynLm,
    /// Trainer summary.
    pub report: TrainReport,
    /// One entry per step.
    pub log: Vec<SftStep>,
}

/// LoRA fine-tuning of `model` on `data` (see [`seal_bilevel::finetune()`]):
/// a fresh adapter seeded by `seed`, then `config`'s SFT run with the
/// objective `λ·safe + (1−λ)·mean(w·ℓ)`, checkpointed (and resumed) as
/// `checkpoints` says.
#[allow(clippy::too_many_arguments)]
pub fn finetune_on(
    mut model: DynLm,
    mut data: SftData,
    lambda: f64,
    pad: u32,
    config: &SftConfig,
    seed: u64,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<SftRun> {
    if config.token_weighted {
        data.weights = Some(with_token_weights(data.weights.take(), &data.finetune));
    }
    model.add_lora(&lora(&config.lora), seed as i64)?;
    let out = seal_bilevel::finetune(
        model,
        data,
        pad,
        lambda,
        sft_train_config(config, seed, progress, checkpoints)?,
    )?;
    Ok(SftRun {
        model: out.model,
        report: out.report,
        log: out.log,
    })
}

/// Per-sample weights that turn a mean of per-sample mean NLLs into a mean
/// over response tokens: each sample's response length over the mean length
/// (so the weights average 1).
pub fn token_weights(samples: &[TokenizedSample]) -> Vec<f64> {
    let n: Vec<f64> = samples
        .iter()
        .map(|s| s.input_ids.len().saturating_sub(s.response_start) as f64)
        .collect();
    let mean = n.iter().sum::<f64>() / n.len().max(1) as f64;
    if mean > 0.0 {
        n.iter().map(|x| x / mean).collect()
    } else {
        vec![1.0; n.len()]
    }
}

/// `weights` (all 1 when `None`) times [`token_weights`] of `samples`.
pub fn with_token_weights(weights: Option<Vec<f64>>, samples: &[TokenizedSample]) -> Vec<f64> {
    let tokens = token_weights(samples);
    match weights {
        Some(w) => w.iter().zip(&tokens).map(|(a, b)| a * b).collect(),
        None => tokens,
    }
}

/// The alignment stage's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aligned {
    /// The aligned model directory (weights merged, tokenizer copied).
    pub dir: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Training time (0 when cached).
    pub seconds: f64,
    /// Per-step log (empty when cached).
    pub log: Vec<SftStep>,
}

/// The alignment stage: LoRA SFT of the model in `base` on `samples`
/// (refusals to harmful requests plus a benign share, `align.jsonl`),
/// merged into the base weights and written as a model directory under
/// `cache`, keyed by the base model, the data and the settings (a second
/// run with the same inputs reuses it).
pub fn align(
    base: &Path,
    samples: &[Sample],
    config: &AlignConfig,
    max_len: usize,
    device: Device,
    cache: &Path,
    progress: bool,
) -> Result<Aligned> {
    let base_config = base.join("config.json");
    let cfg_text = std::fs::read(&base_config).map_err(|e| PipelineError::io(&base_config, e))?;
    let weights_len = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(base.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let settings = serde_json::to_vec(&(config, max_len)).unwrap_or_default();
    let sample_bytes = serde_json::to_vec(samples).unwrap_or_default();
    let base_name = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let key = short_hash(&[
        base_name.display().to_string().as_bytes(),
        &cfg_text,
        &weights_len.to_le_bytes(),
        &settings,
        &sample_bytes,
    ]);
    let target = cache.join(format!("aligned-{key}"));
    if target.join(COMPLETE).is_file() {
        tracing::info!("aligned model from the cache: {}", target.display());
        return Ok(Aligned {
            dir: target,
            cached: true,
            seconds: 0.0,
            log: Vec::new(),
        });
    }
    align_to(
        base, samples, config, max_len, device, &target, progress, None,
    )
}

/// The alignment stage without the cache: trains, merges and writes the
/// aligned model directory to `target` (staged next to it and moved into
/// place at the end, so a killed run leaves no half-written model; only the
/// files written here replace files of an existing `target`). The LoRA SFT
/// is checkpointed (and resumed) as `checkpoints` says.
#[allow(clippy::too_many_arguments)]
pub fn align_to(
    base: &Path,
    samples: &[Sample],
    config: &AlignConfig,
    max_len: usize,
    device: Device,
    target: &Path,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<Aligned> {
    if samples.is_empty() {
        return Err(PipelineError::stage("align", "no alignment samples"));
    }
    // Before hours of training: a file or an unwritable place is refused.
    seal_data::fsutil::check_output_dir(target, true)?;
    let start = Instant::now();
    let Pretrained {
        model, tokenizer, ..
    } = load(base, device)?;
    let distilled = match &config.self_distill {
        Some(d) => Some(self_distill(&model, &tokenizer, samples, d, max_len)?),
        None => None,
    };
    let samples = distilled.as_deref().unwrap_or(samples);
    let data = tokenize(&tokenizer, "align", samples, max_len)?;
    if data.is_empty() {
        return Err(PipelineError::stage(
            "align",
            format!("every align sample is longer than max_len {max_len}"),
        ));
    }
    tracing::info!(samples = data.len(), "alignment: LoRA SFT");
    let pad = pad_id(&tokenizer);
    let sft = SftData {
        finetune: data,
        safe: None,
        weights: None,
    };
    let mut run = finetune_on(
        model,
        sft,
        0.0,
        pad,
        &config.sft,
        config.seed,
        progress,
        checkpoints,
    )?;
    run.model.merge_lora()?;
    let mut model = run.model;
    let mut log = run.log;
    if config.refusal_epochs > 0 {
        let refusals: Vec<Sample> = samples
            .iter()
            .filter(|s| s.label == Some(Label::Safe))
            .cloned()
            .collect();
        let data = tokenize(&tokenizer, "align refusals", &refusals, max_len)?;
        if data.is_empty() {
            return Err(PipelineError::stage(
                "align",
                "refusal_epochs is set but the align set has no refusal (label `safe`) that fits max_len",
            ));
        }
        tracing::info!(
            samples = data.len(),
            epochs = config.refusal_epochs,
            "alignment: LoRA SFT on the refusals alone"
        );
        let sft = SftConfig {
            epochs: config.refusal_epochs,
            ..config.sft.clone()
        };
        let mut again = finetune_on(
            model,
            SftData {
                finetune: data,
                safe: None,
                weights: None,
            },
            0.0,
            pad,
            &sft,
            config.seed,
            progress,
            None,
        )?;
        again.model.merge_lora()?;
        model = again.model;
        log.extend(again.log);
    }
    let staging = StagingDir::new(target)?;
    let staged = staging.path();
    model.save_pretrained(staged)?;
    if let Some(distilled) = &distilled {
        // The data the model was aligned on, for audit.
        seal_data::write_jsonl_samples(staged.join("align_data.jsonl"), distilled)?;
    }
    for f in TOKENIZER_FILES {
        let src = base.join(f);
        if src.is_file() {
            let dst = staged.join(f);
            std::fs::copy(&src, &dst).map_err(|e| PipelineError::io(&dst, e))?;
        }
    }
    seal_model::weights::write_jsonl_atomic(&staged.join("align_log.jsonl"), &log)?;
    finish_cache_entry(staging)?;
    Ok(Aligned {
        dir: target.to_path_buf(),
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
        log,
    })
}

/// The alignment set with its benign samples answered by `model` itself
/// (greedy), as `[align.self_distill]` asks. Prompts of `max_len` tokens or
/// more are skipped: training leaves those samples out anyway.
fn self_distill(
    model: &DynLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    config: &SelfDistill,
    max_len: usize,
) -> Result<Vec<Sample>> {
    let start = Instant::now();
    let fits = |s: &Sample| {
        s.label == Some(Label::Benign)
            && seal_data::tokenize::tokenize_prompt(tokenizer, None, s, false)
                .is_ok_and(|ids| ids.len() < max_len)
    };
    let options = GenerationOptions::greedy(tokenizer, config.max_new_tokens);
    let (out, stats) =
        seal_eval::regenerate_responses(model, tokenizer, samples, fits, &options, config.batch)?;
    tracing::info!(
        replaced = stats.replaced,
        kept_cut = stats.truncated,
        kept_empty = stats.empty,
        seconds = start.elapsed().as_secs_f64(),
        "alignment: benign responses self-distilled"
    );
    Ok(out)
}

/// A trained ranker.
pub struct Ranked {
    /// The ranker (ids = the tokenised pool's ids).
    pub ranker: Ranker,
    /// Trainer summary.
    pub report: TrainReport,
}

/// The data of a ranking run.
pub struct RankData {
    /// The tokenised fine-tuning pool (ranker slot order).
    pub finetune: Vec<TokenizedSample>,
    /// The tokenised safe set.
    pub safe: Vec<TokenizedSample>,
    /// Padding id.
    pub pad: u32,
}

/// Trains SEAL's ranker with `solver` on the pool of `data` against its
/// safe set, starting from `model` (a fresh LoRA seeded by `seed`).
pub fn rank(
    mut model: DynLm,
    data: RankData,
    solver: Solver,
    config: &RankConfig,
    seed: u64,
    progress: bool,
) -> Result<Ranked> {
    let RankData {
        finetune,
        safe,
        pad,
    } = data;
    let stage = format!("rank {}", solver.name());
    let activation: seal_bilevel::Activation = config
        .activation
        .parse()
        .map_err(|e: seal_bilevel::BilevelError| PipelineError::stage(&stage, e.to_string()))?;
    let optimizer: seal_bilevel::RankerOptimizerKind = config
        .ranker_optimizer
        .parse()
        .map_err(|e: seal_bilevel::BilevelError| PipelineError::stage(&stage, e.to_string()))?;
    let ids: Vec<String> = finetune.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&finetune);
    model.add_lora(&lora(&config.lora), seed as i64)?;
    let device = model.device();
    let problem = LmProblem::new(model, finetune, safe, pad)?;
    let mut ranker = Ranker::new(ids, fingerprint, activation, Kind::Float, Device::Cpu)?;
    ranker.to(Kind::Float, device);
    let solver: Box<dyn seal_bilevel::Solver<LmProblem<DynLm>>> = match solver {
        Solver::Seal => Box::new(SealPenalty),
        Solver::SealFull => Box::new(SealPenaltyFull::new(seal_bilevel::FullPenaltyConfig {
            optimizer: model_optimizer(config.lr),
            lr_scale: config.full.lr_scale,
            inner_steps: config.full.inner_steps,
            warm_start_steps: config.full.warm_start_steps,
            warm_start_batch: config.batch,
            read_after_update: config.full.read_after_update,
        })),
    };
    let train = TrainConfig {
        epochs: config.epochs,
        max_steps: config.max_steps,
        micro_batch: config.batch,
        grad_accum: 1,
        seed,
        bucket_batches: (config.bucket > 0).then_some(config.bucket),
        model_optimizer: model_optimizer(config.lr),
        ranker: RankerConfig {
            activation,
            optimizer,
            lr: config.ranker_lr,
            beta1: config.ranker_betas[0],
            beta2: config.ranker_betas[1],
            max_grad_norm: (config.ranker_clip > 0.0).then_some(config.ranker_clip),
            ..Default::default()
        },
        lambda: LambdaSchedule {
            start: config.lambda,
            decay_per_epoch: config.lambda_decay,
        },
        max_grad_norm: Some(1.0),
        progress,
        log_every: 10,
        epoch_length: config.epoch_length,
        ..Default::default()
    };
    let mut trainer = Trainer::new(problem, solver, ranker, train)?;
    let report = trainer.run()?;
    let (_, ranker) = trainer.into_parts();
    Ok(Ranked { ranker, report })
}

/// What a method needs besides the pool.
pub struct MethodInputs<'a> {
    /// The pool's samples, in ranker slot order.
    pub pool: &'a [Sample],
    /// The tokenised pool (same order).
    pub tokens: &'a [TokenizedSample],
    /// The safe set (SafeInstr demonstrations, DSIR target, mixed objective).
    pub safe: &'a [Sample],
    /// Benign task data disjoint from the pool (the `dsir-task` target).
    pub task_target: &'a [Sample],
    /// SEAL ranker logits for the method's solver.
    pub ranker_logits: Option<&'a [f64]>,
    /// The aligned model, for the loss-based baseline and `rep-sim`.
    pub model: Option<&'a DynLm>,
    /// The anchors of `grad-sim` and `rep-sim`.
    pub anchors: Option<AnchorInputs<'a>>,
    /// Padding id.
    pub pad: u32,
    /// Kept fraction.
    pub p: f64,
    /// λ of the mixed objective.
    pub mixed_lambda: f64,
    /// Seed of random choices.
    pub seed: u64,
}

/// What the anchor-similarity methods (`grad-sim`, `rep-sim`) compare the
/// pool with, tokenised like the pool.
#[derive(Clone, Copy)]
pub struct AnchorInputs<'a> {
    /// Harmful requests with compliant answers, disjoint from the pool and
    /// the evaluation sets (the benchmark's `harmful_anchors.jsonl`).
    pub harmful: &'a [TokenizedSample],
    /// Harmful requests with refusals (the safe set).
    pub safe: &'a [TokenizedSample],
    /// Feature settings.
    pub features: &'a SimilarityShape,
    /// The model directory `grad-sim` loads its seeded LoRA copy from.
    pub model_dir: &'a Path,
    /// Device of that copy.
    pub device: Device,
}

/// He et al.'s bi-directional anchor scores of the pool (higher: more like
/// the harmful anchors), on gradient (`grad-sim`: a fresh LoRA on q and v
/// seeded by `seed`, as LESS) or representation (`rep-sim`: `model`'s hidden
/// states) features.
fn anchor_harm(method: Method, input: &MethodInputs, anchors: &AnchorInputs) -> Result<Vec<f64>> {
    let stage = format!("select {method}");
    let grad_model;
    let (model, kind) = if method == Method::GradSim {
        let mut m = load(anchors.model_dir, anchors.device)?.model;
        m.add_lora(&LoraConfig::default(), input.seed as i64)?;
        grad_model = m;
        (&grad_model, FeatureKind::Gradient)
    } else {
        let m = input
            .model
            .ok_or_else(|| PipelineError::stage(&stage, "rep-sim needs the model"))?;
        (m, FeatureKind::Representation)
    };
    let config = FeatureConfig {
        kind,
        response_tokens: anchors.features.response_tokens,
        sketch_dims: anchors.features.sketch_dims,
        seed: input.seed,
        layer: anchors.features.layer,
    };
    let featurise = |what: &str, xs: &[TokenizedSample]| -> Result<Vec<Vec<f32>>> {
        features(model, xs, &config, input.pad)
            .map_err(|e| PipelineError::stage(&stage, format!("features of {what}: {e}")))
    };
    let harmful = featurise("the harmful anchors", anchors.harmful)?;
    let safe = featurise("the safe anchors", anchors.safe)?;
    let pool = featurise("the pool", input.tokens)?;
    Ok(anchor_scores(&pool, &harmful, &safe)?)
}

/// Applies `method` to the pool (see [`Method`]).
pub fn select(method: Method, input: &MethodInputs) -> Result<Selection> {
    let ids: Vec<String> = input.tokens.iter().map(|t| t.id.clone()).collect();
    let mut sel_input = SelectionInput::new(&ids)?.with_samples(input.pool)?;
    let budget = Budget::Fraction(input.p);
    let need_scores = || {
        input.ranker_logits.ok_or_else(|| {
            PipelineError::stage(
                format!("select {method}"),
                "no ranker scores (the ranking stage did not run)",
            )
        })
    };
    let scores;
    let rule: Box<dyn SelectionRule> = match method {
        Method::Seal | Method::SealFull => {
            sel_input = sel_input.with_scores(need_scores()?)?;
            Box::new(TopP { p: input.p })
        }
        Method::SealSafeinstr => {
            // Top-p of the ranker, then the demonstrations added below.
            sel_input = sel_input.with_scores(need_scores()?)?;
            Box::new(TopP { p: input.p })
        }
        Method::Random => Box::new(Random {
            budget,
            seed: input.seed,
        }),
        Method::Full => Box::new(Full),
        Method::Dsir => {
            let mut d = Dsir::new(input.safe.iter().map(sample_text).collect(), budget);
            d.seed = input.seed;
            Box::new(d)
        }
        Method::DsirTask => {
            if input.task_target.is_empty() {
                return Err(PipelineError::stage(
                    "select dsir-task",
                    "no benign task data to target (the align set has no benign sample)",
                ));
            }
            let mut d = Dsir::new(input.task_target.iter().map(sample_text).collect(), budget);
            d.seed = input.seed;
            Box::new(d)
        }
        Method::Safeinstr => Box::new(SafeInstr {
            demos: input.safe.to_vec(),
            count: None,
            seed: input.seed,
        }),
        Method::Loss => {
            let model = input.model.ok_or_else(|| {
                PipelineError::stage("select loss", "the loss-based baseline needs the model")
            })?;
            scores = response_nll(model, input.tokens, 8, input.pad)?;
            Box::new(LossBased {
                nll: scores,
                budget,
            })
        }
        Method::Mixed => Box::new(MixedObjective {
            lambda: input.mixed_lambda,
        }),
        Method::Oracle => Box::new(Oracle),
        Method::GradSim | Method::RepSim => {
            let anchors = input.anchors.as_ref().ok_or_else(|| {
                PipelineError::stage(
                    format!("select {method}"),
                    "no anchors (the benchmark has no harmful_anchors.jsonl: rebuild it with \
                     `seal data benchmark`, recipe 3)",
                )
            })?;
            Box::new(AnchorSimilarity {
                harm: anchor_harm(method, input, anchors)?,
                budget,
                name: method.name().to_string(),
            })
        }
    };
    let mut selection = rule.select(&sel_input)?;
    if method == Method::SealSafeinstr {
        selection.added = input.safe.to_vec();
    }
    Ok(selection)
}

/// The fine-tuning data of a selection: the kept tokenised samples (with
/// their weights for a weighted objective) plus the added ones, and λ.
pub fn selection_data(
    selection: &Selection,
    tokens: &[TokenizedSample],
    safe_tokens: &[TokenizedSample],
    tokenizer: &TextTokenizer,
    max_len: usize,
) -> Result<(SftData, f64)> {
    let mut kept: Vec<TokenizedSample> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for (t, e) in tokens.iter().zip(&selection.entries) {
        if e.kept {
            kept.push(t.clone());
            weights.push(e.weight.unwrap_or(1.0));
        }
    }
    if !selection.added.is_empty() {
        for t in tokenize(tokenizer, "added demonstrations", &selection.added, max_len)? {
            kept.push(t);
            weights.push(1.0);
        }
    }
    if kept.is_empty() {
        return Err(PipelineError::stage(
            format!("select {}", selection.rule),
            "nothing to fine-tune on",
        ));
    }
    Ok(match selection.objective {
        Objective::Standard => (
            SftData {
                finetune: kept,
                safe: None,
                weights: None,
            },
            0.0,
        ),
        Objective::Weighted => (
            SftData {
                finetune: kept,
                safe: None,
                weights: Some(weights),
            },
            0.0,
        ),
        Objective::Mixed { lambda } => (
            SftData {
                finetune: kept,
                safe: Some(safe_tokens.to_vec()),
                weights: None,
            },
            lambda,
        ),
        other => {
            return Err(PipelineError::stage(
                format!("select {}", selection.rule),
                format!("the pipeline cannot fine-tune with objective {other:?}"),
            ))
        }
    })
}

/// Ranking quality of per-sample scores against labels: AUROC (benign above
/// harmful) when both kinds are present and the scores are not all equal.
pub fn score_auroc(scores: &[f64], labels: &[Option<Label>]) -> Result<Option<f64>> {
    let (mut benign, mut harmful) = (Vec::new(), Vec::new());
    for (s, l) in scores.iter().zip(labels) {
        match l {
            Some(Label::Harmful) => harmful.push(*s),
            Some(_) => benign.push(*s),
            None => {}
        }
    }
    let constant = scores.windows(2).all(|w| w[0] == w[1]);
    if constant {
        return Ok(None);
    }
    Ok(seal_eval::ranker::auroc(&benign, &harmful)?)
}

/// The trained judge of `config.judge`, if any, on `device`.
pub fn load_judge(
    config: &EvalConfig,
    device: Device,
) -> Result<Option<seal_eval::ClassifierJudge>> {
    Ok(match &config.judge {
        Some(dir) => Some(seal_eval::ClassifierJudge::load(
            dir,
            config.judge_base.as_deref(),
            device,
        )?),
        None => None,
    })
}

/// The judge comparisons across evaluations use: the trained one (the
/// first judge, by name, not named `keyword…`) when any evaluation has one,
/// else the first judge, else `keyword-gcg`.
pub fn preferred_judge<'a>(evals: impl IntoIterator<Item = &'a ModelEval>) -> String {
    let mut names: Vec<&String> = evals
        .into_iter()
        .flat_map(|e| e.asr_by_judge.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .find(|n| !n.starts_with("keyword"))
        .or(names.first())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "keyword-gcg".into())
}

impl ModelEval {
    /// Harmful rate under `judge` (the keyword rule's `asr` when the judge
    /// did not rate this model).
    pub fn asr_under(&self, judge: &str) -> Option<f64> {
        self.asr_by_judge.get(judge).copied().or(self.asr)
    }

    /// Over-refusal under `judge` (the keyword rule's when the judge did
    /// not rate this model).
    pub fn over_refusal_under(&self, judge: &str) -> Option<f64> {
        self.over_refusal_by_judge
            .get(judge)
            .copied()
            .or(self.over_refusal)
    }
}

/// A model's evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    /// Attack success rate on the harmful prompts (share not refused).
    pub asr: Option<f64>,
    /// Refusal rate on benign prompts (over-refusal).
    pub over_refusal: Option<f64>,
    /// Mean response NLL of the utility set (samples with a reference
    /// answer turn).
    pub utility_nll: Option<f64>,
    /// GSM8K exact match of the final number.
    pub gsm8k_accuracy: Option<f64>,
    /// Wall time.
    pub seconds: f64,
    /// The judge that decides `asr` (and the goals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// Attack success rate under every judge, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub asr_by_judge: BTreeMap<String, f64>,
    /// Share of responses to harmful prompts that are degenerate (empty or
    /// a word loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degenerate_rate: Option<f64>,
    /// Harmful or degenerate, under every judge.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub asr_or_degenerate_by_judge: BTreeMap<String, f64>,
    /// Over-refusal under every judge that gives refusal verdicts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub over_refusal_by_judge: BTreeMap<String, f64>,
}

/// The evaluation sets.
pub struct EvalSets<'a> {
    /// Harmful prompts (attack success rate).
    pub safety: &'a [Sample],
    /// Benign prompts (over-refusal).
    pub benign: &'a [Sample],
    /// GSM8K-style prompts with a reference (accuracy; NLL when they carry
    /// an answer turn).
    pub utility: &'a [Sample],
    /// The harmful prompts as the judges see them, when the model is asked
    /// something else (e.g. behind an attack's trigger): one per `safety`
    /// prompt, in the same order. `None`: the judges see what was asked.
    pub safety_as_judged: Option<&'a [Sample]>,
}

/// Evaluates `model`: safety, over-refusal, utility NLL and (optionally)
/// GSM8K accuracy; responses go to `out` as JSONL. `judge` (e.g. the
/// configured [`seal_eval::ClassifierJudge`], loaded once per run with
/// [`load_judge`]) is reported beside the keyword rule.
pub fn evaluate(
    model: &DynLm,
    tokenizer: &TextTokenizer,
    sets: &EvalSets,
    config: &EvalConfig,
    max_len: usize,
    out: &Path,
    judge: Option<&dyn seal_eval::Judge>,
) -> Result<ModelEval> {
    let start = Instant::now();
    let opts = GenerationOptions::greedy(tokenizer, config.max_new_tokens);
    let matcher = RefusalMatcher::gcg();
    let keyword = KeywordJudge::new(matcher.clone());
    // The keyword rule decides (and the goals use it) until the trained
    // judge meets its agreement targets; the classifier is reported beside.
    let mut judges: Vec<&dyn seal_eval::Judge> = vec![&keyword];
    judges.extend(judge);
    let mut e = ModelEval {
        judge: Some(seal_eval::Judge::name(&keyword).to_string()),
        ..ModelEval::default()
    };
    if !sets.safety.is_empty() {
        let mut g =
            seal_eval::generate_responses(model, tokenizer, sets.safety, &opts, config.batch)?;
        if let Some(judged) = sets.safety_as_judged {
            if judged.len() != g.len() {
                return Err(PipelineError::stage(
                    "evaluation",
                    format!(
                        "{} prompts as judged for {} harmful prompts",
                        judged.len(),
                        g.len()
                    ),
                ));
            }
            for (x, j) in g.iter_mut().zip(judged) {
                x.prompt = j.last_user().unwrap_or_default().to_string();
            }
        }
        let s = seal_eval::safety::score_safety_with(&g, &matcher, &judges)?;
        seal_model::weights::write_jsonl_atomic(&out.join("safety_responses.jsonl"), &s.records)?;
        e.asr = Some(s.attack_success_rate);
        e.degenerate_rate = Some(s.degenerate_rate);
        for r in &s.by_judge {
            e.asr_by_judge.insert(r.judge.clone(), r.rate);
            e.asr_or_degenerate_by_judge
                .insert(r.judge.clone(), r.rate_or_degenerate);
        }
    }
    if !sets.benign.is_empty() {
        let g = seal_eval::generate_responses(model, tokenizer, sets.benign, &opts, config.batch)?;
        let s = seal_eval::safety::score_over_refusal_with(&g, &matcher, &judges)?;
        seal_model::weights::write_jsonl_atomic(&out.join("benign_responses.jsonl"), &s.records)?;
        e.over_refusal = Some(s.over_refusal_rate);
        for r in &s.by_judge {
            e.over_refusal_by_judge.insert(r.judge.clone(), r.rate);
        }
    }
    let with_answers: Vec<Sample> = sets
        .utility
        .iter()
        .filter(|s| s.response().is_some())
        .cloned()
        .collect();
    if !with_answers.is_empty() {
        let cfg = TokenizeConfig {
            max_len,
            ..Default::default()
        };
        let n = seal_eval::task_nll(model, tokenizer, &with_answers, &cfg, config.batch)?;
        e.utility_nll = Some(n.mean_nll);
    }
    if config.gsm8k_accuracy && !sets.utility.is_empty() {
        let prompts: Vec<Sample> = sets
            .utility
            .iter()
            .map(|s| s.clone().into_prompt_only())
            .collect();
        let gsm_opts = GenerationOptions::greedy(
            tokenizer,
            config.gsm8k_max_new_tokens.unwrap_or(config.max_new_tokens),
        );
        let g = seal_eval::evaluate_gsm8k(model, tokenizer, &prompts, &gsm_opts, config.batch)?;
        seal_model::weights::write_jsonl_atomic(&out.join("gsm8k_responses.jsonl"), &g.records)?;
        e.gsm8k_accuracy = Some(g.accuracy);
    }
    e.seconds = start.elapsed().as_secs_f64();
    Ok(e)
}
