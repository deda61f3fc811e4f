//! `seal select`: turn a ranker (or a baseline rule) into the kept sample ids,
//! with a scored JSONL to audit what was cut. See `docs/selection.md`.

use anyhow::{bail, Context, Result};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig};
use seal_data::{Format, ReadOptions, Sample};
use seal_model::{LoadOptions, Pretrained};
use seal_select::check::{FingerprintCheck, TOKENS_FINGERPRINT_PREFIX};
use seal_select::dsir::{sample_text, Dsir};
use seal_select::loss::{dataset_nll, LossBased};
use seal_select::output::{write_kept_ids, write_scored_jsonl, Summary};
use seal_select::ranker::RankerScores;
use seal_select::rules::*;
use seal_select::similarity::{
    anchor_scores, features, AnchorSimilarity, FeatureConfig, FeatureKind,
};
use seal_select::{Budget, SelectionInput};
use std::path::PathBuf;
use tch::Kind;

/// Rule names accepted by `--rule`.
const RULES: &str = "top-p, top-k, threshold, soft, full, random, stratified, dsir, safeinstr, \
                     loss, grad-sim, rep-sim, mixed, oracle";

/// Arguments of `seal select`.
#[derive(clap::Args)]
pub struct Args {
    /// Selection rule: top-p, top-k, threshold, soft (keep all, ranker
    /// weights), full, random, stratified (by source), dsir, safeinstr,
    /// loss (aligned model's response NLL), grad-sim / rep-sim (He et al.'s
    /// gradient / representation similarity to harmful and safe anchors),
    /// mixed (λ-mixed objective marker),
    /// oracle (drop ground-truth harmful; benchmarks only).
    #[arg(long, default_value = "top-p")]
    pub rule: String,
    /// Ranker directory (`seal rank` or `seal import-selector` output):
    /// scores for top-p, top-k, threshold and soft.
    #[arg(long)]
    pub ranker: Option<PathBuf>,
    /// Fine-tuning samples (project JSONL): checked against the ranker's ids
    /// and fingerprint; gives sources, labels and text to rules and outputs.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Fraction kept by top-p, random, stratified, dsir and loss, in (0, 1].
    #[arg(long, default_value_t = DEFAULT_TOP_P, value_parser = super::args::fraction)]
    pub p: f64,
    /// Number kept: required by top-k; overrides --p for the other budgeted rules.
    #[arg(long, value_parser = super::args::positive_usize)]
    pub k: Option<usize>,
    /// Smallest kept score (threshold rule).
    #[arg(long, allow_hyphen_values = true, value_parser = super::args::finite_f64)]
    pub threshold: Option<f64>,
    /// Seed of random, stratified (without a ranker), dsir and safeinstr.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// λ of the mixed objective, in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = super::args::unit_f64)]
    pub lambda: f64,
    /// DSIR target samples (project JSONL).
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// DSIR minimum example length in words (0: none).
    #[arg(long, default_value_t = 0)]
    pub min_len: usize,
    /// DSIR: plain top-k of the importance weights instead of Gumbel resampling.
    #[arg(long)]
    pub no_gumbel: bool,
    /// SafeInstr safety demonstrations.
    #[arg(long)]
    pub safe_demos: Option<PathBuf>,
    /// Format of --safe-demos (seal, alpaca, ...; see `seal data`).
    #[arg(long, default_value = "seal")]
    pub safe_format: String,
    /// Number of safety demonstrations added (default: all).
    #[arg(long, value_parser = super::args::positive_usize)]
    pub safe_count: Option<usize>,
    /// grad-sim / rep-sim: harmful anchors (harmful requests with compliant
    /// answers; project JSONL), disjoint from the dataset.
    #[arg(long)]
    pub harmful_anchors: Option<PathBuf>,
    /// grad-sim / rep-sim: safe anchors (harmful requests with refusals, e.g.
    /// the benchmark's safe.jsonl), disjoint from the dataset.
    #[arg(long)]
    pub safe_anchors: Option<PathBuf>,
    /// grad-sim / rep-sim: response tokens the features look at (the first).
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub anchor_tokens: usize,
    /// grad-sim: width of the gradient sketch.
    #[arg(long, default_value_t = 8192, value_parser = super::args::positive_usize)]
    pub sketch_dims: usize,
    /// rep-sim: hidden-state layer (1-based block; default: the last).
    #[arg(long)]
    pub feature_layer: Option<usize>,
    /// HF model directory: the loss, grad-sim and rep-sim rules' model, and the tokeniser that
    /// verifies a ranker's token fingerprint.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Maximum tokens per sample when tokenising (as given to `seal rank`).
    #[arg(long, default_value_t = 512, value_parser = super::args::positive_usize)]
    pub max_len: usize,
    /// Rows per forward pass (loss rule).
    #[arg(long, default_value_t = 8, value_parser = super::args::positive_usize)]
    pub batch: usize,
    /// Device of the loss rule: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output: kept ids, one per line, in dataset order (then SafeInstr's
    /// added ids).
    #[arg(long)]
    pub out: PathBuf,
    /// Output: one JSON line per sample (id, source, label, score, rank, kept).
    #[arg(long)]
    pub scored: Option<PathBuf>,
    /// Output: JSON summary (counts, objective, kept-set hash).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Output: the kept samples (and added ones) as project JSONL; needs --dataset.
    #[arg(long)]
    pub out_dataset: Option<PathBuf>,
}

