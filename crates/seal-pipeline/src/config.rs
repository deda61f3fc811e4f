//! The pipeline's configuration: one TOML file (`seal pipeline --config`)
//! or a [`PipelineConfig`] built in code. Every field has a default, so a
//! config only names what it changes.

use crate::error::{PipelineError, Result};
use seal_bilevel::{EpochLength, RankPreset};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A selection method the pipeline fine-tunes with and evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Method {
    /// SEAL: top-p of the ranker trained by the memory-efficient penalty.
    Seal,
    /// SEAL: top-p of the ranker trained by the full penalty (auxiliary θ̂).
    SealFull,
    /// Uniformly random subset of the same size.
    Random,
    /// No selection: fine-tune on the whole pool.
    Full,
    /// DSIR importance resampling towards the safe set.
    Dsir,
    /// DSIR towards benign task data (the align set's held-out benign
    /// answers) instead of refusals.
    DsirTask,
    /// The whole pool plus the safety demonstrations (the safe set).
    Safeinstr,
    /// SEAL top-p plus the safety demonstrations.
    SealSafeinstr,
    /// Keep the samples with the lowest response NLL under the aligned model.
    Loss,
    /// No selection: fine-tune on λ·safe loss + (1−λ)·task loss.
    Mixed,
    /// Drop the ground-truth harmful samples (benchmarks only).
    Oracle,
    /// He, Xia & Henderson's gradient similarity: keep the samples whose
    /// sketched LoRA gradients of the first response tokens are least like
    /// the benchmark's harmful anchors and most like the safe set's refusals.
    GradSim,
    /// Their representation-similarity variant (hidden states of the first
    /// response tokens).
    RepSim,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 13] = [
        Method::Seal,
        Method::SealFull,
        Method::Random,
        Method::Full,
        Method::Dsir,
        Method::DsirTask,
        Method::Safeinstr,
        Method::SealSafeinstr,
        Method::Loss,
        Method::Mixed,
        Method::Oracle,
        Method::GradSim,
        Method::RepSim,
    ];

    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Seal => "seal",
            Method::SealFull => "seal-full",
            Method::Random => "random",
            Method::Full => "full",
            Method::Dsir => "dsir",
            Method::DsirTask => "dsir-task",
            Method::Safeinstr => "safeinstr",
            Method::SealSafeinstr => "seal-safeinstr",
            Method::Loss => "loss",
            Method::Mixed => "mixed",
            Method::Oracle => "oracle",
            Method::GradSim => "grad-sim",
            Method::RepSim => "rep-sim",
        }
    }

    /// The SEAL solver whose ranker the method selects with, if any.
    pub fn solver(self) -> Option<Solver> {
        match self {
            Method::Seal | Method::SealSafeinstr => Some(Solver::Seal),
            Method::SealFull => Some(Solver::SealFull),
            _ => None,
        }
    }
}

impl From<Method> for String {
    fn from(method: Method) -> String {
        method.name().to_string()
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                PipelineError::config(
                    "methods",
                    format!(
                        "unknown method `{s}` (expected one of {})",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// A SEAL ranker solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Solver {
    /// Memory-efficient penalty (the paper's Algorithm 2, the official trainer).
    Seal,
    /// Full penalty with an auxiliary lower-level LoRA (Algorithm 1).
    SealFull,
}

impl Solver {
    /// The name used by `seal rank --solver`.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Seal => "seal",
            Solver::SealFull => "seal-full",
        }
    }
}

/// Where the data comes from.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DataConfig {
    /// A directory written by `seal data benchmark`; `None`: the embedded
    /// default dataset.
    pub dir: Option<PathBuf>,
    /// Use at most this many prompts of each evaluation set.
    pub eval_limit: Option<usize>,
}

/// Which model the pipeline starts from.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelConfig {
    /// An HF model directory.
    pub dir: Option<PathBuf>,
    /// A llama-architecture GGUF file, imported once into the cache.
    pub gguf: Option<PathBuf>,
    /// Precision of the base weights in every stage (alignment, ranking,
    /// fine-tuning, evaluation): `f32` (default) or `bf16` (mixed precision:
    /// bf16 base weights, f32 LoRA, norms and losses; 1.4-1.75x faster
    /// LoRA fine-tuning on a CPU with AVX512-BF16, docs/performance.md). A
    /// bf16 run aligns its own model. The trained judge always runs in f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub dtype: seal_model::WeightDtype,
    /// On CUDA, f32 matmuls run on TF32 tensor cores
    /// ([`seal_model::runtime::allow_tf32`]); ignored on the CPU. Set it
    /// before the process's first CUDA matmul (the `seal` binary reads the
    /// config first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tf32: bool,
}

// Default (f32) runs record no `dtype`, so their recorded configs (and the
// resume check on them) are those of builds before the field existed.
fn is_f32(d: &seal_model::WeightDtype) -> bool {
    *d == seal_model::WeightDtype::F32
}

