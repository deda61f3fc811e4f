//! `seal align`: the alignment stage on its own. LoRA SFT on alignment data
//! (refusals plus benign instructions, `align.jsonl`), merged into the base
//! weights and written as a model directory that every later command can
//! start from.

use super::common;
use anyhow::Result;
use seal_pipeline::config::{AlignConfig, LoraShape, SelfDistill, SftConfig};
use seal_pipeline::stages::Checkpointing;
use std::path::PathBuf;

/// Arguments of `seal align`.
#[derive(clap::Args, serde::Serialize)]
pub struct Args {
    /// HF model directory to align.
    #[arg(long)]
    pub model: PathBuf,
    /// Alignment samples (JSONL, e.g. `align.jsonl` of `seal data benchmark`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output model directory (weights merged, tokenizer copied).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the data.
    #[arg(long, default_value_t = 2, value_parser = super::args::positive_usize)]
    pub epochs: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub batch: usize,
    /// Stop after this many steps.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub max_steps: Option<usize>,
    /// Learning rate.
    #[arg(long, default_value_t = 5e-4, value_parser = super::args::positive_f64)]
    pub lr: f64,
    /// Optimiser: a registered name (adamw, adam, sgd).
    #[arg(long, default_value = seal_pipeline::config::DEFAULT_OPTIMIZER)]
    pub optimizer: String,
    /// constant or cosine (3% warmup).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, value_parser = super::args::positive_usize)]
    pub lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0, value_parser = super::args::positive_f64)]
    pub lora_alpha: f64,
    /// Adapted modules, comma-separated (default: every linear layer).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Maximum tokens per sample.
    #[arg(long, default_value_t = 512, value_parser = super::args::positive_usize)]
    pub max_len: usize,
    /// Seed of the data order and the adapter initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// libtorch intra-op threads.
    #[arg(long, value_parser = super::args::threads)]
    pub threads: Option<i32>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Base-weight precision: f32, or bf16 (mixed precision: bf16 base
    /// weights, f32 LoRA, norms and losses; faster on CPUs with AVX512-BF16).
    #[arg(long, default_value = "f32")]
    pub dtype: seal_model::WeightDtype,
    /// Weight each sample by its number of response tokens (a mean over
    /// tokens, as transformers' Trainer) instead of counting samples alike.
    #[arg(long)]
    pub token_weighted: bool,
    /// Before training, replace the responses of the benign samples by the
    /// model's own greedy answers of at most this many tokens
    /// (self-distillation; answers cut at the limit keep the reference).
    #[arg(long, value_parser = super::args::positive_usize)]
    pub self_distill_tokens: Option<usize>,
    /// Prompts per generation batch of `--self-distill-tokens`.
    #[arg(long, default_value_t = 32, value_parser = super::args::positive_usize)]
    pub self_distill_batch: usize,
    /// After the mixed SFT, this many more epochs over the refusals alone
    /// (label `safe`), same settings, merged too: a deeper refusal that
    /// benign fine-tuning erodes less, at the price of over-refusal.
    #[arg(long, default_value_t = 0)]
    pub refusal_epochs: usize,
    /// Write a checkpoint of the LoRA SFT every N steps into OUT/checkpoints.
    #[arg(long, default_value_t = 25, value_parser = super::args::positive_usize)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from the newest checkpoint in
    /// OUT/checkpoints (the options must be those of that run).
    #[arg(long)]
    pub resume: bool,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs `seal align`.
pub fn run(a: Args) -> Result<()> {
    // Refused before anything is written.
    seal_pipeline::registered_optimizers().lookup("--optimizer", &a.optimizer)?;
    let run_dir = common::RunDir::start(&a.out, a.force, a.resume, &a)?;
    let device = common::runtime(a.threads, &a.device)?;
    let samples = seal_data::read_jsonl_samples(&a.data)?;
    let checkpoints = Checkpointing {
        dir: run_dir.checkpoints().to_path_buf(),
        every: a.checkpoint_every,
        resume: a.resume,
    };
    let mut lora = LoraShape::default();
    lora.r = a.lora_r;
    lora.alpha = a.lora_alpha;
    lora.targets = a
        .lora_targets
        .unwrap_or_else(|| LoraShape::all_linear().targets);
    let mut sft = SftConfig::default();
    sft.epochs = a.epochs;
    sft.batch = a.batch;
    sft.max_steps = a.max_steps;
    sft.lr = a.lr;
    sft.optimizer = a.optimizer;
    sft.schedule = a.schedule;
    sft.lora = lora;
    sft.token_weighted = a.token_weighted;
    let mut config = AlignConfig::default();
    config.enabled = true;
    config.sft = sft;
    config.seed = a.seed;
    config.self_distill = a.self_distill_tokens.map(|max_new_tokens| {
        let mut d = SelfDistill::default();
        d.max_new_tokens = max_new_tokens;
        d.batch = a.self_distill_batch;
        d
    });
    config.refusal_epochs = a.refusal_epochs;
    let out = seal_pipeline::stages::align_to(
        &a.model,
        &samples,
        &config,
        a.max_len,
        device,
        a.dtype,
        &a.out,
        !a.no_progress,
        Some(&checkpoints),
    )?;
    run_dir.finish();
    let last = out.log.last().map_or(f64::NAN, |s| s.loss);
    outln!(
        "aligned on {} samples: {} steps in {:.1} s, last loss {last:.4}",
        samples.len(),
        out.log.len(),
        out.seconds
    );
    outln!("aligned model written to {}", out.dir.display());
    Ok(())
}
