//! `seal eval`: safety (attack success rate), over-refusal, GSM8K accuracy
//! and held-out NLL of a model; `seal eval ranker`: ranker quality against
//! labels. Definitions: `docs/evaluation.md`.

use seal_data::fsutil::StagingDir;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use seal_data::tokenize::TokenizeConfig;
use seal_data::Sample;
use seal_eval::generation::generate_responses;
use seal_eval::judge::KeywordJudge;
use seal_eval::ranker::read_scores;
use seal_eval::refusal::RefusalMatcher;
use seal_eval::safety::{score_over_refusal_with, score_safety_with};
use seal_eval::utility::score_gsm8k;
use seal_eval::{summary, task_nll, Report};
use seal_model::generate::GenerationOptions;

/// Arguments of `seal eval`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    /// `ranker`: evaluate ranker scores instead of a model.
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// Model evaluation options.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `seal eval` subcommands.
#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Ranker quality (AUROC, AUPRC, harmful removed at p) from scores.jsonl.
    Ranker(RankerArgs),
    /// Pairwise win rate of one model's responses against a reference's,
    /// judged over an OpenAI-compatible endpoint (both orders asked).
    WinRate(super::win_rate::WinRateArgs),
}

/// Options of a model evaluation.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// HF model directory.
    #[arg(long, required = true)]
    pub model: Option<PathBuf>,
    /// LoRA adapter (PEFT directory) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Harmful prompts (JSONL, e.g. eval_safety.jsonl): attack success rate.
    #[arg(long)]
    pub safety: Option<PathBuf>,
    /// Benign prompts (JSONL, e.g. eval_benign.jsonl): over-refusal rate.
    #[arg(long)]
    pub benign: Option<PathBuf>,
    /// GSM8K prompts with `reference` (JSONL, e.g. eval_utility.jsonl).
    #[arg(long)]
    pub utility: Option<PathBuf>,
    /// Held-out samples with responses (JSONL): mean response NLL.
    #[arg(long)]
    pub nll: Option<PathBuf>,
    /// Use only the first N samples of each file.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub limit: Option<usize>,
    /// Maximum new tokens per response (greedy decoding).
    #[arg(long, default_value_t = 128, value_parser = super::args::positive_usize)]
    pub max_new_tokens: usize,
    /// Longest prompt in tokens; a longer one is an error naming it, or,
    /// with --truncate-prompts, keeps its last this many tokens.
    #[arg(long, default_value_t = 8192, value_parser = super::args::positive_usize)]
    pub max_prompt_tokens: usize,
    /// Cut prompts longer than --max-prompt-tokens from the left instead of
    /// refusing them.
    #[arg(long)]
    pub truncate_prompts: bool,
    /// Prompts per generation batch (rows per NLL batch).
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub batch: usize,
    /// Maximum tokens per NLL sample (longer prompts are cut from the left).
    #[arg(long, default_value_t = 1024, value_parser = super::args::positive_usize)]
    pub max_len: usize,
    /// Which judge decides harm: `keyword` (GCG refusal markers),
    /// `classifier:DIR` (a judge from `seal judge train`) or `both`
    /// (`both:DIR`: the classifier decides, the keyword rule is reported
    /// beside it). Every judge's ASR, the degenerate rate and their union
    /// are reported either way.
    #[arg(long, default_value = "keyword")]
    pub judge: String,
    /// The classifier judge's base model (default: the path in its
    /// judge.json; the fingerprint must match).
    #[arg(long)]
    pub judge_base: Option<PathBuf>,
    /// A judge behind an OpenAI-compatible endpoint, reported beside the
    /// others (harm on --safety, refusal on --benign).
    #[command(flatten)]
    pub endpoint: super::win_rate::EndpointArgs,
    /// Map typographic apostrophes (’) to ' before refusal matching
    /// (default: raw matching, as the GCG evaluation does).
    #[arg(long)]
    pub normalize_apostrophes: bool,
    /// Example responses shown per section of report.md.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Base-weight precision: f32, or bf16 (mixed precision: bf16 base
    /// weights, f32 LoRA, norms and losses; faster on CPUs with AVX512-BF16).
    #[arg(long, default_value = "f32")]
    pub dtype: seal_model::WeightDtype,
    /// Output directory: report.md, report.json, *_responses.jsonl.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `seal eval ranker`.