/// LoRA adapter shape.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] (or [`LoraShape::all_linear`]) and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LoraShape {
    /// Rank.
    pub r: usize,
    /// Alpha (scale = alpha / r).
    pub alpha: f64,
    /// Adapted modules (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`); SEAL's default is `q_proj` and `v_proj`.
    pub targets: Vec<String>,
}

impl Default for LoraShape {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

impl LoraShape {
    /// Every linear layer of a Llama block (more capacity per step; what the
    /// alignment stage uses).
    pub fn all_linear() -> Self {
        Self {
            targets: seal_model::lora::LORA_TARGETABLE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Self::default()
        }
    }
}

/// One LoRA SFT run (alignment or fine-tuning on a selection).
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SftConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch: usize,
    /// Stop after this many steps.
    pub max_steps: Option<usize>,
    /// Learning rate.
    pub lr: f64,
    /// The registered optimiser ([`crate::registry::PipelineOptimizer`];
    /// built-ins `adamw`, the default, `adam` and `sgd`). Left out of the
    /// written config when it is the default.
    #[serde(skip_serializing_if = "is_default_optimizer")]
    pub optimizer: String,
    /// `constant` or `cosine` (3% warm-up).
    pub schedule: String,
    /// The adapter.
    pub lora: LoraShape,
    /// Weight each sample's mean response NLL by its number of response
    /// tokens (over the mean count), so the loss is a mean over tokens as in
    /// transformers' `Trainer`. Off: every sample counts alike, as SEAL's
    /// per-sample losses do. Combines multiplicatively with soft weights.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub token_weighted: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch: 8,
            max_steps: None,
            lr: 2e-4,
            optimizer: DEFAULT_OPTIMIZER.into(),
            schedule: "constant".into(),
            lora: LoraShape::default(),
            token_weighted: false,
        }
    }
}

/// The alignment stage.
///
/// Fields missing from a config file take the *alignment* defaults, also
/// inside a partial `[align.sft]` or `[align.sft.lora]` table (a plain
/// `#[serde(default)]` would fill them from [`SftConfig::default`] and
/// silently switch the adapter to `q_proj`/`v_proj`).
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "AlignConfigFile")]
#[non_exhaustive]
pub struct AlignConfig {
    /// Run it (otherwise every method starts from the original model).
    pub enabled: bool,
    /// The SFT run on `align.jsonl`; the adapter is merged into the base.
    pub sft: SftConfig,
    /// Seed of the data order and the adapter initialisation.
    pub seed: u64,
    /// Answer the benign part of the align set with the base model's own
    /// greedy responses before training (self-distillation; off by default
    /// and then left out of the written config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_distill: Option<SelfDistill>,
    /// After the mixed SFT is merged, this many more epochs over the
    /// align set's refusals alone (label `safe`), with the same settings and
    /// merged too: a deeper refusal that benign fine-tuning erodes less,
    /// bought with over-refusal (docs/benchmark.md, "Dose and the gate").
    /// 0 (the default) skips it and is left out of the written config.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refusal_epochs: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The model optimiser every training stage uses unless told otherwise.
pub const DEFAULT_OPTIMIZER: &str = "adamw";

fn is_default_optimizer(name: &str) -> bool {
    name == DEFAULT_OPTIMIZER
}

/// `[align.self_distill]`: the benign align samples get the base model's own
/// answers as responses, so that they hold the model where it already
/// answers instead of teaching it another writer's style while the
/// refusals are learnt. Answers cut at `max_new_tokens` keep the reference
/// response.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SelfDistill {
    /// Longest answer generated, in tokens.
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub batch: usize,
}

impl Default for SelfDistill {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            batch: 32,
        }
    }
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sft: SftConfig {
                epochs: 2,
                lr: 5e-4,
                lora: LoraShape::all_linear(),
                ..SftConfig::default()
            },
            seed: 0,
            self_distill: None,
            refusal_epochs: 0,
        }
    }
}

/// `[align]` as written in a file: every field optional, applied over
/// [`AlignConfig::default`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlignConfigFile {
    enabled: Option<bool>,
    sft: Option<SftPatch>,
    seed: Option<u64>,
    self_distill: Option<SelfDistill>,
    refusal_epochs: Option<usize>,
}

/// A partial [`SftConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SftPatch {
    epochs: Option<usize>,
    batch: Option<usize>,
    max_steps: Option<usize>,
    lr: Option<f64>,
    optimizer: Option<String>,
    schedule: Option<String>,
    lora: Option<LoraPatch>,
    token_weighted: Option<bool>,
}

/// A partial [`LoraShape`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraPatch {
    r: Option<usize>,
    alpha: Option<f64>,
    targets: Option<Vec<String>>,
}

