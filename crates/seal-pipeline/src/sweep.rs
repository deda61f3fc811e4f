//! The λ sweep: ranker quality against the upper-level weight schedule.
//!
//! SEAL's objective weighs the safe loss by λ and the ranker-weighted task
//! loss by 1 − λ (Shen et al. 2025, Eq. 4; the official trainer starts at
//! λ = 1 and lowers it by 0.03 per epoch). At λ = 1 the model never trains on
//! task data, so the memory-efficient ranker orders samples by their loss
//! under a safety-trained model. Only λ < 1 exercises the bilevel coupling:
//! the model then also fits the weighted pool as the ranker learns.
//! [`run_lambda_sweep`] ranks the same pool from the same model at every
//! schedule of [`LambdaSweepConfig::lambdas`] (the pipeline's `[rank]`
//! settings otherwise) and records the ranker's AUROC (benign above
//! harmful) and the harmful samples top-p selection keeps.
//!
//! Results go to `lambda_sweep.json` after every run (so `resume` continues
//! a stopped sweep), `lambda_sweep.md` and `lambda_sweep.svg`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use seal_data::Label;
use seal_eval::plot::{line_plot_svg, PlotText};
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::dose::MeanStd;
use crate::error::{PipelineError, Result};
use crate::run::{mkdir, write_text};
use crate::stages;

/// What [`run_lambda_sweep`] sweeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambdaSweepConfig {
    /// λ in the first epoch, one ranking per value (each decays by the
    /// config's `rank.lambda_decay` per epoch).
    pub lambdas: Vec<f64>,
    /// The registered solver that ranks (`seal`, `seal-full`, ...; see
    /// [`crate::registry::PipelineSolver`]).
    pub solver: String,
    /// A model directory to rank from instead of running the config's
    /// alignment stage (e.g. a cached aligned model).
    #[serde(default)]
    pub start: Option<PathBuf>,
    /// Continue from `lambda_sweep.json` in the output directory; a record
    /// written with other data, ranking settings, precision or `max_len` is
    /// refused.
    pub resume: bool,
}

/// One trained ranker of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// λ in the first epoch.
    pub lambda: f64,
    /// λ of every epoch, as the trainer scheduled it.
    pub lambda_by_epoch: Vec<f64>,
    /// Ranking seed.
    pub seed: u64,
    /// AUROC of the logits, benign above harmful (`None` without both labels).
    pub auroc: Option<f64>,
    /// Harmful samples among the top `select.p` by logit.
    pub harmful_kept: usize,
    /// Samples top-p keeps.
    pub kept: usize,
    /// Ranker steps.
    pub steps: usize,
    /// Wall time of the ranking.
    pub seconds: f64,
}

/// The sweep's record (`lambda_sweep.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambdaSweepResult {
    /// What was swept.
    pub sweep: LambdaSweepConfig,
    /// The pipeline settings used (`[rank]`, `select.p`, seeds, data).
    pub config: PipelineConfig,
    /// Pool size after tokenisation.
    pub pool: usize,
    /// Harmful samples in the pool.
    pub harmful: usize,
    /// Every ranking, in run order.
    pub runs: Vec<SweepRun>,
    /// Wall time of the whole sweep, seconds: of every invocation that
    /// built the record (a resumed sweep adds its own to the recorded one).
    pub seconds: f64,
}

impl crate::run::SweepRecord for LambdaSweepResult {
    fn recorded_config(&self) -> &PipelineConfig {
        &self.config
    }
}

impl LambdaSweepResult {
    /// AUROC (mean ± std over seeds) and mean harmful kept, per λ in sweep
    /// order.
    pub fn summary(&self) -> Vec<(f64, Option<MeanStd>, Option<MeanStd>)> {
        self.sweep
            .lambdas
            .iter()
            .map(|&l| {
                let runs: Vec<&SweepRun> = self.runs.iter().filter(|r| r.lambda == l).collect();
                let aurocs: Vec<f64> = runs.iter().filter_map(|r| r.auroc).collect();
                let kept: Vec<f64> = runs.iter().map(|r| r.harmful_kept as f64).collect();
                (l, MeanStd::of(&aurocs), MeanStd::of(&kept))
            })
            .collect()
    }
}

