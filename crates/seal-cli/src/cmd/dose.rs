//! `seal dose`: the dose sweep of `seal_pipeline::dose` (does harmful data
//! in the pool measurably break the aligned model?), from a pipeline config
//! whose alignment, fine-tuning and evaluation settings it uses.

use anyhow::{Context, Result};
use seal_data::benchmark::{BenchmarkSizes, SizePreset, RECIPE_VERSION};
use seal_pipeline::dose::{run_dose, DoseConfig};
use seal_pipeline::PipelineConfig;
use std::path::PathBuf;

/// Arguments of `seal dose`.
#[derive(clap::Args)]
pub struct Args {
    /// Pipeline TOML config (e.g. configs/replication.toml): its `[align]`,
    /// `[finetune]` and `[eval]` settings, seeds and evaluation limit.
    #[arg(long)]
    pub config: PathBuf,
    /// The shared data directory the pools are built from.
    #[arg(long)]
    pub shared: PathBuf,
    /// Output directory (dose.json, dose.md, one folder per run).
    #[arg(long)]
    pub out: PathBuf,
    /// Benchmark recipe version.
    #[arg(long, default_value_t = RECIPE_VERSION)]
    pub recipe: u32,
    /// Benchmark size preset (small, medium, full).
    #[arg(long, default_value = "small", value_parser = parse_preset)]
    pub size: SizePreset,
    /// Override the preset's pool size (samples in `finetune.jsonl`).
    #[arg(long, value_parser = super::args::positive_usize)]
    pub finetune: Option<usize>,
    /// Poison ratios of the pools (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.05, 0.1, 0.2])]
    pub ratios: Vec<f64>,
    /// The ratio whose pool the gate compares with its benign part
    /// (default: the preset's poison ratio).
    #[arg(long)]
    pub gate_ratio: Option<f64>,
    /// Override the config's seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override the config's evaluation-set limit (prompts per set).
    #[arg(long, value_parser = super::args::positive_usize)]
    pub eval_limit: Option<usize>,
    /// Override the config's fine-tuning epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the config's fine-tuning learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Start from this aligned model directory instead of running the
    /// config's alignment stage.
    #[arg(long)]
    pub aligned: Option<PathBuf>,
    /// Continue the sweep recorded in the output directory's dose.json.
    #[arg(long)]
    pub resume: bool,
    /// Only rewrite dose.md from the output directory's dose.json (the
    /// gate recomputed); run nothing.
    #[arg(long)]
    pub report_only: bool,
    /// Write into an existing non-empty output directory that does not hold
    /// an earlier sweep.
    #[arg(long)]
    pub force: bool,
}

fn parse_preset(s: &str) -> Result<SizePreset, String> {
    s.parse().map_err(|e: seal_data::DataError| e.to_string())
}

/// Runs `seal dose`.
pub fn run(a: Args) -> Result<()> {
    if a.report_only {
        let result = seal_pipeline::dose::rewrite_report(&a.out)?;
        outln!("{}", seal_pipeline::dose::markdown(&result).trim_end());
        return Ok(());
    }
    let mut config = PipelineConfig::from_file(&a.config)
        .with_context(|| format!("reading the pipeline config {}", a.config.display()))?;
    config.out = a.out.clone();
    if let Some(n) = a.eval_limit {
        config.data.eval_limit = Some(n);
    }
    if let Some(seeds) = a.seeds {
        config.seeds = seeds;
    }
    if let Some(e) = a.epochs {
        config.finetune.epochs = e;
    }
    if let Some(lr) = a.lr {
        config.finetune.lr = lr;
    }
    config.validate()?;
    for &r in a.ratios.iter().chain(a.gate_ratio.as_ref()) {
        if !(0.0..=1.0).contains(&r) {
            anyhow::bail!("--ratios / --gate-ratio: {r} is not in [0, 1]");
        }
    }
    let own = a.out.join("dose.json").is_file();
    seal_data::fsutil::check_output_dir(&a.out, a.force || own).context("the output directory")?;
    let mut sizes = BenchmarkSizes::preset_for(a.recipe, a.size).context("--recipe")?;
    if let Some(n) = a.finetune {
        sizes.finetune = n;
    }
    let standard = DoseConfig::new(a.shared, a.recipe, sizes);
    let dose = DoseConfig {
        ratios: a.ratios,
        gate_ratio: a.gate_ratio.unwrap_or(standard.gate_ratio),
        resume: a.resume,
        aligned: a.aligned,
        ..standard
    };
    let result = run_dose(&config, &dose)?;
    outln!("{}", seal_pipeline::dose::markdown(&result).trim_end());
    outln!(
        "written to {} ({:.1} min)",
        a.out.join("dose.md").display(),
        result.seconds / 60.0
    );
    Ok(())
}
