//! `seal import-gguf`: convert a llama.cpp GGUF checkpoint (architecture
//! `llama`; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors) into a Hugging Face model
//! directory with f32 `model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (with the chat template) and
//! `generation_config.json`.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `seal import-gguf`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF file to import.
    #[arg(long, value_name = "FILE")]
    pub gguf: PathBuf,
    /// The HF directory to create (must not exist, or be empty); written
    /// atomically.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Imports the GGUF and prints a one-line summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    let summary = seal_model::gguf::import_gguf(&args.gguf, &args.out).with_context(|| {
        format!(
            "importing {} into {}",
            args.gguf.display(),
            args.out.display()
        )
    })?;
    outln!("{summary}");
    Ok(())
}
