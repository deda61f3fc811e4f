//! `seal data ...`: inspect dataset files, build the project's benchmark,
//! write the embedded demo dataset, and measure tokenisation and padding.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use seal_data::batch::{padding_stats, BatchSampler};
use seal_data::benchmark::{build_benchmark_recipe, BenchmarkSizes, SizePreset, RECIPE_VERSION};
use seal_data::cache::tokenize_cached;
use seal_data::readers::{read_samples, Format, HhSide, ReadOptions};
use seal_data::sample::Counts;
use seal_data::tokenize::{tokenize_samples, OverLengthPolicy, TokenizeConfig};
use seal_data::{ChatTemplate, Label, TextTokenizer};

/// Data subcommands.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Read a dataset file and print the number of samples per label and
    /// source (or the error, naming file, line and field).
    Inspect(InspectArgs),
    /// Build the project's standard benchmark from the public files.
    Benchmark(BenchmarkArgs),
    /// Write the embedded demo dataset (six JSONL files + summary.json).
    Embedded {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Write into an existing non-empty --out (only the files this
        /// command writes are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Tokenise a JSONL sample file (this project's schema) with a model's
    /// tokenizer and chat template; print counts, speed and padding.
    Tokenize(TokenizeArgs),
}

/// Arguments of `seal data inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// File format: alpaca, dolly, prompt-response, gsm8k, messages,
    /// openorca, hh-rlhf, jailbreakbench, advbench, keys, seal.
    #[arg(long, value_parser = parse_format)]
    format: Format,
    /// The file (`.gz` is read transparently).
    file: PathBuf,
    /// Skip and count bad records instead of failing.
    #[arg(long)]
    lenient: bool,
    /// HH-RLHF side: chosen or rejected.
    #[arg(long, default_value = "chosen", value_parser = parse_side)]
    side: HhSide,
    /// Source tag (default: the file name without extensions).
    #[arg(long)]
    source: Option<String>,
    /// Label for every sample: benign, harmful or safe.
    #[arg(long, value_parser = parse_label)]
    label: Option<Label>,
    /// Format `keys`: the key of the user turn.
    #[arg(long)]
    input_key: Option<String>,
    /// Format `keys`: the key of the response.
    #[arg(long)]
    output_key: Option<String>,
    /// Format `keys`: a key appended to the instruction (like Alpaca's input).
    #[arg(long)]
    context_key: Option<String>,
    /// Format `keys`: the key of a system prompt.
    #[arg(long)]
    system_key: Option<String>,
    /// Print up to this many skipped records.
    #[arg(long, default_value_t = 5)]
    show_skipped: usize,
}

/// Arguments of `seal data benchmark`.
#[derive(clap::Args)]
pub struct BenchmarkArgs {
    /// The shared data directory (layout of `../shared/data`).
    #[arg(long)]
    shared: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Write into an existing non-empty --out (only the files this command
    /// writes are replaced).
    #[arg(long)]
    force: bool,
    /// Size preset: small (default, for the CPU pipeline), medium, full.
    #[arg(long, default_value = "small", value_parser = parse_preset)]
    size: SizePreset,
    /// Seed of every split and draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recipe version (docs/benchmark.md): 3 (the default) or 2, the
    /// previous benchmark, kept reproducible.
    #[arg(long, default_value_t = RECIPE_VERSION)]
    recipe: u32,
    /// Override: fine-tuning pool size.
    #[arg(long)]
    finetune: Option<usize>,
    /// Override: fraction of the pool that is harmful.
    #[arg(long)]
    poison_ratio: Option<f64>,
    /// Override: safe (upper-level) set size.
    #[arg(long)]
    safe: Option<usize>,
    /// Override: refusals (SafeInstr, label `safe`) in the alignment set.
    #[arg(long)]
    align: Option<usize>,
    /// Override: benign instructions with answers (Alpaca/Dolly, label
    /// `benign`) in the alignment set, held out from the pool and the
    /// evaluation sets.
    #[arg(long)]
    align_benign: Option<usize>,
    /// Override: harmful evaluation prompts (recipe 3: AdvBench, HarmBench
    /// and StrongREJECT; recipe 2: AdvBench).
    #[arg(long)]
    eval_safety: Option<usize>,
    /// Override: GSM8K test evaluation prompts.
    #[arg(long)]
    eval_utility: Option<usize>,
    /// Override: held-out benign evaluation prompts.
    #[arg(long)]
    eval_benign: Option<usize>,
    /// Override: XSTest safe prompts added to the benign evaluation prompts
    /// (recipe 3).
    #[arg(long)]
    eval_xstest: Option<usize>,
}

/// Arguments of `seal data tokenize`.
#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A Hugging Face model directory (tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Sample file in this project's JSONL schema (e.g. finetune.jsonl).
    file: PathBuf,
    /// Use a plain prompt format instead of the chat template, e.g.
    /// "Human: {}\nAssistant: " (`\n` is unescaped).
    #[arg(long)]
    plain: Option<String>,
    /// Maximum sequence length.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// Over-length policy: drop or truncate-left.
    #[arg(long, default_value = "truncate-left")]
    policy: String,
    /// Batch size for the padding report.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Bucket window in batches for the padding report.
    #[arg(long, default_value_t = 16)]
    bucket_batches: usize,
    /// Cache directory for tokenised data.
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: seal_data::DataError| e.to_string())
}
fn parse_side(s: &str) -> Result<HhSide, String> {
    s.parse().map_err(|e: seal_data::DataError| e.to_string())
}
fn parse_label(s: &str) -> Result<Label, String> {
    s.parse().map_err(|e: seal_data::DataError| e.to_string())
}
fn parse_preset(s: &str) -> Result<SizePreset, String> {
    s.parse().map_err(|e: seal_data::DataError| e.to_string())
}