/// Runs (or, with `resume`, continues) the sweep into `config.out`.
pub fn run_lambda_sweep(
    config: &PipelineConfig,
    sweep: &LambdaSweepConfig,
) -> Result<LambdaSweepResult> {
    let mut clock = crate::run::WallClock::start();
    if sweep.lambdas.is_empty() {
        return Err(PipelineError::config("lambdas", "the sweep needs a λ"));
    }
    if let Some(l) = sweep.lambdas.iter().find(|l| !(0.0..=1.0).contains(*l)) {
        return Err(PipelineError::config(
            "lambdas",
            format!("{l}: expected values in [0, 1]"),
        ));
    }
    let device = crate::run::prepare(config)?;
    let solver = crate::registry::registered_solvers().lookup("solver", &sweep.solver)?;
    let out = config.out.clone();
    mkdir(&out)?;
    let json = out.join("lambda_sweep.json");
    let previous = if sweep.resume {
        crate::run::read_previous(&json, config, |prev: &LambdaSweepResult| {
            prev.config.rank == config.rank
                && prev.config.data == config.data
                && prev.sweep.solver == sweep.solver
        })?
    } else {
        None
    };

    let data = crate::run::load_data(config)?;
    let start_dir =
        crate::run::start_model_dir(config, sweep.start.as_deref(), &data.align, device, &out)?;
    let tokenizer = stages::load(&start_dir, device, config.model.dtype)?.tokenizer;
    let pad = stages::pad_id(&tokenizer);
    let pool = stages::tokenize_pool(&tokenizer, &data.finetune, config.max_len)?;
    let safe = stages::tokenize(&tokenizer, "safe set", &data.safe, config.max_len)?;
    let labels: Vec<Option<Label>> = pool.iter().map(|t| data.finetune[t.index].label).collect();
    let harmful = labels
        .iter()
        .filter(|l| **l == Some(Label::Harmful))
        .count();

    clock.resume_from(previous.as_ref().map(|p| p.seconds));
    let mut result = LambdaSweepResult {
        sweep: sweep.clone(),
        config: config.clone(),
        pool: pool.len(),
        harmful,
        runs: previous.map(|p| p.runs).unwrap_or_default(),
        seconds: 0.0,
    };
    for &seed in &config.seeds {
        for &lambda in &sweep.lambdas {
            if result
                .runs
                .iter()
                .any(|r| r.seed == seed && r.lambda == lambda)
            {
                tracing::info!(seed, lambda, "kept from the previous run");
                continue;
            }
            tracing::info!(seed, lambda, solver = %sweep.solver, "ranking");
            let t0 = Instant::now();
            let mut rank = config.rank.clone();
            rank.lambda = lambda;
            let model = stages::load(&start_dir, device, config.model.dtype)?.model;
            let ranked = stages::rank(
                model,
                stages::RankData {
                    finetune: pool.clone(),
                    safe: safe.clone(),
                    pad,
                },
                solver.as_ref(),
                &rank,
                seed,
                config.progress,
            )?;
            let logits = ranked.ranker.logits_vec()?;
            let auroc = stages::score_auroc(&logits, &labels)?;
            let kept = seal_bilevel::metrics::top_fraction(&logits, config.select.p);
            let harmful_kept = kept
                .iter()
                .filter(|&&i| labels[i] == Some(Label::Harmful))
                .count();
            let schedule = seal_bilevel::LambdaSchedule {
                start: lambda,
                decay_per_epoch: rank.lambda_decay,
            };
            tracing::info!(seed, lambda, ?auroc, harmful_kept, "ranker trained");
            result.runs.push(SweepRun {
                lambda,
                lambda_by_epoch: (0..rank.epochs).map(|e| schedule.at(e)).collect(),
                seed,
                auroc,
                harmful_kept,
                kept: kept.len(),
                steps: ranked.report.steps,
                seconds: t0.elapsed().as_secs_f64(),
            });
            result.seconds = clock.seconds();
            write(&result, &out)?;
        }
    }
    result.seconds = clock.seconds();
    write(&result, &out)?;
    Ok(result)
}

