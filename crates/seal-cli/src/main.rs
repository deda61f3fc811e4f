//! `seal`: every seal-rs capability as a subcommand.
//!
//! Each subcommand lives in its own module under `cmd/` and exposes a clap
//! `Args` (or `Subcommand`) type plus a `run` function.

/// `println!` that fails with an error instead of panicking when standard
/// output cannot be written (a full disk, `> /dev/full`); a closed pipe
/// still ends the process quietly through SIGPIPE.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))?
    }};
}

/// `eprintln!` that never panics: a message that cannot be shown is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod alloc;
mod cmd;

use clap::{Parser, Subcommand};

/// SEAL: safety-enhanced aligned LLM fine-tuning via bilevel data selection.
#[derive(Parser)]
#[command(name = "seal", version, about, long_about = None)]
struct Cli {
    /// On CUDA, let f32 matmuls use TF32 tensor cores (about 8x the f32
    /// matmul peak on an H100/H200, inputs rounded to a 10-bit mantissa);
    /// no effect on the CPU. Same as TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1.
    #[arg(long, global = true)]
    tf32: bool,
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
    /// Train the harm/refusal judge, or measure its agreement with labels.
    #[command(subcommand)]
    Judge(cmd::judge::JudgeCommand),
    /// Evaluate a model (safety, over-refusal, GSM8K, NLL) or ranker scores.
    Eval(cmd::eval::Args),
    /// Train SEAL's data ranker and write per-sample scores.
    Rank(cmd::rank::Args),
    /// Import an official SEAL selector (.pt) as a ranker.
    ImportSelector(cmd::import_selector::Args),
    /// Select the fine-tuning samples to keep (SEAL top-p or a baseline).
    Select(cmd::select::Args),
    /// LoRA fine-tuning on a selection (kept ids or soft weights) or the
    /// mixed objective; writes a PEFT adapter.
    Finetune(cmd::finetune::Args),
    /// Alignment stage: LoRA SFT on refusals plus benign instructions,
    /// merged into a new model directory.
    Align(cmd::align::Args),
    /// The whole pipeline (align, rank, select, fine-tune, evaluate, report)
    /// from a TOML config.
    Pipeline(cmd::pipeline::Args),
    /// The dose sweep: fine-tune the aligned model on pools with more and
    /// more harmful data and check that the benchmark sees the effect.
    Dose(cmd::dose::Args),
    /// The λ sweep: rank one pool at several upper-level weights and
    /// report the ranker's AUROC against λ.
    LambdaSweep(cmd::lambda_sweep::Args),
    /// Serve a model over an OpenAI-compatible HTTP API (chat and text
    /// completions, streaming, continuous batching).
    Serve(cmd::serve::Args),
}

fn main() -> anyhow::Result<()> {
    // Die quietly on a closed stdout (`seal ... | head`), as Unix tools do,
    // instead of panicking inside println!.
    #[cfg(unix)]
    // Safety: restoring the default disposition of SIGPIPE at start-up,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(allocator = alloc::ALLOCATOR, "memory allocator");
    let cli = Cli::parse();
    if cli.tf32 && !seal_model::runtime::allow_tf32() {
        errln!(
            "--tf32: left off, {} is set to something else in the environment",
            seal_model::runtime::TF32_OVERRIDE_VAR
        );
    }
    match cli.command {
        Command::ImportGguf(args) => cmd::import_gguf::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Data(cmd) => cmd::data::run(cmd),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Judge(cmd) => cmd::judge::run(cmd),
        Command::Rank(args) => cmd::rank::run(args),
        Command::ImportSelector(args) => cmd::import_selector::run(args),
        Command::Select(args) => cmd::select::run(args),
        Command::Finetune(args) => cmd::finetune::run(args),
        Command::Align(args) => cmd::align::run(args),
        Command::Pipeline(args) => cmd::pipeline::run(args),
        Command::Dose(args) => cmd::dose::run(args),
        Command::LambdaSweep(args) => cmd::lambda_sweep::run(args),
        Command::Serve(args) => cmd::serve::run(args),
    }
}
