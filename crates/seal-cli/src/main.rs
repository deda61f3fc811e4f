//! `seal`: every seal-rs capability as a subcommand.
//!
//! Each subcommand lives in its own module under `cmd/` and exposes a clap
//! `Args` (or `Subcommand`) type plus a `run` function.

mod cmd;

use clap::{Parser, Subcommand};

/// SEAL: safety-enhanced aligned LLM fine-tuning via bilevel data selection.
#[derive(Parser)]
#[command(name = "seal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a llama.cpp GGUF checkpoint into a Hugging Face model directory.
    ImportGguf(cmd::import_gguf::Args),
    /// Greedy-generate an answer to a chat-templated prompt.
    Generate(cmd::generate::Args),
    /// Dataset tools: inspect files, build the project's benchmark.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::ImportGguf(args) => cmd::import_gguf::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Data(cmd) => cmd::data::run(cmd),
    }
}
