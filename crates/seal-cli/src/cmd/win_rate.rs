//! `seal eval win-rate`: one model's answers against a reference model's
//! (standard SFT in the SEAL paper), judged pairwise by a model behind an
//! OpenAI-compatible endpoint, both orders asked, with a bootstrap interval.
//! Also the endpoint-judge options shared with `seal eval`.

use anyhow::{bail, Context, Result};
use seal_data::fsutil::StagingDir;
use seal_eval::plot::{interval_plot_svg, Estimate, PlotText};
use seal_eval::rubrics::HarmRubric;
use seal_eval::winrate::win_rate_of_files;
use seal_eval::{EndpointConfig, EndpointJudge, Report, Table, WinRateOptions};
use std::path::PathBuf;
use std::time::Duration;

/// A judge behind an OpenAI-compatible chat-completions endpoint.
#[derive(clap::Args, Debug, Clone)]
pub struct EndpointArgs {
    /// The judge's API base, e.g. `http://127.0.0.1:8000/v1` (a `seal serve`,
    /// vLLM or hosted endpoint).
    #[arg(long)]
    pub judge_endpoint: Option<String>,
    /// The judge model's name at the endpoint.
    #[arg(long, requires = "judge_endpoint")]
    pub judge_model: Option<String>,
    /// The environment variable that holds the endpoint's API key (the key
    /// itself is never taken on the command line, logged or written).
    #[arg(long, requires = "judge_endpoint")]
    pub judge_key_env: Option<String>,
    /// How the endpoint judge is asked about harm: behavior (yes/no),
    /// rubric (refused / convincing / specific) or categories (safe or
    /// unsafe with hazard categories).
    #[arg(long, default_value = "behavior")]
    pub judge_rubric: String,
    /// Answers cached here, keyed by judge, prompt and responses (a rerun
    /// asks nothing twice).
    #[arg(long)]
    pub judge_cache: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub judge_concurrency: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60, value_parser = super::args::positive_usize)]
    pub judge_timeout: usize,
    /// Retries after a transport error, 429 or 5xx.
    #[arg(long, default_value_t = 4)]
    pub judge_retries: usize,
}

impl EndpointArgs {
    /// The judge, when `--judge-endpoint` is given.
    pub fn judge(&self) -> Result<Option<EndpointJudge>> {
        let Some(url) = &self.judge_endpoint else {
            return Ok(None);
        };
        let Some(model) = &self.judge_model else {
            bail!("--judge-endpoint needs --judge-model");
        };
        let rubric: HarmRubric = self
            .judge_rubric
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--judge-rubric: {e}"))?;
        let mut c = EndpointConfig::new(url.clone(), model.clone());
        c.api_key_env = self.judge_key_env.clone();
        c.rubric = rubric;
        c.cache_dir = self.judge_cache.clone();
        c.concurrency = self.judge_concurrency;
        c.timeout = Duration::from_secs(self.judge_timeout as u64);
        c.max_retries = self.judge_retries;
        Ok(Some(EndpointJudge::new(c).context("--judge-endpoint")?))
    }
}

/// Arguments of `seal eval win-rate`.
#[derive(clap::Args, Debug)]
pub struct WinRateArgs {
    /// The candidate's responses (`*_responses.jsonl` of `seal eval` or a
    /// pipeline run); repeat with --reference for several sets (e.g. the
    /// safety and the benign prompts).
    #[arg(long, required = true)]
    pub candidate: Vec<PathBuf>,
    /// The reference's responses to the same prompts (paired by id), one
    /// per --candidate.
    #[arg(long, required = true)]
    pub reference: Vec<PathBuf>,
    /// A name per pair for the report (default: the candidate file's stem).
    #[arg(long)]
    pub label: Vec<String>,
    /// The judge.
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Bootstrap resamples of the interval.
    #[arg(long, default_value_t = 2000, value_parser = super::args::positive_usize)]
    pub resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory: win_rate.json, win_rate.md, win_rate.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
}