fn budget(a: &Args) -> Budget {
    a.k.map_or(Budget::Fraction(a.p), Budget::Count)
}

fn read_jsonl(path: &PathBuf, what: &str) -> Result<Vec<Sample>> {
    seal_data::read_jsonl_samples(path)
        .with_context(|| format!("reading {what} {}", path.display()))
}

/// Runs `seal select`.
pub fn run(a: Args) -> Result<()> {
    let ranker = a
        .ranker
        .as_deref()
        .map(|d| {
            RankerScores::load(d).with_context(|| format!("loading the ranker {}", d.display()))
        })
        .transpose()?;
    let mut samples = match &a.dataset {
        Some(p) => Some(read_jsonl(p, "the dataset")?),
        None => None,
    };
    if a.out_dataset.is_some() && samples.is_none() {
        bail!("--out-dataset needs --dataset");
    }
    for (flag, path) in [
        ("--out", Some(&a.out)),
        ("--scored", a.scored.as_ref()),
        ("--summary", a.summary.as_ref()),
        ("--out-dataset", a.out_dataset.as_ref()),
    ] {
        if let Some(p) = path {
            seal_data::fsutil::check_output_file(p).context(flag)?;
        }
    }
    let mut tcfg = TokenizeConfig::default();
    tcfg.max_len = a.max_len;

    // A ranker must belong to the dataset it is applied to.
    if let (Some(r), Some(s), Some(path)) = (&ranker, &mut samples, &a.dataset) {
        let dataset = path.display().to_string();
        let token_fp = r.fingerprint.starts_with(TOKENS_FINGERPRINT_PREFIX);
        let check = match (&a.model, token_fp) {
            (Some(model), true) => {
                // The ranker was trained on the tokenised dataset: samples
                // too long for --max-len were left out there too.
                let tok = seal_data::TextTokenizer::from_dir(model)
                    .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
                let data = tokenize_samples(&tok, s, &tcfg).context("tokenising the dataset")?;
                let ids: Vec<String> = data.samples.iter().map(|t| t.id.clone()).collect();
                let fp = seal_bilevel::dataset_fingerprint(&data.samples);
                let check = r.check_dataset(&dataset, &ids, Some(&fp))?;
                let dropped = s.len() - ids.len();
                if dropped > 0 {
                    errln!(
                        "{dropped} of {} dataset samples are longer than --max-len {} and were \
                         not ranked; they are left out",
                        s.len(),
                        a.max_len
                    );
                    let keep: std::collections::HashSet<&str> =
                        ids.iter().map(String::as_str).collect();
                    s.retain(|x| keep.contains(x.id.as_str()));
                }
                check
            }
            _ => {
                let ids: Vec<String> = s.iter().map(|x| x.id.clone()).collect();
                r.check_dataset(&dataset, &ids, None)?
            }
        };
        if let FingerprintCheck::NotVerified { reason } = check {
            errln!("warning: sample ids match, fingerprint not verified: {reason}");
        }
    }

    let ids: Vec<String> = match (&ranker, &samples) {
        (Some(r), _) => r.ids.clone(),
        (None, Some(s)) => s.iter().map(|x| x.id.clone()).collect(),
        (None, None) => bail!("give --ranker or --dataset (the samples to select from)"),
    };
    let mut input = SelectionInput::new(&ids)?;
    if let Some(r) = &ranker {
        input = input.with_scores(&r.logits)?.with_weights(&r.weights)?;
    }
    if let Some(s) = &samples {
        input = input.with_samples(s)?;
    }

    let rule: Box<dyn SelectionRule> = match a.rule.as_str() {
        "top-p" => Box::new(TopP { p: a.p }),
        "top-k" => Box::new(TopK {
            k: a.k.context("--rule top-k needs --k")?,
        }),
        "threshold" => Box::new(Threshold {
            threshold: a.threshold.context("--rule threshold needs --threshold")?,
        }),
        "soft" => Box::new(SoftWeights),
        "full" => Box::new(Full),
        "random" => Box::new(Random {
            budget: budget(&a),
            seed: a.seed,
        }),
        "stratified" => Box::new(Stratified {
            budget: budget(&a),
            seed: a.seed,
        }),
        "mixed" => Box::new(MixedObjective { lambda: a.lambda }),
        "oracle" => Box::new(Oracle),
        "dsir" => {
            let path = a.target.as_ref().context("--rule dsir needs --target")?;
            let target = read_jsonl(path, "the DSIR target")?;
            let mut d = Dsir::new(target.iter().map(sample_text).collect(), budget(&a));
            d.seed = a.seed;
            d.min_len = a.min_len;
            d.gumbel = !a.no_gumbel;
            Box::new(d)
        }
        "safeinstr" => {
            let path = a
                .safe_demos
                .as_ref()
                .context("--rule safeinstr needs --safe-demos")?;
            let format: Format = a.safe_format.parse()?;
            let demos = if format == Format::Seal {
                read_jsonl(path, "the safety demonstrations")?
            } else {
                seal_data::read_samples(path, format, &ReadOptions::default())
                    .with_context(|| format!("reading {}", path.display()))?
                    .samples
            };
            Box::new(SafeInstr {
                demos,
                count: a.safe_count,
                seed: a.seed,
            })
        }
        "loss" => {
            let s = samples.as_deref().context("--rule loss needs --dataset")?;
            let (pre, pad) = load_rule_model(&a, "loss")?;
            let scores = dataset_nll(&pre.model, &pre.tokenizer, s, &tcfg, a.batch, pad)?;
            if !scores.unscored.is_empty() {
                errln!(
                    "{} samples do not fit --max-len {} and rank last (first: `{}`)",
                    scores.unscored.len(),
                    a.max_len,
                    scores.unscored[0]
                );
            }
            Box::new(LossBased {
                nll: scores.nll,
                budget: budget(&a),
            })
        }
        name @ ("grad-sim" | "rep-sim") => {
            let s = samples
                .as_deref()
                .with_context(|| format!("--rule {name} needs --dataset"))?;
            Box::new(anchor_rule(&a, name, s, &tcfg)?)
        }
        other => bail!("--rule `{other}`: expected one of {RULES}"),
    };

    let selection = rule.select(&input)?;
    write_kept_ids(&a.out, &selection.kept_ids(&input))?;
    if let Some(p) = &a.scored {
        write_scored_jsonl(p, &input, &selection)?;
    }
    let summary = Summary::new(&input, &selection);
    if let Some(p) = &a.summary {
        summary.write(p)?;
    }
    if let (Some(p), Some(s)) = (&a.out_dataset, &samples) {
        let mut kept: Vec<Sample> = s
            .iter()
            .zip(&selection.entries)
            .filter(|(_, e)| e.kept)
            .map(|(x, _)| x.clone())
            .collect();
        kept.extend(selection.added.iter().cloned());
        seal_data::write_jsonl_samples(p, &kept)?;
    }
    let mut line = format!(
        "{}: kept {} of {} samples",
        selection.rule, summary.kept, summary.total
    );
    if summary.added > 0 {
        line.push_str(&format!(" (+{} added)", summary.added));
    }
    if let Some(h) = summary.cut_by_label.get("harmful") {
        let total_h = h + summary.kept_by_label.get("harmful").copied().unwrap_or(0);
        line.push_str(&format!("; cut {h} of {total_h} harmful"));
    }
    line.push_str(&format!("; kept-set sha256 {}", summary.kept_sha256));
    outln!("{line}");
    outln!("kept ids written to {}", a.out.display());
    Ok(())
}