impl From<AlignConfigFile> for AlignConfig {
    fn from(file: AlignConfigFile) -> Self {
        let mut c = AlignConfig::default();
        if let Some(v) = file.enabled {
            c.enabled = v;
        }
        if let Some(v) = file.seed {
            c.seed = v;
        }
        c.self_distill = file.self_distill;
        c.refusal_epochs = file.refusal_epochs.unwrap_or(0);
        if let Some(p) = file.sft {
            let sft = &mut c.sft;
            sft.epochs = p.epochs.unwrap_or(sft.epochs);
            sft.batch = p.batch.unwrap_or(sft.batch);
            sft.max_steps = p.max_steps.or(sft.max_steps);
            sft.lr = p.lr.unwrap_or(sft.lr);
            sft.token_weighted = p.token_weighted.unwrap_or(sft.token_weighted);
            if let Some(v) = p.schedule {
                sft.schedule = v;
            }
            if let Some(v) = p.optimizer {
                sft.optimizer = v;
            }
            if let Some(l) = p.lora {
                sft.lora.r = l.r.unwrap_or(sft.lora.r);
                sft.lora.alpha = l.alpha.unwrap_or(sft.lora.alpha);
                if let Some(t) = l.targets {
                    sft.lora.targets = t;
                }
            }
        }
        c
    }
}

/// Ranker training (`seal rank`). A `[rank]` table starts from its
/// `preset` (`small`, the default, or `official`: see
/// [`seal_bilevel::RankPreset`] and docs/bilevel.md, "Presets"); every other
/// key given overrides the preset's value.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] (or [`RankConfig::from_preset`]) and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RankConfigFile")]
#[non_exhaustive]
pub struct RankConfig {
    /// The preset the settings started from.
    pub preset: RankPreset,
    /// Passes over the fine-tuning pool.
    pub epochs: usize,
    /// Rows per micro-batch (each set).
    pub batch: usize,
    /// Stop after this many steps.
    pub max_steps: Option<usize>,
    /// Model (LoRA) learning rate.
    pub lr: f64,
    /// The model's registered optimiser (default `adamw`; left out of the
    /// written config then).
    #[serde(skip_serializing_if = "is_default_optimizer")]
    pub optimizer: String,
    /// Ranker learning rate.
    pub ranker_lr: f64,
    /// The ranker's registered optimiser: `adam` (official), `sgd` or a
    /// user's ([`crate::registry::register_optimizer`]).
    pub ranker_optimizer: String,
    /// The ranker's Adam betas.
    pub ranker_betas: [f64; 2],
    /// The ranker's gradient clipping (global norm; 0: none).
    pub ranker_clip: f64,
    /// `softmax` (official) or `sigmoid`.
    pub activation: String,
    /// Upper-level weight λ in the first epoch.
    pub lambda: f64,
    /// Decrease of λ per epoch.
    pub lambda_decay: f64,
    /// Length-bucketing window in batches (0: plain shuffling).
    pub bucket: usize,
    /// Where an epoch ends: `task` (one pass over the pool) or `shorter`
    /// (the shorter of the pool and the safe set, as the official zipped
    /// loaders).
    pub epoch_length: EpochLength,
    /// The adapter trained alongside the ranker.
    pub lora: LoraShape,
    /// The full penalty method's auxiliary copy θ̂ (`seal-full`).
    pub full: FullPenaltyShape,
}

impl RankConfig {
    /// The settings of `preset`, with the pipeline's batch of 8 rows and the
    /// adapter on `q_proj` and `v_proj`.
    pub fn from_preset(preset: RankPreset) -> Self {
        let s = preset.settings();
        Self {
            preset,
            epochs: s.epochs,
            batch: 8,
            max_steps: None,
            lr: s.model_lr,
            optimizer: DEFAULT_OPTIMIZER.into(),
            ranker_lr: s.ranker_lr,
            ranker_optimizer: s.ranker_optimizer.as_str().into(),
            ranker_betas: [s.ranker_betas.0, s.ranker_betas.1],
            ranker_clip: s.ranker_max_grad_norm.unwrap_or(0.0),
            activation: "softmax".into(),
            lambda: s.lambda,
            lambda_decay: s.lambda_decay,
            bucket: s.bucket,
            epoch_length: s.epoch_length,
            lora: LoraShape {
                r: s.lora_r,
                alpha: s.lora_alpha,
                ..LoraShape::default()
            },
            full: FullPenaltyShape::default(),
        }
    }
}

/// `[rank]` as written: every key optional, filled from the preset.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RankConfigFile {
    preset: Option<RankPreset>,
    epochs: Option<usize>,
    batch: Option<usize>,
    max_steps: Option<usize>,
    lr: Option<f64>,
    optimizer: Option<String>,
    ranker_lr: Option<f64>,
    ranker_optimizer: Option<String>,
    ranker_betas: Option<[f64; 2]>,
    ranker_clip: Option<f64>,
    activation: Option<String>,
    lambda: Option<f64>,
    lambda_decay: Option<f64>,
    bucket: Option<usize>,
    epoch_length: Option<EpochLength>,
    lora: Option<LoraShapeFile>,
    full: Option<FullPenaltyShape>,
}

