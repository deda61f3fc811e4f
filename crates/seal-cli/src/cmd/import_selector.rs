//! `seal import-selector`: convert an official SEAL selector (`.pt`) into a
//! ranker directory, without running any pickle code.

use anyhow::{Context, Result};
use seal_bilevel::official::{import_selector, write_scores};
use seal_bilevel::ranker::Activation;
use std::path::PathBuf;

/// Arguments of `seal import-selector`.
#[derive(clap::Args)]
pub struct Args {
    /// The `.pt` file (torch.save of a 1-D logit tensor).
    #[arg(long)]
    pub pt: PathBuf,
    /// Output directory: ranker.safetensors, ranker.json, scores.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Activation (default: from the archive name, else softmax).
    #[arg(long)]
    pub activation: Option<String>,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
}

/// Runs `seal import-selector`.
pub fn run(a: Args) -> Result<()> {
    let act: Option<Activation> = a.activation.as_deref().map(str::parse).transpose()?;
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let r = import_selector(&a.pt, act).with_context(|| format!("importing {}", a.pt.display()))?;
    // Staged, then moved into --out: all of the result or none of it.
    let staging = seal_data::fsutil::StagingDir::new(&a.out)?;
    r.save(staging.path())?;
    write_scores(&staging.path().join("scores.jsonl"), &r, None)?;
    staging.commit()?;
    let v = r.logits_vec()?;
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    outln!(
        "{} logits ({}; min {lo:.4}, max {hi:.4}, mean {:.4}) written to {}",
        r.len(),
        r.activation().as_str(),
        v.iter().sum::<f64>() / v.len().max(1) as f64,
        a.out.display()
    );
    Ok(())
}
