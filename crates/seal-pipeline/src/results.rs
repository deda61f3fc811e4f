//! What a pipeline run records (`results.json`): rankers, per-method runs
//! and the run as a whole. Its own module so that the stages that produce
//! it ([`crate::run()`]) and the report that reads it ([`crate::report`])
//! depend on it and not on each other.

use crate::config::PipelineConfig;
use crate::stages::{Aligned, ModelEval};
use seal_bilevel::SftStep;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One trained ranker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankerRun {
    /// Seed.
    pub seed: u64,
    /// The solver's registered name ([`crate::registry::PipelineSolver`]).
    pub solver: String,
    /// AUROC of the logits (benign above harmful).
    pub auroc: Option<f64>,
    /// Optimiser steps.
    pub steps: usize,
    /// Wall time of the ranking stage.
    pub seconds: f64,
    /// Seconds per step.
    pub seconds_per_step: f64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
    /// Logits, in pool order (for plots; not in `results.json`, re-read
    /// from the saved ranker on resume).
    #[serde(skip)]
    pub logits: Vec<f64>,
}

/// One method's run for one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodRun {
    /// Seed.
    pub seed: u64,
    /// The method's registered name (a built-in [`crate::Method`]'s name, or a
    /// user's [`crate::registry::PipelineMethod::name`]).
    pub method: String,
    /// Pool samples kept (before added demonstrations).
    pub kept: usize,
    /// Demonstrations added.
    pub added: usize,
    /// Harmful samples kept.
    pub harmful_kept: usize,
    /// Harmful samples in the pool.
    pub harmful_total: usize,
    /// AUROC of the method's own scores (none for rules that do not rank).
    pub auroc: Option<f64>,
    /// Wall time of selection (ranking excluded; it is in [`RankerRun`]).
    pub select_seconds: f64,
    /// Wall time of fine-tuning.
    pub finetune_seconds: f64,
    /// Fine-tuning steps.
    pub steps: usize,
    /// Evaluation of the fine-tuned model.
    pub eval: ModelEval,
    /// Per-step fine-tuning log.
    pub log: Vec<SftStep>,
    /// Win rates against the reference method (`[eval.win_rate]`), by
    /// evaluation set (`safety`, `benign`, `gsm8k`); empty for the
    /// reference itself and when win rates are off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub win_rates: BTreeMap<String, SetWinRate>,
    /// The method of the same seed whose fine-tuning and evaluation this run
    /// reuses: its selection gave the same data and objective, so running it
    /// again from the same model with the same seed would repeat that run
    /// (bitwise on the CPU). Its outputs are copied, and its fine-tuning and
    /// evaluation times are 0. `None` when the method ran its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

/// One set's win rate of a method against the reference, for one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetWinRate {
    /// The reference method.
    pub reference: String,
    /// The win rate, its interval and every prompt's outcome.
    #[serde(flatten)]
    pub win_rate: seal_eval::winrate::WinRate,
    /// The judge's answers that were not in the asked format (counted as
    /// ties), when the judge counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unparsable: Option<usize>,
}

/// Everything a pipeline run measured (also written as `results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineResult {
    /// The configuration.
    pub config: PipelineConfig,
    /// Sizes of the data parts (after tokenisation for the pool).
    pub data: BTreeMap<String, usize>,
    /// Fingerprint of the tokenised pool (ids and tokens): a resumed run
    /// must see the same pool. Empty in results written before it existed.
    #[serde(default)]
    pub pool_fingerprint: String,
    /// The model the pipeline started from.
    pub base_model: PathBuf,
    /// The alignment stage, when enabled.
    pub aligned: Option<Aligned>,
    /// The original model's evaluation.
    pub base_eval: ModelEval,
    /// The aligned model's evaluation, when aligned.
    pub aligned_eval: Option<ModelEval>,
    /// Every ranker trained.
    pub rankers: Vec<RankerRun>,
    /// Every (seed, method) run.
    pub runs: Vec<MethodRun>,
    /// Total wall time, seconds: of every invocation that built the result
    /// (a resumed run adds its own to the recorded one).
    pub seconds: f64,
}
