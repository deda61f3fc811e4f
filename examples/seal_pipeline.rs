//! The main job: SEAL against random selection and full fine-tuning on the
//! embedded default dataset with SmolLM2-135M-Instruct (about ten minutes
//! on a 2-core CPU; `cargo xtask demo` runs it).
//!
//! Stages: align the model (cached), train SEAL's ranker, select the top
//! 80%, fine-tune a LoRA on each selection, evaluate safety and utility,
//! and write `target/seal-demo/report.md` with its figures.
//!
//! ```text
//! cargo run --release -p seal-examples --example seal_pipeline [-- OUT_DIR]
//! ```

use anyhow::Result;
use seal_pipeline::PipelineConfig;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = PipelineConfig::demo();
    if let Some(out) = std::env::args().nth(1) {
        config.out = out.into();
    }
    let result = seal_pipeline::run(&config)?;
    print!("{}", seal_pipeline::report::summary_table(&result));
    println!(
        "report: {} ({:.1} min)",
        config.out.join("report.md").display(),
        result.seconds / 60.0
    );
    Ok(())
}
