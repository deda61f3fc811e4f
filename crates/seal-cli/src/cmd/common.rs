//! Set-up shared by the training commands (`seal rank`, `seal finetune`):
//! runtime, model loading, tokenisation with drop warnings, optimiser.

use anyhow::{Context, Result};
use seal_data::tokenize::TokenizedSample;
use seal_data::{Sample, TextTokenizer};
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
) -> Result<Vec<TokenizedSample>> {
    seal_pipeline::stages::tokenize(tokenizer, name, samples, max_len)
        .with_context(|| format!("tokenising the {name} set"))
}

pub use seal_pipeline::stages::{model_optimizer, pad_id};