/// Runs `seal eval win-rate`.
pub fn run(a: WinRateArgs) -> Result<()> {
    if a.candidate.len() != a.reference.len() {
        bail!(
            "{} --candidate files for {} --reference files: give one reference per candidate",
            a.candidate.len(),
            a.reference.len()
        );
    }
    if !a.label.is_empty() && a.label.len() != a.candidate.len() {
        bail!("give one --label per --candidate, or none");
    }
    if a.endpoint.judge_endpoint.is_none() {
        bail!("a win rate needs a pairwise judge: give --judge-endpoint and --judge-model");
    }
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let judge = a.endpoint.judge()?.context("--judge-endpoint")?;
    let mut opts = WinRateOptions::default();
    opts.resamples = a.resamples;
    opts.seed = a.seed;
    let mut rates = Vec::new();
    for (i, (cand, refr)) in a.candidate.iter().zip(&a.reference).enumerate() {
        let label = a.label.get(i).cloned().unwrap_or_else(|| {
            cand.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| format!("set {i}"))
        });
        errln!("{label}: {} against {}", cand.display(), refr.display());
        let w = win_rate_of_files(&judge, cand, refr, &opts)
            .with_context(|| format!("{} against {}", cand.display(), refr.display()))?;
        rates.push((label, w));
    }
    let stats = judge.stats();
    let mut table = Table::new([
        "set",
        "prompts",
        "win rate",
        "95% interval",
        "wins / ties / losses",
        "orders disagree",
    ]);
    let mut estimates = Vec::new();
    for (label, w) in &rates {
        table.row(vec![
            serde_json::json!(label),
            serde_json::json!(w.prompts),
            serde_json::json!(format!("{:.3}", w.rate)),
            serde_json::json!(format!("[{:.3}, {:.3}]", w.low, w.high)),
            serde_json::json!(format!("{} / {} / {}", w.wins, w.ties, w.losses)),
            serde_json::json!(w.inconsistent),
        ])?;
        estimates.push(Estimate {
            category: label.clone(),
            value: w.rate,
            low: w.low,
            high: w.high,
        });
    }
    let svg = interval_plot_svg(
        &PlotText::new("Win rate against the reference", "set", "win rate"),
        &[("win rate", &estimates)],
        (0.0, 1.0),
        Some(0.5),
    )?;
    let mut report = Report::new("Win rate");
    report
        .section("Judge")
        .metric("judge", "Judge", seal_eval::Judge::name(&judge))
        .metric("questions", "Questions asked", stats.questions)
        .metric("cache_hits", "Answered from the cache", stats.cache_hits)
        .metric("requests", "HTTP requests", stats.requests)
        .metric(
            "unparsable",
            "Unparsable answers (counted as ties)",
            stats.unparsable,
        )
        .paragraph(
            "Every prompt is asked in both orders (candidate first, then reference first); a \
             prompt scores the mean of its two outcomes (win 1, tie ½, loss 0), and the win rate \
             is the mean over prompts with a percentile-bootstrap 95% interval over prompts.",
        );
    report.section("Win rates").table(table).figure(
        "win_rate.svg",
        "Win rate with 95% intervals",
        svg,
    );
    let staging = StagingDir::new(&a.out)?;
    report.write(staging.path(), "win_rate")?;
    let records: Vec<serde_json::Value> = rates
        .iter()
        .map(|(label, w)| serde_json::json!({"set": label, "win_rate": w}))
        .collect();
    seal_model::weights::write_json_atomic(
        &staging.path().join("win_rates.json"),
        &serde_json::json!({"judge": seal_eval::Judge::name(&judge), "stats": stats, "sets": records}),
    )?;
    let out = staging.commit()?;
    for (label, w) in &rates {
        outln!(
            "{label:<24} win rate {:.3} [{:.3}, {:.3}] over {} prompts",
            w.rate,
            w.low,
            w.high,
            w.prompts
        );
    }
    outln!("written to {}", out.join("win_rate.md").display());
    Ok(())
}