/// `[rank.lora]` as written: the preset's rank and alpha unless given.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct LoraShapeFile {
    r: Option<usize>,
    alpha: Option<f64>,
    targets: Option<Vec<String>>,
}

impl From<RankConfigFile> for RankConfig {
    fn from(f: RankConfigFile) -> Self {
        let mut c = RankConfig::from_preset(f.preset.unwrap_or_default());
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = f.$field {
                    c.$field = v;
                }
            )*};
        }
        set!(
            epochs,
            batch,
            lr,
            optimizer,
            ranker_lr,
            ranker_optimizer,
            ranker_betas,
            ranker_clip,
            activation,
            lambda,
            lambda_decay,
            bucket,
            epoch_length,
            full
        );
        c.max_steps = f.max_steps;
        if let Some(l) = f.lora {
            if let Some(v) = l.r {
                c.lora.r = v;
            }
            if let Some(v) = l.alpha {
                c.lora.alpha = v;
            }
            if let Some(v) = l.targets {
                c.lora.targets = v;
            }
        }
        c
    }
}

/// Settings of `seal-full`'s auxiliary copy θ̂ (`[rank.full]`; see
/// [`seal_bilevel::FullPenaltyConfig`]). Its optimiser is the model's.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FullPenaltyShape {
    /// θ̂ steps on the weighted task loss per outer step.
    pub inner_steps: usize,
    /// Task steps θ̂ takes before ranking (micro-batches of `rank.batch`).
    pub warm_start_steps: usize,
    /// θ̂'s learning rate as a multiple of the model's (`rank.lr`, scheduled).
    pub lr_scale: f64,
    /// Read ℓ(θ̂) after θ̂'s update (the lower level's value).
    pub read_after_update: bool,
}

impl Default for FullPenaltyShape {
    fn default() -> Self {
        let d = seal_bilevel::FullPenaltyConfig::default();
        Self {
            inner_steps: d.inner_steps,
            warm_start_steps: d.warm_start_steps,
            lr_scale: d.lr_scale,
            read_after_update: d.read_after_update,
        }
    }
}

impl Default for RankConfig {
    fn default() -> Self {
        Self::from_preset(RankPreset::Small)
    }
}

/// Selection and the compared methods.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SelectConfig {
    /// Names of the methods to run, in report order: built-in [`Method`]s
    /// or methods registered with [`crate::registry::register_method`].
    pub methods: Vec<String>,
    /// Kept fraction of the budgeted methods (SEAL top-p, random, DSIR, loss).
    pub p: f64,
    /// λ of the mixed objective.
    pub mixed_lambda: f64,
    /// Features of the anchor-similarity methods (`grad-sim`, `rep-sim`).
    pub similarity: SimilarityShape,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            methods: [Method::Seal, Method::Random, Method::Full]
                .map(String::from)
                .to_vec(),
            p: 0.8,
            mixed_lambda: 0.5,
            similarity: SimilarityShape::default(),
        }
    }
}

/// `[select.similarity]`: the features `grad-sim` and `rep-sim` compare
/// (see [`seal_select::similarity::FeatureConfig`]).
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SimilarityShape {
    /// Response tokens looked at (the first ones).
    pub response_tokens: usize,
    /// Width of `grad-sim`'s gradient sketch.
    pub sketch_dims: usize,
    /// `rep-sim`'s hidden-state layer (1-based block; absent: the last).
    pub layer: Option<usize>,
}

impl Default for SimilarityShape {
    fn default() -> Self {
        let d = seal_select::similarity::FeatureConfig::default();
        Self {
            response_tokens: d.response_tokens,
            sketch_dims: d.sketch_dims,
            layer: d.layer,
        }
    }
}

/// Evaluation of every fine-tuned model.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EvalConfig {
    /// New tokens per generated response (greedy).
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub batch: usize,
    /// Generate GSM8K answers and score exact match (the slowest metric).
    pub gsm8k_accuracy: bool,
    /// New tokens per GSM8K answer (default: `max_new_tokens`). A worked
    /// solution needs about 150–250 tokens before its final number, while
    /// refusals show in the first few dozen, so the two budgets differ.
    pub gsm8k_max_new_tokens: Option<usize>,
    /// A trained judge directory (`seal judge train`): its attack success
    /// rate and refusal rate are reported beside the keyword rule's. The
    /// goals keep using the keyword rule until the judge meets its
    /// agreement targets (docs/evaluation.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<PathBuf>,
    /// The judge's base model (default: the path in its judge.json).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_base: Option<PathBuf>,
    /// Registered judges ([`crate::registry::PipelineJudge`]) reported
    /// beside the keyword rule, by name: built-ins `classifier` (the
    /// trained judge of `judge`) and `keyword-gcg`, or a user's
    /// ([`crate::registry::register_judge`]). Empty (the default):
    /// `classifier` when `judge` is set, else none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub judges: Vec<String>,
    /// An OpenAI-compatible judge (the built-in judge `endpoint`): a
    /// hosted model, vLLM, or another `seal serve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointSettings>,
    /// Pairwise win rates of every method against a reference method (the
    /// paper's headline metric; off unless set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<WinRateConfig>,
}

