//! `seal generate`: greedy completion of a chat-templated prompt, or of
//! every prompt of a dataset (`--dataset`, self-distillation: the selected
//! samples get the model's own answer as their response).

use super::common;
use super::common::prompt_limit;
use anyhow::{bail, Context, Result};
use seal_data::{Label, Message};
use seal_model::generate::{generate, GenerationOptions, Sampling};
use seal_model::{CausalLm, LoadOptions, Pretrained};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Arguments of `seal generate`.
#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (e.g. written by `seal import-gguf`).
    #[arg(long)]
    pub model: PathBuf,
    /// The user message; the model's chat template is applied with the
    /// generation prompt (and the template's default system prompt).
    #[arg(long, required_unless_present = "dataset", conflicts_with = "dataset")]
    pub prompt: Option<String>,
    /// Answer every prompt of this JSONL dataset instead (needs `--out`):
    /// the selected samples' responses are replaced by the model's greedy
    /// answers, the others are copied unchanged.
    #[arg(long, requires = "out")]
    pub dataset: Option<PathBuf>,
    /// Output JSONL of `--dataset` mode (written atomically).
    #[arg(long, requires = "dataset")]
    pub out: Option<PathBuf>,
    /// In `--dataset` mode, only regenerate samples with this label
    /// (benign, harmful or safe); default: every sample with a response.
    #[arg(long, requires = "dataset")]
    pub label: Option<String>,
    /// Prompts per generation batch in `--dataset` mode.
    #[arg(long, default_value_t = 16, value_parser = super::args::positive_usize)]
    pub batch: usize,
    /// An explicit system prompt instead of the template's default.
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128, value_parser = super::args::positive_usize)]
    pub max_new_tokens: usize,
    /// Longest prompt in tokens; a longer one is an error naming it, or,
    /// with --truncate-prompts, keeps its last this many tokens.
    #[arg(long, default_value_t = 8192, value_parser = super::args::positive_usize)]
    pub max_prompt_tokens: usize,
    /// Cut prompts longer than --max-prompt-tokens from the left instead of
    /// refusing them.
    #[arg(long)]
    pub truncate_prompts: bool,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long, value_parser = super::args::non_negative_f64)]
    pub temperature: Option<f64>,
    /// Nucleus mass when sampling.
    #[arg(long, default_value_t = 1.0, value_parser = super::args::fraction)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also LoRA adapter (PEFT directory) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Write the templated input ids and the 20 largest last-position logits as JSON.
    #[arg(long)]
    pub logits_json: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch intra-op threads.
    #[arg(long, value_parser = super::args::threads)]
    pub threads: Option<i32>,
}

/// Runs `seal generate`.
pub fn run(args: Args) -> Result<()> {
    for (flag, path) in [("--out", &args.out), ("--logits-json", &args.logits_json)] {
        if let Some(p) = path {
            seal_data::fsutil::check_output_file(p).context(flag)?;
        }
    }
    let device = common::runtime(args.threads, &args.device)?;
    let mut load_options = LoadOptions::default();
    load_options.device = device;
    load_options.kind = Kind::Float;
    let mut pre = Pretrained::load(&args.model, &load_options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(adapter) = &args.adapter {
        pre.model
            .load_lora(adapter)
            .with_context(|| format!("loading adapter {}", adapter.display()))?;
    }
    if let (Some(dataset), Some(out)) = (&args.dataset, &args.out) {
        return regenerate(&pre, &args, dataset, out);
    }
    let Some(prompt) = &args.prompt else {
        bail!("give --prompt or --dataset");
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::system(system.clone()));
    }
    messages.push(Message::user(prompt.clone()));
    let ids = pre.tokenizer.encode_chat(&messages, true)?;
    let opts = options(&pre, &args);
    let ids = opts.prompt_limit.apply(&ids, "--prompt")?.to_vec();
    if let Some(path) = &args.logits_json {
        let input =
            Tensor::from_slice(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, -1]);
        let logits = tch::no_grad(|| pre.model.last_logits(&input.to_device(device), None, None))?;
        let (values, indices) = logits
            .get(0)
            .to_device(tch::Device::Cpu)
            .topk(20, -1, true, true);
        let values = Vec::<f32>::try_from(values)?;
        let indices = Vec::<i64>::try_from(indices)?;
        let top: Vec<(i64, f32)> = indices.into_iter().zip(values).collect();
        let json = serde_json::json!({ "input_ids": ids, "top": top });
        seal_model::weights::write_json_atomic(path, &json)?;
    }
    let out = generate(&pre.model, &[ids], &opts)?;
    outln!("{}", pre.tokenizer.decode(&out[0], true)?);
    Ok(())
}

fn options(pre: &Pretrained, args: &Args) -> GenerationOptions {
    let mut opts = GenerationOptions::greedy(&pre.tokenizer, args.max_new_tokens);
    if let Some(temperature) = args.temperature {
        opts.sampling = Sampling::TopP {
            temperature,
            top_p: args.top_p,
        };
    }
    opts.seed = args.seed;
    opts.prompt_limit = prompt_limit(args.max_prompt_tokens, args.truncate_prompts);
    opts
}

/// `--dataset` mode: self-distils the selected samples' responses.
fn regenerate(pre: &Pretrained, args: &Args, dataset: &Path, out: &Path) -> Result<()> {
    let label: Option<Label> = args
        .label
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--label")?;
    let samples = seal_data::read_jsonl_samples(dataset)?;
    let opts = options(pre, args);
    let (samples, stats) = seal_eval::regenerate_responses(
        &pre.model,
        &pre.tokenizer,
        &samples,
        |s| label.is_none() || s.label == label,
        &opts,
        args.batch,
    )
    .with_context(|| format!("generating answers to {}", dataset.display()))?;
    seal_data::write_jsonl_samples(out, &samples)?;
    outln!(
        "{} responses replaced, {} kept (cut at {} tokens), {} kept (empty answer), {} untouched; written to {}",
        stats.replaced,
        stats.truncated,
        args.max_new_tokens,
        stats.empty,
        stats.untouched,
        out.display()
    );
    Ok(())
}
