//! Set-up shared by the training commands (`seal rank`, `seal finetune`):
//! runtime, model loading, tokenisation with drop warnings, optimiser.

use anyhow::{Context, Result};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedDataset};
use seal_data::{Sample, TextTokenizer};
use seal_model::optim::AdamWConfig;
use seal_model::{LoadOptions, Pretrained};
use std::path::Path;
use tch::{Device, Kind};

/// Tunes the allocator, sets libtorch's thread count and parses `--device`.
pub fn runtime(threads: Option<i32>, device: &str) -> Result<Device> {
    seal_model::runtime::tune_allocator();
    if let Some(t) = threads {
        tch::set_num_threads(t);
    }
    seal_model::runtime::parse_device(device)
        .with_context(|| format!("--device `{device}`: expected cpu, cuda, cuda:N or auto"))
}

/// Loads an f32 model directory (weights and tokenizer) onto `device`.
pub fn load_model(dir: &Path, device: Device) -> Result<Pretrained> {
    Pretrained::load(
        dir,
        &LoadOptions {
            device,
            kind: Kind::Float,
        },
    )
    .with_context(|| format!("loading the model from {}", dir.display()))
}

/// Tokenises one named set with the chat template, warning about samples
/// dropped for being longer than `max_len`.
pub fn tokenize_set(
    tokenizer: &TextTokenizer,
    name: &str,
    samples: &[Sample],
    max_len: usize,
) -> Result<TokenizedDataset> {
    let cfg = TokenizeConfig {
        max_len,
        ..Default::default()
    };
    let d = tokenize_samples(tokenizer, samples, &cfg)
        .with_context(|| format!("tokenising the {name} set"))?;
    let dropped = d.summary.total - d.summary.kept;
    if dropped > 0 {
        tracing::warn!(
            "{name} set: {dropped} of {} samples dropped (longer than --max-len {max_len})",
            d.summary.total
        );
    }
    Ok(d)
}

/// The padding id: the tokenizer's pad token, else its first EOS, else 0.
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .pad_token_id()
        .or_else(|| tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0)
}

/// The model optimiser of both commands: AdamW, betas (0.9, 0.95), no decay.
pub fn model_optimizer(lr: f64) -> AdamWConfig {
    AdamWConfig {
        lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}