/// The `[eval.endpoint]` table: where the built-in `endpoint` judge asks.
/// The API key is read from the environment variable `api_key_env` when
/// the run starts; it is never part of a config, log or report.
///
/// Marked `#[non_exhaustive]`: build it with [`EndpointSettings::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointSettings {
    /// The API base, e.g. `http://127.0.0.1:8000/v1`.
    pub url: String,
    /// The model name sent with every request.
    pub model: String,
    /// The environment variable holding the API key (none: keyless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// How harm is asked about: `behavior`, `rubric` or `categories`
    /// ([`seal_eval::rubrics::HarmRubric`]).
    #[serde(default = "EndpointSettings::default_rubric")]
    pub rubric: String,
    /// Per-request timeout in seconds.
    #[serde(default = "EndpointSettings::default_timeout")]
    pub timeout_seconds: u64,
    /// Retries after a transport error, 429 or 5xx.
    #[serde(default = "EndpointSettings::default_retries")]
    pub retries: usize,
    /// Requests in flight at once.
    #[serde(default = "EndpointSettings::default_concurrency")]
    pub concurrency: usize,
    /// The answer cache (relative: to the config file's directory). None:
    /// `cache/judge-endpoint` inside the run's output directory, so a
    /// resumed run asks nothing twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
}

impl EndpointSettings {
    fn default_rubric() -> String {
        "behavior".into()
    }
    fn default_timeout() -> u64 {
        60
    }
    fn default_retries() -> usize {
        4
    }
    fn default_concurrency() -> usize {
        8
    }

    /// `model` at `url`, keyless, with the defaults of
    /// [`seal_eval::endpoint::EndpointConfig::new`].
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            rubric: Self::default_rubric(),
            timeout_seconds: Self::default_timeout(),
            retries: Self::default_retries(),
            concurrency: Self::default_concurrency(),
            cache: None,
        }
    }

    /// The judge's settings, with the answer cache at `cache` unless the
    /// table names one. Errors name the field.
    pub fn to_endpoint_config(
        &self,
        default_cache: Option<&Path>,
    ) -> Result<seal_eval::endpoint::EndpointConfig> {
        let rubric: seal_eval::rubrics::HarmRubric = self
            .rubric
            .parse()
            .map_err(|e: String| PipelineError::config("eval.endpoint.rubric", e))?;
        let mut c = seal_eval::endpoint::EndpointConfig::new(self.url.clone(), self.model.clone());
        c.api_key_env = self.api_key_env.clone();
        c.rubric = rubric;
        c.timeout = std::time::Duration::from_secs(self.timeout_seconds);
        c.max_retries = self.retries;
        c.concurrency = self.concurrency;
        c.cache_dir = self
            .cache
            .clone()
            .or_else(|| default_cache.map(Path::to_path_buf));
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let err = |field: &str, msg: &str| {
            Err(PipelineError::config(
                &format!("eval.endpoint.{field}"),
                msg.to_string(),
            ))
        };
        if self.url.trim().is_empty() {
            return err("url", "empty");
        }
        if self.model.trim().is_empty() {
            return err("model", "empty");
        }
        if self.timeout_seconds == 0 || self.concurrency == 0 {
            return err(
                "timeout_seconds",
                "timeout_seconds and concurrency must be positive",
            );
        }
        self.to_endpoint_config(None).map(|_| ())
    }
}

/// The `[eval.win_rate]` table: every method's responses against the
/// reference method's on the same prompts, judged pairwise in both orders
/// ([`seal_eval::winrate`]), per seed and evaluation set.
///
/// Marked `#[non_exhaustive]`: build it with [`WinRateConfig::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WinRateConfig {
    /// A registered judge that compares answers
    /// ([`seal_eval::Judge::prefer`]): the built-in `endpoint`, or a
    /// user's ([`crate::registry::register_judge`]).
    pub judge: String,
    /// The method every other is compared with (standard SFT: `full`).
    #[serde(default = "WinRateConfig::default_reference")]
    pub reference: String,
    /// Evaluation sets compared: `safety` (harmful prompts), `benign`
    /// (over-refusal prompts), `gsm8k` (utility prompts). Empty (the
    /// default): every set the evaluation answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<String>,
    /// Bootstrap resamples of the 95% interval.
    #[serde(default = "WinRateConfig::default_resamples")]
    pub resamples: usize,
    /// Seed of the bootstrap.
    #[serde(default)]
    pub seed: u64,
}

