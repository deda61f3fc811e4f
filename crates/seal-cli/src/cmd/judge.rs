//! `seal judge train`: fits the trained harm/refusal judge on frozen-LM
//! features of human-labelled pairs; `seal judge eval`: its agreement with
//! labels, beside the keyword rule's. See `docs/evaluation.md`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use seal_data::fsutil::StagingDir;
use seal_eval::classifier::{
    self, BaseModelRef, HeadConfig, JudgeCard, LabelledSet, TrainOptions, CARD_FILE,
};
use seal_eval::features::{self, ExtractStats, FeatureCache, FeatureSpec, Pooling};
use seal_eval::refusal::RefusalMatcher;

/// `seal judge` subcommands.
#[derive(clap::Subcommand)]
pub enum JudgeCommand {
    /// Train the harm/refusal judge on labelled (prompt, response) pairs.
    Train(TrainArgs),
    /// Agreement of a trained judge and of the keyword rule with labels.
    Eval(EvalArgs),
}

/// Where features are cached and which model computes them.
#[derive(clap::Args)]
pub struct BaseArgs {
    /// Feature cache directory (default: $SEAL_CACHE_DIR/judge-features, else
    /// target/seal-cache/judge-features of this workspace).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_cache: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch CPU threads (default: libtorch's choice).
    #[arg(long, value_parser = super::args::threads)]
    pub threads: Option<i32>,
}

/// Arguments of `seal judge train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// The frozen base model (HF directory, e.g. the imported SmolLM2).
    #[arg(long)]
    pub base: PathBuf,
    /// Label files (CSV, JSON or JSONL; see docs/evaluation.md). Default:
    /// Safe-RLHF mini, the five XSTest v2 completion files, the
    /// JailbreakBench artifacts, pure_bad and BeaverTails unsafe under --data.
    #[arg(long, num_args = 1..)]
    pub labels: Vec<PathBuf>,
    /// Without --labels, train on Safe-RLHF and XSTest only: leave out the
    /// further sources of --data that are used by default (the
    /// JailbreakBench artifacts, with harm labels from its judge; Qi et
    /// al.'s harmful demonstrations; BeaverTails unsafe answers; see
    /// docs/evaluation.md).
    #[arg(long)]
    pub no_extra_sources: bool,
    /// The shared data directory the default label files are read from.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Blocks whose hidden states are read (comma-separated, 1-based).
    #[arg(long, value_delimiter = ',', default_values_t = FeatureSpec::default().layers)]
    pub layers: Vec<usize>,
    /// Poolings: mean (over the response), last (end-of-turn token).
    #[arg(long, value_delimiter = ',', default_value = "mean,last")]
    pub pooling: Vec<String>,
    /// How pairs are shown to the model: chat (prompt and response as a
    /// conversation) or judge-prompt (one turn asking for a verdict).
    #[arg(long, default_value = "chat", value_parser = ["chat", "judge-prompt"])]
    pub framing: String,
    /// Prompt tokens kept (cut from the left).
    #[arg(long, default_value_t = FeatureSpec::default().max_prompt_tokens, value_parser = super::args::positive_usize)]
    pub max_prompt_tokens: usize,
    /// Response tokens kept (cut on the right).
    #[arg(long, default_value_t = FeatureSpec::default().max_response_tokens, value_parser = super::args::positive_usize)]
    pub max_response_tokens: usize,
    /// Token budget of one feature batch.
    #[arg(long, default_value_t = FeatureSpec::default().batch_tokens, value_parser = super::args::positive_usize)]
    pub batch_tokens: usize,
    /// Hidden units of the head (0 = logistic regression).
    #[arg(long, default_value_t = HeadConfig::default().hidden)]
    pub hidden: usize,
    /// Maximum epochs of head training.
    #[arg(long, default_value_t = HeadConfig::default().epochs, value_parser = super::args::positive_usize)]
    pub epochs: usize,
    /// Head learning rate.
    #[arg(long, default_value_t = HeadConfig::default().lr, value_parser = super::args::positive_f64)]
    pub lr: f64,
    /// Head weight decay.
    #[arg(long, default_value_t = HeadConfig::default().weight_decay, value_parser = super::args::non_negative_f64)]
    pub weight_decay: f64,
    /// Head dropout.
    #[arg(long, default_value_t = HeadConfig::default().dropout, value_parser = super::args::unit_f64)]
    pub dropout: f64,
    /// Seed of the head.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Share of prompts held out (fixed hash split by prompt).
    #[arg(long, default_value_t = 0.2, value_parser = super::args::fraction)]
    pub test_fraction: f64,
    /// The judge's name in reports.
    #[arg(long, default_value = "classifier-smollm2")]
    pub name: String,
    /// Model and cache options.
    #[command(flatten)]
    pub base_args: BaseArgs,
    /// Output directory: judge.json, judge.safetensors, agreement.md,
    /// train_log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty --out.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `seal judge eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A judge directory written by `seal judge train`.
    #[arg(long)]
    pub judge: PathBuf,
    /// The judge's base model (default: the path recorded in judge.json);
    /// its fingerprint must match.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Label files (CSV, JSON or JSONL).
    #[arg(long, required = true, num_args = 1..)]
    pub labels: Vec<PathBuf>,
    /// Which pairs: `auto` (a file the judge was trained on contributes its
    /// test split only, any other file every pair), `test` or `all`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "test", "all"])]
    pub split: String,
    /// Model and cache options.
    #[command(flatten)]
    pub base_args: BaseArgs,
    /// Output directory: agreement.md, agreement.json, verdicts.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty --out.
    #[arg(long)]
    pub force: bool,
}

