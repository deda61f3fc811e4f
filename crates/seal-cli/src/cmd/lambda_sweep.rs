//! `seal lambda-sweep`: the λ sweep of `seal_pipeline::sweep` (ranker AUROC
//! against the upper-level weight), from a pipeline config whose `[rank]`
//! settings, data, seeds and top-p it uses.

use anyhow::{Context, Result};
use seal_pipeline::sweep::{run_lambda_sweep, LambdaSweepConfig};
use seal_pipeline::PipelineConfig;
use std::path::PathBuf;

/// Arguments of `seal lambda-sweep`.
#[derive(clap::Args)]
pub struct Args {
    /// Pipeline TOML config (e.g. configs/replication.toml): its `[rank]`
    /// settings, data directory, seeds, `select.p` and alignment.
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory (lambda_sweep.json, .md and .svg).
    #[arg(long)]
    pub out: PathBuf,
    /// λ of the first epoch, one ranking each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 0.75, 0.5, 0.25])]
    pub lambdas: Vec<f64>,
    /// Ranker solver: a registered name (seal, the memory-efficient
    /// penalty; seal-full; implicit; or a registered user solver).
    #[arg(long, default_value = "seal")]
    pub solver: String,
    /// Override the config's benchmark directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Rank from this model directory (e.g. a cached aligned model) instead
    /// of running the config's alignment stage.
    #[arg(long)]
    pub start: Option<PathBuf>,
    /// Override the config's seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override the config's ranking epochs.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub epochs: Option<usize>,
    /// Override the config's λ decay per epoch.
    #[arg(long, value_parser = super::args::non_negative_f64)]
    pub lambda_decay: Option<f64>,
    /// Override the config's maximum tokens per sample.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub max_len: Option<usize>,
    /// Override one config key before the config is read: `KEY=VALUE`
    /// with a dotted key and a TOML value (`--set rank.lambda=0.5
    /// --set rank.full.warm_start_steps=200 --set device=cuda`; `KEY=`
    /// removes the key, so its preset's value applies); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the sweep recorded in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Write into an existing non-empty output directory that does not hold
    /// an earlier sweep.
    #[arg(long)]
    pub force: bool,
}

/// Runs `seal lambda-sweep`.
pub fn run(a: Args) -> Result<()> {
    let mut config = PipelineConfig::from_file_with(&a.config, &a.set)
        .with_context(|| format!("reading the pipeline config {}", a.config.display()))?;
    config.out = a.out.clone();
    if let Some(d) = a.data {
        config.data.dir = Some(d);
    }
    if let Some(seeds) = a.seeds {
        config.seeds = seeds;
    }
    if let Some(e) = a.epochs {
        config.rank.epochs = e;
    }
    if let Some(d) = a.lambda_decay {
        config.rank.lambda_decay = d;
    }
    if let Some(n) = a.max_len {
        config.max_len = n;
    }
    config.validate()?;
    // Any registered solver; an unknown name is refused here, listing the
    // registered ones.
    seal_pipeline::registered_solvers().lookup("--solver", &a.solver)?;
    let solver = a.solver.clone();
    for &l in &a.lambdas {
        if !(0.0..=1.0).contains(&l) {
            anyhow::bail!("--lambdas: {l} is not in [0, 1]");
        }
    }
    let own = a.out.join("lambda_sweep.json").is_file();
    seal_data::fsutil::check_output_dir(&a.out, a.force || own).context("the output directory")?;
    let sweep = LambdaSweepConfig {
        lambdas: a.lambdas,
        solver,
        start: a.start,
        resume: a.resume,
    };
    let result = run_lambda_sweep(&config, &sweep)?;
    outln!("{}", seal_pipeline::sweep::markdown(&result).trim_end());
    outln!(
        "written to {} ({:.1} min)",
        a.out.join("lambda_sweep.md").display(),
        result.seconds / 60.0
    );
    Ok(())
}