impl WinRateConfig {
    /// The evaluation sets a win rate can compare, by name, with the
    /// response file the evaluation writes for each.
    pub const SETS: [(&'static str, &'static str); 3] = [
        ("safety", "safety_responses.jsonl"),
        ("benign", "benign_responses.jsonl"),
        ("gsm8k", "gsm8k_responses.jsonl"),
    ];

    fn default_reference() -> String {
        "full".into()
    }
    fn default_resamples() -> usize {
        2000
    }

    /// Win rates judged by `judge` against `full`, on every set, 2000
    /// resamples, seed 0.
    pub fn new(judge: impl Into<String>) -> Self {
        Self {
            judge: judge.into(),
            reference: Self::default_reference(),
            sets: Vec::new(),
            resamples: Self::default_resamples(),
            seed: 0,
        }
    }

    /// The sets compared (in [`WinRateConfig::SETS`] order) with their
    /// response files, given whether GSM8K answers are generated.
    pub fn sets_and_files(&self, gsm8k: bool) -> Vec<(&'static str, &'static str)> {
        Self::SETS
            .iter()
            .copied()
            .filter(|(name, _)| {
                if self.sets.is_empty() {
                    *name != "gsm8k" || gsm8k
                } else {
                    self.sets.iter().any(|s| s == name)
                }
            })
            .collect()
    }

    /// The bootstrap settings.
    pub fn options(&self) -> seal_eval::winrate::WinRateOptions {
        let mut o = seal_eval::winrate::WinRateOptions::default();
        o.resamples = self.resamples;
        o.seed = self.seed;
        o
    }
}

impl EvalConfig {
    /// The registered judges a run builds: [`EvalConfig::judges`], or
    /// `classifier` when that is empty and a trained judge is configured.
    pub fn judge_names(&self) -> Vec<String> {
        if self.judges.is_empty() && self.judge.is_some() {
            vec!["classifier".into()]
        } else {
            self.judges.clone()
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            batch: 8,
            gsm8k_accuracy: true,
            gsm8k_max_new_tokens: None,
            judge: None,
            judge_base: None,
            judges: Vec::new(),
            endpoint: None,
            win_rate: None,
        }
    }
}

/// The whole pipeline.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] (or [`PipelineConfig::demo`]) and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// Title of the report.
    pub name: String,
    /// Output directory (relative paths: to the config file's directory
    /// when read from a file).
    pub out: PathBuf,
    /// Seeds: each repeats ranking, selection and fine-tuning.
    pub seeds: Vec<u64>,
    /// Maximum tokens per sample (longer prompts are cut from the left).
    pub max_len: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    pub threads: Option<i32>,
    /// A cache shared across runs for what is keyed by content (the
    /// imported GGUF and the aligned model): runs with the same base model, alignment data and settings
    /// reuse one entry wherever their outputs live. Relative paths: to the
    /// config file's directory. `None`: the run's own `OUT/cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// Data.
    pub data: DataConfig,
    /// Starting model.
    pub model: ModelConfig,
    /// Alignment stage.
    pub align: AlignConfig,
    /// Ranker training.
    pub rank: RankConfig,
    /// Selection methods.
    pub select: SelectConfig,
    /// Fine-tuning on each selection.
    pub finetune: SftConfig,
    /// Evaluation.
    pub eval: EvalConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: "SEAL pipeline".into(),
            out: PathBuf::from("target/seal-pipeline"),
            seeds: vec![42],
            max_len: 512,
            device: "cpu".into(),
            threads: None,
            cache_dir: None,
            progress: true,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            align: AlignConfig::default(),
            rank: RankConfig::default(),
            select: SelectConfig::default(),
            finetune: SftConfig {
                epochs: 2,
                ..SftConfig::default()
            },
            eval: EvalConfig::default(),
        }
    }
}

/// Applies `KEY=VALUE` overrides (see [`PipelineConfig::from_file_with`])
/// to a config's TOML text.
pub fn apply_overrides(text: &str, origin: &Path, overrides: &[String]) -> Result<String> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| PipelineError::Config {
        what: origin.display().to_string(),
        message: e.to_string(),
    })?;
    for o in overrides {
        let bad = |m: &str| PipelineError::config("--set", format!("`{o}`: {m}"));
        let (key, value) = o.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
        let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(bad("empty key segment"));
        }
        let value = value.trim();
        let (last, tables) = path.split_last().expect("split gives one segment");
        if value.is_empty() {
            // `KEY=` removes the key: the preset's (or the default) value applies.
            let mut table = Some(&mut doc);
            for seg in tables {
                table = table
                    .and_then(|t| t.get_mut(*seg))
                    .and_then(|v| v.as_table_mut());
            }
            if let Some(t) = table {
                t.remove(*last);
            }
            continue;
        }
        // A TOML value; a bare word (cuda, sgd, cosine) is taken as a string.
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut table = &mut doc;
        for (i, seg) in tables.iter().enumerate() {
            let entry = table
                .entry(seg.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| bad(&format!("`{}` is not a table", path[..=i].join("."))))?;
        }
        table.insert(last.to_string(), parsed);
    }
    toml::to_string(&doc).map_err(|e| PipelineError::config("--set", e.to_string()))
}

