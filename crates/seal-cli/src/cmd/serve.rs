//! `seal serve`: an OpenAI-compatible HTTP server for a local model
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`),
//! decoding every client's requests in one continuously batched loop; see
//! the seal-serve crate.

use super::common;
use anyhow::{Context, Result};
use seal_model::{LoadOptions, LoraLm, Pretrained};
use seal_serve::{ServeConfig, ServeError, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::Kind;

/// Arguments of `seal serve`.
#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (any registered family).
    #[arg(long)]
    pub model: PathBuf,
    /// LoRA adapter (PEFT directory) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Port to listen on (0: any free port; the bound address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The served model's id (the `model` of requests); default: the model
    /// directory's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Rows (choices) decoded together at most.
    #[arg(long, default_value_t = 16, value_parser = super::args::positive_usize)]
    pub max_batch: usize,
    /// Requests waiting for room in the batch at most (one more gets 429).
    #[arg(long, default_value_t = 64, value_parser = super::args::positive_usize)]
    pub queue: usize,
    /// Largest `max_tokens` a request may ask for (and the chat default).
    #[arg(long, default_value_t = 2048, value_parser = super::args::positive_usize)]
    pub max_tokens_limit: usize,
    /// Longest prompt in tokens, after the chat template.
    #[arg(long, default_value_t = 4096, value_parser = super::args::positive_usize)]
    pub max_prompt_tokens: usize,
    /// Largest request body in bytes (a larger one gets 413).
    #[arg(long, default_value_t = 1 << 20, value_parser = super::args::positive_usize)]
    pub max_body_bytes: usize,
    /// libtorch intra-op threads.
    #[arg(long, value_parser = super::args::threads)]
    pub threads: Option<i32>,
    /// cpu, cuda, cuda:N or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seconds requests in flight may run on after SIGTERM or Ctrl-C; what
    /// is left then fails (503, or an error event ending the stream).
    #[arg(long, default_value_t = 30.0, value_parser = super::args::non_negative_f64)]
    pub shutdown_grace: f64,
}

/// Runs `seal serve` until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> Result<()> {
    let device = common::runtime(args.threads, &args.device)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => dir_name(&args.model),
    };
    let mut config = ServeConfig::default();
    config.host = args.host.clone();
    config.port = args.port;
    config.model_name = name.clone();
    config.max_batch = args.max_batch;
    config.queue = args.queue;
    config.max_tokens_limit = args.max_tokens_limit;
    config.max_prompt_tokens = args.max_prompt_tokens;
    config.max_body_bytes = args.max_body_bytes;
    config.shutdown_grace = Duration::from_secs_f64(args.shutdown_grace);
    config.handle_signals = true;
    let (dir, adapter) = (args.model.clone(), args.adapter.clone());
    let server = Server::start(config, move || {
        let mut options = LoadOptions::default();
        options.device = device;
        options.kind = Kind::Float;
        let mut pre = Pretrained::load(&dir, &options)
            .map_err(|e| ServeError::Load(format!("{}: {e}", dir.display())))?;
        if let Some(adapter) = &adapter {
            pre.model
                .load_lora(adapter)
                .map_err(|e| ServeError::Load(format!("adapter {}: {e}", adapter.display())))?;
        }
        Ok((pre.model, pre.tokenizer))
    })
    .with_context(|| format!("starting the server for {}", args.model.display()))?;
    outln!(
        "seal serve: model `{name}` listening on http://{}",
        server.addr()
    );
    server.wait().context("serving")?;
    Ok(())
}

/// The model directory's name (of its canonical path, so `.` works).
fn dir_name(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "seal".into())
}