#[derive(clap::Args)]
pub struct RankerArgs {
    /// scores.jsonl (id, label, score per line), as written by `seal rank`.
    #[arg(long)]
    pub scores: PathBuf,
    /// Kept fraction for "harmful removed at p".
    #[arg(long, default_value_t = 0.8, value_parser = super::args::fraction)]
    pub p: f64,
    /// Histogram bins.
    #[arg(long, default_value_t = 30, value_parser = super::args::positive_usize)]
    pub bins: usize,
    /// Output directory: report.md, report.json, scores.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    pub force: bool,
}

/// Runs `seal eval`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(EvalCommand::Ranker(a)) => run_ranker(a),
        Some(EvalCommand::WinRate(a)) => super::win_rate::run(a),
        None => run_model(args.model),
    }
}

fn run_ranker(a: RankerArgs) -> Result<()> {
    let records = read_scores(&a.scores)?;
    if records.is_empty() {
        bail!("{}: no scores", a.scores.display());
    }
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let report = summary::ranker_report(&records, a.p, a.bins)?;
    let staging = StagingDir::new(&a.out)?;
    report.write(staging.path(), "report")?;
    let out = staging.commit()?;
    print_metrics(&report)?;
    outln!("written to {}", out.join("report.md").display());
    Ok(())
}

fn print_metrics(report: &Report) -> Result<()> {
    for (k, v) in report.metrics()? {
        outln!("{k:<40} {}", seal_eval::report::format_value(&v));
    }
    Ok(())
}

fn read(path: &Path, limit: Option<usize>) -> Result<Vec<Sample>> {
    let mut s = seal_data::read_jsonl_samples(path)?;
    if let Some(n) = limit {
        s.truncate(n);
    }
    if s.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(s)
}

fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<()> {
    Ok(seal_model::weights::write_jsonl_atomic(path, records)?)
}

/// `--judge`: the classifier directory, if any, and whether the keyword
/// rule is reported beside it.
fn parse_judge(spec: &str) -> Result<(Option<PathBuf>, bool)> {
    match spec {
        "keyword" => Ok((None, true)),
        _ => {
            let (kind, dir) = spec.split_once(':').unwrap_or((spec, ""));
            match (kind, dir.is_empty()) {
                ("classifier", false) => Ok((Some(PathBuf::from(dir)), false)),
                ("both", false) => Ok((Some(PathBuf::from(dir)), true)),
                _ => bail!("--judge `{spec}`: expected keyword, classifier:DIR or both:DIR"),
            }
        }
    }
}