impl PipelineConfig {
    /// Parses a TOML config; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Self> {
        let mut c: PipelineConfig = toml::from_str(text).map_err(|e| PipelineError::Config {
            what: origin.display().to_string(),
            message: e.to_string(),
        })?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut c.out);
        if let Some(p) = c.cache_dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = c.data.dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = c.model.dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = c.model.gguf.as_mut() {
            resolve(p);
        }
        let endpoint_cache = c.eval.endpoint.as_mut().and_then(|e| e.cache.as_mut());
        for p in [
            c.eval.judge.as_mut(),
            c.eval.judge_base.as_mut(),
            endpoint_cache,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        // Validation errors name the file as well as the field.
        c.validate().map_err(|e| match e {
            PipelineError::Config { what, message } => PipelineError::Config {
                what: format!("{}: {what}", origin.display()),
                message,
            },
            other => other,
        })?;
        Ok(c)
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// Reads a TOML config file with `KEY=VALUE` overrides applied to the
    /// file's text before it is interpreted (`seal pipeline --set`): `KEY`
    /// is a dotted path (`rank.lambda`, `rank.full.warm_start_steps`),
    /// `VALUE` a TOML value (`0.5`, `"cuda"`, `[1, 2]`; a bare word is a
    /// string; an empty one removes the key, so that the preset's or the
    /// default value applies). Overrides land in the file's own tables, so preset filling,
    /// path resolution and validation treat them exactly as if written
    /// there, and an unknown key is refused naming it.
    pub fn from_file_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let text = apply_overrides(&text, path, overrides)?;
        Self::from_toml(&text, path, base)
    }

    /// The configuration as TOML (what `report.json` records).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| PipelineError::config("config", e.to_string()))
    }

    /// The demo of `cargo xtask demo`: the embedded dataset, SEAL against
    /// random selection and full fine-tuning, one seed (about ten minutes
    /// on a 2-core CPU).
    pub fn demo() -> Self {
        Self {
            name: "SEAL demo (embedded dataset)".into(),
            out: PathBuf::from("target/seal-demo"),
            max_len: 256,
            ..Self::default()
        }
    }

    /// Checks ranges and combinations; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let err = |what: &str, msg: String| Err(PipelineError::config(what, msg));
        if self.seeds.is_empty() {
            return err("seeds", "no seed given".into());
        }
        if self.select.methods.is_empty() {
            return err("select.methods", "no method given".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.select.methods {
            if !seen.insert(m.as_str()) {
                return err("select.methods", format!("`{m}` is listed twice"));
            }
        }
        // Unknown names are refused here, with the registered ones listed.
        let methods = crate::registry::registered_methods().resolve(&self.select.methods)?;
        if !positive(self.select.p) || self.select.p > 1.0 {
            return err(
                "select.p",
                format!("{}: expected a value in (0, 1]", self.select.p),
            );
        }
        if !(0.0..=1.0).contains(&self.select.mixed_lambda) {
            return err(
                "select.mixed_lambda",
                format!("{}: expected a value in [0, 1]", self.select.mixed_lambda),
            );
        }
        if self.max_len < 8 {
            return err("max_len", format!("{}: too small", self.max_len));
        }
        for (what, s) in [("align.sft", &self.align.sft), ("finetune", &self.finetune)] {
            if s.epochs == 0 || s.batch == 0 || s.lora.r == 0 || !positive(s.lr) {
                return err(
                    what,
                    "epochs, batch, lora.r and lr must be positive".to_string(),
                );
            }
            s.schedule
                .parse::<seal_bilevel::Schedule>()
                .map_err(|e| PipelineError::config(&format!("{what}.schedule"), e.to_string()))?;
        }
        let sim = &self.select.similarity;
        if sim.response_tokens == 0 || sim.sketch_dims == 0 || sim.layer == Some(0) {
            return err(
                "select.similarity",
                "response_tokens, sketch_dims and layer must be positive".into(),
            );
        }
        let r = &self.rank;
        if r.epochs == 0
            || r.batch == 0
            || r.lora.r == 0
            || !positive(r.lr)
            || !positive(r.ranker_lr)
        {
            return err(
                "rank",
                "epochs, batch, lora.r, lr and ranker_lr must be positive".into(),
            );
        }
        if !r.ranker_betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return err(
                "rank.ranker_betas",
                format!("{:?}: expected two values in [0, 1)", r.ranker_betas),
            );
        }
        if !(r.ranker_clip.is_finite() && r.ranker_clip >= 0.0) {
            return err(
                "rank.ranker_clip",
                format!(
                    "{}: expected a finite value ≥ 0 (0: no clipping)",
                    r.ranker_clip
                ),
            );
        }
        if !(r.full.lr_scale.is_finite() && r.full.lr_scale >= 0.0) {
            return err(
                "rank.full.lr_scale",
                format!("{}: expected a finite value ≥ 0", r.full.lr_scale),
            );
        }
        // Every name a run looks up is checked here, before anything runs.
        let optimizers = crate::registry::registered_optimizers();
        for (what, name) in [
            ("align.sft.optimizer", &self.align.sft.optimizer),
            ("finetune.optimizer", &self.finetune.optimizer),
            ("rank.optimizer", &r.optimizer),
            ("rank.ranker_optimizer", &r.ranker_optimizer),
        ] {
            optimizers.lookup(what, name)?;
        }
        let solvers = crate::registry::registered_solvers();
        for method in &methods {
            match method.solver() {
                Some(s) if !solvers.contains(s) => {
                    return err(
                        "select.methods",
                        format!(
                            "method `{}` reads the rankers of solver `{s}`, which is not registered (registered: {})",
                            method.name(),
                            solvers.names().join(", ")
                        ),
                    );
                }
                _ => {}
            }
        }
        let judges = crate::registry::registered_judges();
        let mut seen = std::collections::HashSet::new();
        for name in &self.eval.judges {
            judges.lookup("eval.judges", name)?;
            if !seen.insert(name.as_str()) {
                return err("eval.judges", format!("`{name}` is listed twice"));
            }
        }
        if self.eval.judge_names().iter().any(|n| n == "classifier") && self.eval.judge.is_none() {
            return err(
                "eval.judges",
                "`classifier` needs `eval.judge`, a directory written by `seal judge train`".into(),
            );
        }
        if self.eval.judge_names().iter().any(|n| n == "endpoint") && self.eval.endpoint.is_none() {
            return err(
                "eval.judges",
                "`endpoint` needs an `[eval.endpoint]` table (url, model)".into(),
            );
        }
        if let Some(e) = &self.eval.endpoint {
            e.validate()?;
        }
        if let Some(w) = &self.eval.win_rate {
            judges.lookup("eval.win_rate.judge", &w.judge)?;
            if w.judge == "keyword-gcg" || w.judge == "classifier" {
                return err(
                    "eval.win_rate.judge",
                    format!(
                        "`{}` gives no pairwise preferences; use `endpoint` or a registered judge that implements `prefer`",
                        w.judge
                    ),
                );
            }
            if w.judge == "endpoint" && self.eval.endpoint.is_none() {
                return err(
                    "eval.win_rate.judge",
                    "`endpoint` needs an `[eval.endpoint]` table (url, model)".into(),
                );
            }
            if !self.select.methods.contains(&w.reference) {
                return err(
                    "eval.win_rate.reference",
                    format!(
                        "`{}` is not among select.methods ({})",
                        w.reference,
                        self.select.methods.join(", ")
                    ),
                );
            }
            if w.resamples == 0 {
                return err("eval.win_rate.resamples", "must be positive".into());
            }
            for s in &w.sets {
                if !WinRateConfig::SETS.iter().any(|(n, _)| n == s) {
                    return err(
                        "eval.win_rate.sets",
                        format!("unknown set `{s}` (expected safety, benign or gsm8k)"),
                    );
                }
                if s == "gsm8k" && !self.eval.gsm8k_accuracy {
                    return err(
                        "eval.win_rate.sets",
                        "`gsm8k` needs eval.gsm8k_accuracy = true (its answers are generated there)"
                            .into(),
                    );
                }
            }
        }
        r.activation
            .parse::<seal_bilevel::Activation>()
            .map_err(|e| PipelineError::config("rank.activation", e.to_string()))?;
        if !(0.0..=1.0).contains(&r.lambda) || r.lambda_decay < 0.0 {
            return err(
                "rank.lambda",
                format!(
                    "lambda {} must be in [0, 1] and lambda_decay {} >= 0",
                    r.lambda, r.lambda_decay
                ),
            );
        }
        if self.eval.batch == 0
            || self.eval.max_new_tokens == 0
            || self.eval.gsm8k_max_new_tokens == Some(0)
        {
            return err(
                "eval",
                "batch, max_new_tokens and gsm8k_max_new_tokens must be positive".into(),
            );
        }
        if self.model.dir.is_some() && self.model.gguf.is_some() {
            return err("model", "give `dir` or `gguf`, not both".into());
        }
        Ok(())
    }

    /// The names of the ranker solvers the methods need, sorted (methods
    /// looked up in [`crate::registry::registered_methods`]).
    pub fn solvers(&self) -> Result<Vec<String>> {
        crate::registry::registered_methods().solvers(&self.select.methods)
    }
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}