/// Runs `seal judge`.
pub fn run(cmd: JudgeCommand) -> Result<()> {
    match cmd {
        JudgeCommand::Train(a) => train(a),
        JudgeCommand::Eval(a) => eval(a),
    }
}

fn parse_pooling(names: &[String]) -> Result<Vec<Pooling>> {
    names
        .iter()
        .map(|n| match n.trim() {
            "mean" => Ok(Pooling::ResponseMean),
            "last" => Ok(Pooling::Last),
            other => bail!("--pooling: `{other}` is not mean or last"),
        })
        .collect()
}

fn cache_of(a: &BaseArgs) -> Option<FeatureCache> {
    if a.no_cache {
        return None;
    }
    Some(FeatureCache::new(a.cache.clone().unwrap_or_else(|| {
        seal_model::locate::cache_dir().join("judge-features")
    })))
}

fn read_sets(files: &[PathBuf]) -> Result<Vec<LabelledSet>> {
    files
        .iter()
        .map(|f| LabelledSet::read(f).with_context(|| format!("--labels {}", f.display())))
        .collect()
}

/// Features of every set, with a progress bar per set and a summary line.
fn features_of(
    pre: &seal_model::Pretrained,
    sets: &[LabelledSet],
    spec: &FeatureSpec,
    fingerprint: &str,
    cache: Option<&FeatureCache>,
) -> Result<(Vec<tch::Tensor>, ExtractStats)> {
    let mut total = ExtractStats::default();
    let mut out = Vec::new();
    for set in sets {
        let key = FeatureCache::key(fingerprint, spec, &set.sha256);
        let bar = indicatif::ProgressBar::new(set.pairs.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {elapsed_precise} [{bar:30}] {pos}/{len} pairs {per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(
            set.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let queries = set.queries();
        let (blocks, stats) = features::cached_blocks(
            &pre.model,
            &pre.tokenizer,
            &queries,
            spec,
            cache.map(|c| (c, key.as_str())),
            &mut |done, _| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        match &stats {
            Some(s) => {
                tracing::info!(
                    file = %set.path.display(),
                    pairs = s.pairs,
                    tokens = s.tokens,
                    seconds = format!("{:.1}", s.seconds),
                    pairs_per_s = format!("{:.2}", s.pairs_per_second()),
                    tokens_per_s = format!("{:.0}", s.tokens_per_second()),
                    "features computed"
                );
                total.add(s);
            }
            None => tracing::info!(file = %set.path.display(), "features read from the cache"),
        }
        out.push(features::assemble(&blocks, spec)?);
    }
    Ok((out, total))
}

fn train(a: TrainArgs) -> Result<()> {
    let files = if a.labels.is_empty() {
        seal_data::judgments::default_label_files(&a.data)
    } else {
        a.labels.clone()
    };
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let mut sets = read_sets(&files)?;
    if a.labels.is_empty() && !a.no_extra_sources {
        for (f, defaults) in seal_data::judgments::extra_label_files(&a.data) {
            sets.push(
                LabelledSet::read_with(&f, defaults)
                    .with_context(|| format!("{} (a default label source)", f.display()))?,
            );
        }
    }
    let spec = FeatureSpec {
        layers: a.layers.clone(),
        pooling: parse_pooling(&a.pooling)?,
        max_prompt_tokens: a.max_prompt_tokens,
        max_response_tokens: a.max_response_tokens,
        batch_tokens: a.batch_tokens,
        framing: if a.framing == "judge-prompt" {
            features::Framing::JudgePrompt
        } else {
            features::Framing::Chat
        },
    };
    let device = super::common::runtime(a.base_args.threads, &a.base_args.device)?;
    let pre = super::common::load_model(&a.base, device, seal_model::WeightDtype::F32)?;
    spec.validate(pre.model.num_layers()).context("--layers")?;
    let fingerprint = features::base_model_fingerprint(&a.base)?;
    let cache = cache_of(&a.base_args);
    let (x, stats) = features_of(&pre, &sets, &spec, &fingerprint, cache.as_ref())?;
    let opts = TrainOptions {
        name: a.name.clone(),
        features: spec,
        head: HeadConfig {
            hidden: a.hidden,
            epochs: a.epochs,
            lr: a.lr,
            weight_decay: a.weight_decay,
            dropout: a.dropout,
            seed: a.seed,
            ..HeadConfig::default()
        },
        test_fraction: a.test_fraction,
    };
    let t = std::time::Instant::now();
    let base = BaseModelRef {
        fingerprint,
        path: a.base.display().to_string(),
    };
    let trained = classifier::train_judge(&sets, &x, base, &opts)?;
    tracing::info!(
        seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
        epochs = trained.card.epochs_run,
        best_epoch = trained.card.best_epoch,
        "head trained"
    );
    let staging = StagingDir::new(&a.out)?;
    classifier::save_judge(staging.path(), &trained.card, &trained.head)?;
    let table = classifier::agreement_markdown(&trained.card.metrics);
    seal_model::weights::write_atomic(
        &staging.path().join("agreement.md"),
        agreement_document(&trained.card, &table, Some(&stats)).as_bytes(),
    )?;
    seal_model::weights::write_jsonl_atomic(&staging.path().join("train_log.jsonl"), &trained.log)?;
    let out = staging.commit()?;
    outln!("{table}");
    outln!("judge written to {}", out.display());
    Ok(())
}

/// agreement.md: the table and how it was made.
fn agreement_document(card: &JudgeCard, table: &str, stats: Option<&ExtractStats>) -> String {
    let mut s = format!(
        "# Judge agreement\n\nJudge `{}` ({} on layers {:?}, pooling {:?}, prompt ≤ {} and response ≤ {} tokens; head: {} hidden units, best epoch {} of {}). Split: salt `{}`, {:.0}% of prompts held out.\n\n{table}",
        card.name,
        card.base_model.fingerprint,
        card.features.layers,
        card.features.pooling,
        card.features.max_prompt_tokens,
        card.features.max_response_tokens,
        card.head.hidden,
        card.best_epoch,
        card.epochs_run,
        card.split.salt,
        100.0 * card.split.test_fraction,
    );
    if let Some(st) = stats.filter(|s| s.pairs > 0) {
        s.push_str(&format!(
            "\nFeature extraction: {} pairs, {} tokens ({} with padding) in {:.1} s: {:.2} pairs/s, {:.0} tokens/s.\n",
            st.pairs,
            st.tokens,
            st.padded_tokens,
            st.seconds,
            st.pairs_per_second(),
            st.tokens_per_second()
        ));
    }
    s
}

fn eval(a: EvalArgs) -> Result<()> {
    seal_data::fsutil::check_output_dir(&a.out, a.force).context("--out")?;
    let (card, head) = classifier::load_judge_files(&a.judge)
        .with_context(|| format!("--judge {}", a.judge.display()))?;
    let base: PathBuf = a
        .base
        .clone()
        .unwrap_or_else(|| PathBuf::from(&card.base_model.path));
    let sets = read_sets(&a.labels)?;
    let fingerprint = features::base_model_fingerprint(&base)
        .with_context(|| format!("base model {}", base.display()))?;
    classifier::check_base_model(&card, &base, &fingerprint)?;
    let device = super::common::runtime(a.base_args.threads, &a.base_args.device)?;
    let pre = super::common::load_model(&base, device, seal_model::WeightDtype::F32)?;
    let cache = cache_of(&a.base_args);
    let (x, stats) = features_of(&pre, &sets, &card.features, &fingerprint, cache.as_ref())?;
    let probs = x
        .iter()
        .map(|x| classifier::probabilities_of(&head, x))
        .collect::<seal_eval::Result<Vec<_>>>()?;
    let trained_on = |set: &LabelledSet| card.split.files.iter().any(|f| f.sha256 == set.sha256);
    let matcher = RefusalMatcher::gcg();
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for (set, p) in sets.iter().zip(&probs) {
        let split = match a.split.as_str() {
            "test" => Some(seal_data::judgments::Split::Test),
            "all" => None,
            _ if trained_on(set) => Some(seal_data::judgments::Split::Test),
            _ => None,
        };
        if split.is_some() && a.split == "auto" {
            errln!(
                "{}: the judge was trained on this file; only its test split is scored",
                set.path.display()
            );
        }
        let one = std::slice::from_ref(set);
        let mut r =
            classifier::agreement_rows(one, std::slice::from_ref(p), &card, &matcher, split)?;
        for row in &mut r {
            row.data = format!("{} ({})", row.data, file_name(&set.path));
        }
        rows.extend(r);
        for (pair, pr) in set.pairs.iter().zip(p) {
            verdicts.push(serde_json::json!({
                "id": pair.id,
                "harmful_label": pair.harmful,
                "refusal_label": pair.refusal,
                "p_harmful": pr[0],
                "p_refusal": pr[1],
                "keyword_refusal": matcher.find(&pair.response).is_some(),
            }));
        }
    }
    let table = classifier::agreement_markdown(&rows);
    let staging = StagingDir::new(&a.out)?;
    let dir = staging.path();
    seal_model::weights::write_atomic(
        &dir.join("agreement.md"),
        agreement_document(&card, &table, Some(&stats)).as_bytes(),
    )?;
    seal_model::weights::write_json_atomic(&dir.join("agreement.json"), &rows)?;
    seal_model::weights::write_jsonl_atomic(&dir.join("verdicts.jsonl"), &verdicts)?;
    let out = staging.commit()?;
    outln!("{table}");
    outln!("written to {}", out.join("agreement.md").display());
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks that `dir` holds a judge (for `seal eval --judge classifier:DIR`).
pub fn check_judge_dir(dir: &Path) -> Result<()> {
    if !dir.join(CARD_FILE).is_file() {
        bail!(
            "{}: no {CARD_FILE} (not a judge written by `seal judge train`)",
            dir.display()
        );
    }
    Ok(())
}