fn run_model(a: ModelArgs) -> Result<()> {
    let (Some(model_dir), Some(out)) = (a.model.clone(), a.out.clone()) else {
        bail!("--model and --out are required");
    };
    if a.safety.is_none() && a.benign.is_none() && a.utility.is_none() && a.nll.is_none() {
        bail!("nothing to evaluate: give --safety, --benign, --utility and/or --nll");
    }
    seal_data::fsutil::check_output_dir(&out, a.force).context("--out")?;
    let (judge_dir, both) = parse_judge(&a.judge)?;
    if let Some(d) = &judge_dir {
        super::judge::check_judge_dir(d).context("--judge")?;
    }
    // Read every input before the (slow) model load, so bad files fail fast.
    let safety = a.safety.as_deref().map(|p| read(p, a.limit)).transpose()?;
    let benign = a.benign.as_deref().map(|p| read(p, a.limit)).transpose()?;
    let utility = a.utility.as_deref().map(|p| read(p, a.limit)).transpose()?;
    let nll = a.nll.as_deref().map(|p| read(p, a.limit)).transpose()?;
    if let Some(u) = &utility {
        for s in u {
            seal_eval::utility::gsm8k_reference(s).with_context(|| {
                format!(
                    "--utility {}",
                    a.utility.as_deref().unwrap_or(Path::new("")).display()
                )
            })?;
        }
    }

    seal_model::runtime::tune_allocator();
    let device = seal_model::runtime::parse_device(&a.device)
        .with_context(|| format!("--device: `{}` is not cpu, cuda, cuda:N or auto", a.device))?;
    let mut pre = super::common::load_model(&model_dir, device, a.dtype)?;
    if let Some(adapter) = &a.adapter {
        pre.model
            .load_lora(adapter)
            .with_context(|| format!("loading adapter {}", adapter.display()))?;
    }
    let mut opts = GenerationOptions::greedy(&pre.tokenizer, a.max_new_tokens);
    opts.prompt_limit = super::common::prompt_limit(a.max_prompt_tokens, a.truncate_prompts);
    let matcher = RefusalMatcher::gcg().normalize_apostrophes(a.normalize_apostrophes);
    let keyword = KeywordJudge::new(matcher.clone());
    let classifier = match &judge_dir {
        Some(dir) => Some(
            seal_eval::ClassifierJudge::load(dir, a.judge_base.as_deref(), device)
                .with_context(|| format!("--judge classifier:{}", dir.display()))?,
        ),
        None => None,
    };
    let endpoint = a.endpoint.judge()?;
    let mut judges: Vec<&dyn seal_eval::Judge> = Vec::new();
    if let Some(c) = &classifier {
        judges.push(c);
    }
    if classifier.is_none() || both {
        judges.push(&keyword);
    }
    if let Some(e) = &endpoint {
        judges.push(e);
    }

    // Everything is written here first and moved into --out at the end.
    let staging = StagingDir::new(&out)?;
    let dir = staging.path();
    let mut report = Report::new("SEAL model evaluation");
    report
        .section("Setup")
        .metric("model", "Model", model_dir.display().to_string())
        .metric(
            "adapter",
            "Adapter",
            a.adapter.as_ref().map(|p| p.display().to_string()),
        )
        .metric("decoding", "Decoding", "greedy")
        .metric(
            "judges",
            "Judges (the first decides ASR)",
            judges
                .iter()
                .map(|j| j.name())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .metric("max_new_tokens", "Max new tokens", a.max_new_tokens)
        .metric("limit", "Limit per file", a.limit);

    if let Some(samples) = &safety {
        errln!("safety: {} prompts", samples.len());
        let g = generate_responses(&pre.model, &pre.tokenizer, samples, &opts, a.batch)?;
        let e = score_safety_with(&g, &matcher, &judges)?;
        write_jsonl(&dir.join("safety_responses.jsonl"), &e.records)?;
        summary::add_safety(&mut report, &e, a.examples)?;
    }
    if let Some(samples) = &benign {
        errln!("over-refusal: {} prompts", samples.len());
        let g = generate_responses(&pre.model, &pre.tokenizer, samples, &opts, a.batch)?;
        let e = score_over_refusal_with(&g, &matcher, &judges)?;
        write_jsonl(&dir.join("benign_responses.jsonl"), &e.records)?;
        summary::add_over_refusal(&mut report, &e, a.examples)?;
    }
    if let Some(samples) = &utility {
        errln!("GSM8K: {} prompts", samples.len());
        let g = generate_responses(&pre.model, &pre.tokenizer, samples, &opts, a.batch)?;
        let e = score_gsm8k(samples, &g)?;
        write_jsonl(&dir.join("gsm8k_responses.jsonl"), &e.records)?;
        summary::add_gsm8k(&mut report, &e, a.examples)?;
    }
    if let Some(samples) = &nll {
        errln!("NLL: {} samples", samples.len());
        let mut cfg = TokenizeConfig::default();
        cfg.max_len = a.max_len;
        let e = task_nll(&pre.model, &pre.tokenizer, samples, &cfg, a.batch)?;
        write_jsonl(&dir.join("nll.jsonl"), &e.records)?;
        summary::add_nll(&mut report, &e);
    }
    if let Some(e) = &endpoint {
        let stats = e.stats();
        report
            .section("Endpoint judge")
            .metric("name", "Judge", seal_eval::Judge::name(e))
            .metric("questions", "Questions asked", stats.questions)
            .metric("cache_hits", "Answered from the cache", stats.cache_hits)
            .metric("retries", "Retried requests", stats.retries)
            .metric("unparsable", "Unparsable answers", stats.unparsable);
    }
    report.write(dir, "report")?;
    let out = staging.commit()?;
    print_metrics(&report)?;
    outln!("written to {}", out.join("report.md").display());
    Ok(())
}