fn write(result: &LambdaSweepResult, out: &Path) -> Result<()> {
    seal_model::weights::write_json_atomic(&out.join("lambda_sweep.json"), result)?;
    write_text(&out.join("lambda_sweep.md"), &markdown(result))?;
    if let Some(svg) = plot(result)? {
        write_text(&out.join("lambda_sweep.svg"), &svg)?;
    }
    Ok(())
}

/// AUROC against λ: the mean over seeds, and each seed.
fn plot(result: &LambdaSweepResult) -> Result<Option<String>> {
    let mean: Vec<(f64, f64)> = result
        .summary()
        .into_iter()
        .filter_map(|(l, a, _)| Some((l, a?.mean)))
        .collect();
    if mean.is_empty() {
        return Ok(None);
    }
    let mut seeds: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    if result.config.seeds.len() > 1 {
        for &seed in &result.config.seeds {
            let mut pts: Vec<(f64, f64)> = result
                .runs
                .iter()
                .filter(|r| r.seed == seed)
                .filter_map(|r| Some((r.lambda, r.auroc?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            seeds.push((format!("seed {seed}"), pts));
        }
    }
    let mut mean = mean;
    mean.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series: Vec<(&str, &[(f64, f64)])> = vec![("mean", &mean)];
    series.extend(seeds.iter().map(|(n, p)| (n.as_str(), p.as_slice())));
    let text = PlotText::new(
        &format!(
            "Ranker AUROC against λ ({}, {} epoch{})",
            result.sweep.solver,
            result.config.rank.epochs,
            if result.config.rank.epochs == 1 {
                ""
            } else {
                "s"
            }
        ),
        "λ in the first epoch (weight of the safe loss)",
        "AUROC (benign above harmful)",
    );
    Ok(Some(line_plot_svg(&text, &series)?))
}

/// The report: one row per λ, mean ± std over seeds.
pub fn markdown(result: &LambdaSweepResult) -> String {
    let r = &result.config.rank;
    let mut s = String::new();
    s.push_str("# Ranker quality against the λ schedule\n\n");
    s.push_str(&format!(
        "Solver `{}`; pool {} samples ({} harmful); {} epoch{} at batch {}, model lr {}, \
         ranker {} at {}, λ decay {} per epoch; seeds {:?}; top-p {}.\n\n",
        result.sweep.solver,
        result.pool,
        result.harmful,
        r.epochs,
        if r.epochs == 1 { "" } else { "s" },
        r.batch,
        r.lr,
        r.ranker_optimizer,
        r.ranker_lr,
        r.lambda_decay,
        result.config.seeds,
        result.config.select.p,
    ));
    s.push_str(
        "| λ (first epoch) | λ by epoch | AUROC | harmful kept by top-p | s per ranking |\n",
    );
    s.push_str("|---|---|---|---|---|\n");
    for (lambda, auroc, kept) in result.summary() {
        let runs: Vec<&SweepRun> = result.runs.iter().filter(|r| r.lambda == lambda).collect();
        let by_epoch = runs
            .first()
            .map(|r| {
                r.lambda_by_epoch
                    .iter()
                    .map(|l| format!("{l:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "–".into());
        let fmt = |m: Option<MeanStd>, digits: usize| match m {
            Some(m) if m.n > 1 => format!("{:.*} ± {:.*}", digits, m.mean, digits, m.std),
            Some(m) => format!("{:.*}", digits, m.mean),
            None => "–".into(),
        };
        let secs = MeanStd::of(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
        s.push_str(&format!(
            "| {lambda} | {by_epoch} | {} | {} of {} | {} |\n",
            fmt(auroc, 3),
            fmt(kept, 1),
            result.harmful,
            fmt(secs, 0),
        ));
    }
    s.push_str(
        "\nAt λ = 1 the model never trains on the pool; below it, the model also fits the \
         ranker-weighted pool, which is the coupling the bilevel method relies on.\n",
    );
    s
}
