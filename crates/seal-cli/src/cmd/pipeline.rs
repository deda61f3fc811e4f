//! `seal pipeline`: align → rank → select → fine-tune → evaluate → report,
//! from a TOML config (see `docs/pipeline.md` and `configs/`).

use anyhow::{Context, Result};
use seal_pipeline::PipelineConfig;
use std::path::PathBuf;

/// Arguments of `seal pipeline`.
#[derive(clap::Args)]
pub struct Args {
    /// TOML config; without it, the embedded demo configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the config's output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the config's data: a `seal data benchmark` directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Override the config's seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override the config's evaluation-set limit (prompts per set).
    #[arg(long, value_parser = super::args::positive_usize)]
    pub eval_limit: Option<usize>,
    /// Continue the run recorded in the output directory's `results.json`
    /// (same configuration apart from seeds): finished rankers and
    /// (seed, method) runs are kept, the rest is run.
    #[arg(long)]
    pub resume: bool,
    /// Write into an existing non-empty output directory that does not
    /// hold an earlier pipeline run (only the files the pipeline writes are
    /// replaced).
    #[arg(long)]
    pub force: bool,
    /// Override one config key before the config is read: `KEY=VALUE`
    /// with a dotted key and a TOML value (`--set rank.lambda=0.5
    /// --set rank.full.warm_start_steps=200 --set device=cuda`; `KEY=`
    /// removes the key, so its preset's value applies); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs `seal pipeline`.
pub fn run(a: Args) -> Result<()> {
    let mut config = match &a.config {
        Some(path) => PipelineConfig::from_file_with(path, &a.set)
            .with_context(|| format!("reading the pipeline config {}", path.display()))?,
        None if a.set.is_empty() => PipelineConfig::demo(),
        None => {
            let origin = std::path::Path::new("the embedded demo config");
            let text = seal_pipeline::config::apply_overrides(
                &PipelineConfig::demo().to_toml()?,
                origin,
                &a.set,
            )?;
            PipelineConfig::from_toml(&text, origin, std::path::Path::new("."))?
        }
    };
    if let Some(out) = a.out {
        config.out = out;
    }
    if let Some(data) = a.data {
        config.data.dir = Some(data);
    }
    if let Some(n) = a.eval_limit {
        config.data.eval_limit = Some(n);
    }
    if let Some(seeds) = a.seeds {
        config.seeds = seeds;
    }
    config.validate()?;
    if a.print_config {
        outln!("{}", config.to_toml()?.trim_end());
        return Ok(());
    }
    // An earlier pipeline run (its config.toml beside results or the model
    // cache) is this command's own output and is continued or rewritten in
    // place; any other non-empty directory needs --force.
    let own = config.out.join("config.toml").is_file()
        && (config.out.join("results.json").is_file() || config.out.join("cache").is_dir());
    seal_data::fsutil::check_output_dir(&config.out, a.force || own)
        .context("the output directory")?;
    let options = seal_pipeline::RunOptions { resume: a.resume };
    let result = seal_pipeline::run_with(&config, &options)?;
    outln!(
        "{}",
        seal_pipeline::report::summary_table(&result).trim_end()
    );
    outln!(
        "report written to {} ({:.1} min)",
        config.out.join("report.md").display(),
        result.seconds / 60.0
    );
    Ok(())
}