/// Runs the command.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect(a) => inspect(a),
        DataCommand::Benchmark(a) => benchmark(a),
        DataCommand::Embedded { out, force } => {
            seal_data::fsutil::check_output_dir(&out, force).context("--out")?;
            let b = seal_data::embedded::embedded_default()?;
            let summary = seal_data::embedded::summary(&b);
            b.write(&out, &summary)?;
            for (name, counts) in &summary.files {
                outln!("{name}: {} samples {:?}", counts.total, counts.by_label);
            }
            outln!("written to {}", out.display());
            Ok(())
        }
        DataCommand::Tokenize(a) => tokenize(a),
    }
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let opts = ReadOptions {
        source: a.source,
        label: a.label,
        lenient: a.lenient,
        hh_side: a.side,
        input_key: a.input_key,
        output_key: a.output_key,
        context_key: a.context_key,
        system_key: a.system_key,
        prompt_only: false,
    };
    let report = read_samples(&a.file, a.format, &opts)?;
    outln!("{} ({})", a.file.display(), a.format);
    outln!("{}", Counts::of(&report.samples).to_string().trim_end());
    let with_response = report
        .samples
        .iter()
        .filter(|s| s.response().is_some())
        .count();
    outln!(
        "with a response: {with_response}; prompt only: {}",
        report.samples.len() - with_response
    );
    if !report.skipped.is_empty() {
        outln!("skipped: {}", report.skipped.len());
        for (k, v) in report.skipped_counts() {
            outln!("  {k:<20} {v}");
        }
        for s in report.skipped.iter().take(a.show_skipped) {
            outln!("  - {}", s.message);
        }
    }
    Ok(())
}

fn benchmark(a: BenchmarkArgs) -> anyhow::Result<()> {
    let mut sizes = BenchmarkSizes::preset_for(a.recipe, a.size).context("--recipe")?;
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut sizes.finetune, a.finetune);
    set(&mut sizes.safe, a.safe);
    set(&mut sizes.align, a.align);
    set(&mut sizes.align_benign, a.align_benign);
    set(&mut sizes.eval_safety, a.eval_safety);
    set(&mut sizes.eval_utility, a.eval_utility);
    set(&mut sizes.eval_benign, a.eval_benign);
    set(&mut sizes.eval_xstest, a.eval_xstest);
    if let Some(p) = a.poison_ratio {
        sizes.poison_ratio = p;
    }
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let (bench, summary) = build_benchmark_recipe(&a.shared, &sizes, a.seed, a.recipe)
        .with_context(|| format!("building the benchmark from {}", a.shared.display()))?;
    bench.write(&a.out, &summary)?;
    for (name, counts) in &summary.files {
        outln!(
            "{name:<20} {:>6} samples {:?}",
            counts.total,
            counts.by_label
        );
    }
    for n in &summary.notes {
        outln!("note: {n}");
    }
    for (source, reasons) in &summary.removed {
        let total: usize = reasons.values().sum();
        let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        outln!(
            "removed from the evaluation prompts of {source}: {total} ({})",
            why.join(", ")
        );
    }
    outln!("written to {}", a.out.display());
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    let tok = TextTokenizer::from_dir(&a.model)?;
    let template = match &a.plain {
        Some(f) => {
            let eos = tok
                .eos_token_ids()
                .first()
                .and_then(|&id| tok.id_to_token(id));
            Some(ChatTemplate::plain(&f.replace("\\n", "\n"), eos)?)
        }
        None => None,
    };
    let policy: OverLengthPolicy = a.policy.parse()?;
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = a.max_len;
    cfg.policy = policy;
    cfg.template = template;
    cfg.add_special_tokens = false;
    let samples = seal_data::read_jsonl_samples(&a.file)?;
    let t0 = Instant::now();
    let (data, hit) = match &a.cache {
        Some(dir) => {
            let (d, hit, _) = tokenize_cached(dir, &tok, &samples, &cfg)?;
            (d, hit)
        }
        None => (tokenize_samples(&tok, &samples, &cfg)?, false),
    };
    let secs = t0.elapsed().as_secs_f64();
    outln!("{}", data.summary);
    outln!(
        "{:.2} s{} ({:.0} samples/s)",
        secs,
        if hit { ", from cache" } else { "" },
        samples.len() as f64 / secs.max(1e-9)
    );
    let lengths = data.lengths();
    for (name, bucket) in [
        ("random batches", None),
        ("length-bucketed", Some(a.bucket_batches)),
    ] {
        let sampler = BatchSampler::new(lengths.clone(), a.batch_size, 0, bucket)?;
        let st = padding_stats(&lengths, &sampler.epoch(0));
        outln!(
            "padding fraction, {name} (batch {}): {:.3}",
            a.batch_size,
            st.fraction()
        );
    }
    outln!("padding fraction, packed: 0.000");
    Ok(())
}