/// He et al.'s anchor-similarity rule (`grad-sim`, `rep-sim`) on `samples`.
fn anchor_rule(
    a: &Args,
    name: &str,
    samples: &[Sample],
    tcfg: &TokenizeConfig,
) -> Result<AnchorSimilarity> {
    let read_anchors = |flag: &str, path: Option<&PathBuf>| -> Result<Vec<Sample>> {
        let path = path.with_context(|| format!("--rule {name} needs {flag}"))?;
        let anchors = read_jsonl(path, flag)?;
        // An anchor that is also a pool sample would score itself.
        let pool_ids: std::collections::HashSet<&str> =
            samples.iter().map(|x| x.id.as_str()).collect();
        let pool_prompts: std::collections::HashSet<String> = samples
            .iter()
            .filter_map(|x| x.last_user().map(|p| p.trim().to_lowercase()))
            .collect();
        for x in &anchors {
            let same_prompt = x
                .last_user()
                .is_some_and(|p| pool_prompts.contains(&p.trim().to_lowercase()));
            if pool_ids.contains(x.id.as_str()) || same_prompt {
                bail!(
                    "{flag} {}: anchor `{}` is also in the dataset (anchors must be disjoint from the pool)",
                    path.display(),
                    x.id
                );
            }
        }
        Ok(anchors)
    };
    let harmful = read_anchors("--harmful-anchors", a.harmful_anchors.as_ref())?;
    let safe = read_anchors("--safe-anchors", a.safe_anchors.as_ref())?;
    let (mut pre, pad) = load_rule_model(a, name)?;
    let kind = if name == "grad-sim" {
        // LESS-style gradient features: a fresh, seeded LoRA on q and v.
        pre.model
            .add_lora(&seal_model::LoraConfig::default(), a.seed as i64)?;
        FeatureKind::Gradient
    } else {
        FeatureKind::Representation
    };
    let cfg = FeatureConfig {
        kind,
        response_tokens: a.anchor_tokens,
        sketch_dims: a.sketch_dims,
        seed: a.seed,
        layer: a.feature_layer,
    };
    let featurise = |what: &str, xs: &[Sample]| -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let data = tokenize_samples(&pre.tokenizer, xs, tcfg)
            .with_context(|| format!("tokenising {what}"))?;
        let f = features(&pre.model, &data.samples, &cfg, pad)
            .with_context(|| format!("features of {what}"))?;
        Ok((f, data.samples.iter().map(|t| t.index).collect()))
    };
    let (hf, _) = featurise("the harmful anchors", &harmful)?;
    let (sf, _) = featurise("the safe anchors", &safe)?;
    let (pf, index) = featurise("the dataset", samples)?;
    let scores = anchor_scores(&pf, &hf, &sf)?;
    // Samples too long for --max-len rank last.
    let mut harm = vec![f64::INFINITY; samples.len()];
    for (i, x) in index.into_iter().zip(scores) {
        harm[i] = x;
    }
    let unscored = harm.iter().filter(|x| x.is_infinite()).count();
    if unscored > 0 {
        errln!(
            "{unscored} samples do not fit --max-len {} and rank last",
            a.max_len
        );
    }
    Ok(AnchorSimilarity {
        harm,
        budget: budget(a),
        name: name.to_string(),
    })
}

/// The `--model` of a model-based rule (f32 on `--device`) and its padding id.
fn load_rule_model(a: &Args, rule: &str) -> Result<(Pretrained, u32)> {
    let model_dir = a
        .model
        .as_ref()
        .with_context(|| format!("--rule {rule} needs --model"))?;
    let device = seal_model::runtime::parse_device(&a.device)
        .with_context(|| format!("--device `{}`", a.device))?;
    let mut options = LoadOptions::default();
    options.device = device;
    options.kind = Kind::Float;
    let pre = Pretrained::load(model_dir, &options)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    let pad = pre
        .tokenizer
        .pad_token_id()
        .or_else(|| pre.tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);
    Ok((pre, pad))
}
