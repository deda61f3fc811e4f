//! The whole pipeline: align → (per seed) rank → select → fine-tune →
//! evaluate, then the report.

use crate::config::{PipelineConfig, Solver};
use crate::error::{PipelineError, Result};
use crate::registry::registered_methods;
use crate::report;
use crate::stages::{self, EvalSets, MethodInputs};
use seal_data::benchmark::Benchmark;
use seal_data::{Label, Sample};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

pub use crate::results::{MethodRun, PipelineResult, RankerRun};

/// Reads the data of a config: the benchmark directory or the embedded
/// default; evaluation sets cut to `eval_limit`.
pub fn load_data(config: &PipelineConfig) -> Result<Benchmark> {
    let mut b = match &config.data.dir {
        Some(dir) => Benchmark::read(dir)?,
        None => seal_data::embedded::embedded_default()?,
    };
    if let Some(n) = config.data.eval_limit {
        b.eval_safety.truncate(n);
        b.eval_benign.truncate(n);
        b.eval_utility.truncate(n);
    }
    if b.finetune.is_empty() || b.safe.is_empty() {
        return Err(PipelineError::stage(
            "data",
            "the fine-tuning pool and the safe set must not be empty",
        ));
    }
    Ok(b)
}

/// The record a sweep left in `json`, for `resume` (`None` when there is
/// none); `same_settings` says whether it was written for the settings of
/// this run, and a record for other settings is refused.
pub(crate) fn read_previous<T: serde::de::DeserializeOwned>(
    json: &Path,
    same_settings: impl FnOnce(&T) -> bool,
) -> Result<Option<T>> {
    if !json.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(json).map_err(|e| PipelineError::io(json, e))?;
    let prev: T = serde_json::from_str(&text)
        .map_err(|e| PipelineError::stage("resume", format!("{}: {e}", json.display())))?;
    if !same_settings(&prev) {
        return Err(PipelineError::stage(
            "resume",
            format!(
                "{} was written for other data or settings; use another output directory",
                json.display()
            ),
        ));
    }
    Ok(Some(prev))
}

/// The model a sweep starts from: `given`, or the config's base model
/// (imported into `out/cache` when it is a GGUF), aligned on `align` when
/// the config's alignment stage is on.
pub(crate) fn start_model_dir(
    config: &PipelineConfig,
    given: Option<&Path>,
    align: &[Sample],
    device: Device,
    out: &Path,
) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let cache = out.join("cache");
    let base = stages::resolve_model(
        config.model.dir.as_deref(),
        config.model.gguf.as_deref(),
        &cache,
    )?;
    if !config.align.enabled {
        return Ok(base);
    }
    Ok(stages::align(
        &base,
        align,
        &config.align,
        config.max_len,
        device,
        &cache,
        config.progress,
    )?
    .dir)
}

pub(crate) fn write_text(path: &Path, text: &str) -> Result<()> {
    seal_model::weights::write_atomic(path, text.as_bytes())?;
    Ok(())
}

pub(crate) fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| PipelineError::io(path, e))
}

/// How [`run_with`] treats an output directory that already holds results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Continue the run recorded in `OUT/results.json`: the reference
    /// evaluations, every ranker and every (seed, method) it holds are kept
    /// (rankers re-read from `seed-N/rank-SOLVER/`), the rest is run. The
    /// recorded configuration must equal this one apart from `seeds`,
    /// `threads`, `progress` and `out`, and the pool must be the same; otherwise
    /// the run stops with an error rather than mixing results.
    pub resume: bool,
}

/// Runs the pipeline of `config` and writes `report.md`, `report.json`,
/// `results.json` and the figures into `config.out`.
pub fn run(config: &PipelineConfig) -> Result<PipelineResult> {
    run_with(config, &RunOptions::default())
}

/// The configuration with the settings that may change between a run and
/// its resumption cleared.
fn resumable_image(config: &PipelineConfig) -> Result<String> {
    let mut c = config.clone();
    // The directory itself may have been moved or copied, and the same
    // input may be named by a relative or an absolute path.
    c.out = PathBuf::new();
    for path in [&mut c.data.dir, &mut c.model.dir, &mut c.model.gguf]
        .into_iter()
        .flatten()
    {
        if let Ok(p) = std::fs::canonicalize(&*path) {
            *path = p;
        }
    }
    c.seeds.clear();
    c.threads = None;
    c.progress = false;
    c.to_toml()
}

/// The recorded results of `out`, when resuming and they exist and match.
fn previous_results(config: &PipelineConfig, out: &Path) -> Result<Option<PipelineResult>> {
    let path = out.join("results.json");
    if !path.is_file() {
        tracing::info!("resume: no {} yet; starting afresh", path.display());
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
    let prev: PipelineResult = serde_json::from_str(&text)
        .map_err(|e| PipelineError::stage("resume", format!("{}: {e}", path.display())))?;
    let (was, now) = (resumable_image(&prev.config)?, resumable_image(config)?);
    if was != now {
        let diff = was
            .lines()
            .zip(now.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("recorded `{a}`, now `{b}`"))
            .unwrap_or_else(|| "the settings differ".into());
        return Err(PipelineError::stage(
            "resume",
            format!(
                "{} was written with another configuration ({diff}); use another output directory",
                path.display()
            ),
        ));
    }
    Ok(Some(prev))
}

/// The logits of a ranker that `results.json` records, read back from its
/// directory and checked against the pool size.
fn recorded_logits(dir: &Path, seed: u64, solver: Solver, pool: usize) -> Result<Vec<f64>> {
    let logits = seal_bilevel::Ranker::load(dir)
        .and_then(|k| k.logits_vec())
        .map_err(|e| {
            PipelineError::stage(
                "resume",
                format!(
                    "results.json records ranker {} of seed {seed}, but it cannot be read back: {e}",
                    solver.name()
                ),
            )
        })?;
    if logits.len() != pool {
        return Err(PipelineError::stage(
            "resume",
            format!(
                "{}: {} logits for a pool of {pool}",
                dir.display(),
                logits.len()
            ),
        ));
    }
    Ok(logits)
}

/// Validates `config`, sets up libtorch (allocator, threads) and returns
/// its device: the start of every run a configuration drives.
pub(crate) fn prepare(config: &PipelineConfig) -> Result<Device> {
    config.validate()?;
    seal_model::runtime::tune_allocator();
    if let Some(t) = config.threads {
        tch::set_num_threads(t);
    }
    seal_model::runtime::parse_device(&config.device).ok_or_else(|| {
        PipelineError::config(
            "device",
            format!("`{}`: expected cpu, cuda, cuda:N or auto", config.device),
        )
    })
}

/// Runs the pipeline of `config` with `options` (see [`RunOptions`]).
pub fn run_with(config: &PipelineConfig, options: &RunOptions) -> Result<PipelineResult> {
    let start = Instant::now();
    let device = prepare(config)?;
    // Every name is resolved before anything is written or computed.
    let registry = registered_methods();
    let methods = registry.resolve(&config.select.methods)?;
    let solvers = registry.solvers(&config.select.methods)?;
    let out = config.out.clone();
    mkdir(&out)?;
    // Checked before anything is written, so a refused resume leaves the
    // recorded run (its config.toml included) as it was.
    let previous = if options.resume {
        previous_results(config, &out)?
    } else {
        None
    };
    write_text(&out.join("config.toml"), &config.to_toml()?)?;
    let cache = out.join("cache");

    let data = load_data(config)?;
    let base = stages::resolve_model(
        config.model.dir.as_deref(),
        config.model.gguf.as_deref(),
        &cache,
    )?;
    let sets = EvalSets {
        safety: &data.eval_safety,
        benign: &data.eval_benign,
        utility: &data.eval_utility,
        safety_as_judged: None,
    };
    // Loaded once: its base model and fingerprint serve every evaluation.
    let classifier = stages::load_judge(&config.eval, device)?;
    let judge = classifier.as_ref().map(|c| c as &dyn seal_eval::Judge);

    let base_eval = match &previous {
        Some(p) => p.base_eval.clone(),
        None => {
            tracing::info!("evaluating the original model {}", base.display());
            let original = stages::load(&base, device)?;
            let base_eval_dir = out.join("eval-original");
            mkdir(&base_eval_dir)?;
            stages::evaluate(
                &original.model,
                &original.tokenizer,
                &sets,
                &config.eval,
                config.max_len,
                &base_eval_dir,
                judge,
            )?
        }
    };

    let (aligned, aligned_eval, start_dir) = if config.align.enabled {
        let a = stages::align(
            &base,
            &data.align,
            &config.align,
            config.max_len,
            device,
            &cache,
            config.progress,
        )?;
        let d = a.dir.clone();
        if let Some((pa, pe)) = previous
            .as_ref()
            .and_then(|p| Some((p.aligned.clone()?, p.aligned_eval.clone()?)))
        {
            (Some(pa), Some(pe), d)
        } else {
            let m = stages::load(&a.dir, device)?;
            let dir = out.join("eval-aligned");
            mkdir(&dir)?;
            if !a.log.is_empty() {
                seal_model::weights::write_jsonl_atomic(&dir.join("align_log.jsonl"), &a.log)?;
            }
            let e = stages::evaluate(
                &m.model,
                &m.tokenizer,
                &sets,
                &config.eval,
                config.max_len,
                &dir,
                judge,
            )?;
            (Some(a), Some(e), d)
        }
    } else {
        (None, None, base.clone())
    };

    // Tokenise once with the starting model's tokenizer.
    let start_model = stages::load(&start_dir, device)?;
    let tokenizer = start_model.tokenizer.clone();
    let pad = stages::pad_id(&tokenizer);
    let pool_tokens = stages::tokenize_pool(&tokenizer, &data.finetune, config.max_len)?;
    let pool: Vec<Sample> = pool_tokens
        .iter()
        .map(|t| data.finetune[t.index].clone())
        .collect();
    let safe_tokens = stages::tokenize(&tokenizer, "safe set", &data.safe, config.max_len)?;
    let labels: Vec<Option<Label>> = pool.iter().map(|s| s.label).collect();
    let harmful_total = labels
        .iter()
        .filter(|l| **l == Some(Label::Harmful))
        .count();
    let pool_ids: Vec<String> = pool_tokens.iter().map(|t| t.id.clone()).collect();
    // For the audit outputs (kept ids, scored JSONL) of every method.
    let sel_input = seal_select::SelectionInput::new(&pool_ids)?.with_samples(&pool)?;
    let anchors_needed = methods.iter().any(|m| m.needs().anchors);
    let model_needed = methods.iter().any(|m| m.needs().model);
    let harmful_anchors = if anchors_needed {
        if data.harmful_anchors.is_empty() {
            return Err(PipelineError::stage(
                "data",
                "grad-sim and rep-sim need harmful anchors: the benchmark has no \
                 harmful_anchors.jsonl (rebuild it with `seal data benchmark`, recipe 3)",
            ));
        }
        stages::tokenize(
            &tokenizer,
            "harmful anchors",
            &data.harmful_anchors,
            config.max_len,
        )?
    } else {
        Vec::new()
    };
    // The align set's benign answers: held out from the pool and from the
    // evaluation prompts by the benchmark's construction.
    let task_target: Vec<Sample> = data
        .align
        .iter()
        .filter(|s| s.label == Some(Label::Benign))
        .cloned()
        .collect();
    let start_llama = model_needed.then_some(start_model.model);

    let mut sizes = BTreeMap::new();
    sizes.insert("finetune (tokenised)".to_string(), pool.len());
    sizes.insert("finetune harmful".to_string(), harmful_total);
    sizes.insert("safe".to_string(), data.safe.len());
    sizes.insert("align".to_string(), data.align.len());
    sizes.insert("eval_safety".to_string(), data.eval_safety.len());
    sizes.insert("eval_benign".to_string(), data.eval_benign.len());
    sizes.insert("eval_utility".to_string(), data.eval_utility.len());
    let pool_fingerprint = seal_bilevel::dataset_fingerprint(&pool_tokens);
    if let Some(p) = &previous {
        if p.data != sizes
            || (!p.pool_fingerprint.is_empty() && p.pool_fingerprint != pool_fingerprint)
        {
            return Err(PipelineError::stage(
                "resume",
                format!(
                    "{} was written for other data (sizes {:?}, pool {}); now sizes {:?}, pool {}",
                    out.join("results.json").display(),
                    p.data,
                    p.pool_fingerprint,
                    sizes,
                    pool_fingerprint
                ),
            ));
        }
    }
    let mut result = PipelineResult {
        config: config.clone(),
        data: sizes,
        pool_fingerprint,
        base_model: base,
        aligned,
        base_eval,
        aligned_eval,
        rankers: Vec::new(),
        runs: Vec::new(),
        seconds: 0.0,
    };
    for &seed in &config.seeds {
        let seed_dir = out.join(format!("seed-{seed}"));
        let mut logits: BTreeMap<Solver, Vec<f64>> = BTreeMap::new();
        for &solver in &solvers {
            let dir = seed_dir.join(format!("rank-{}", solver.name()));
            let recorded = previous.as_ref().and_then(|p| {
                p.rankers
                    .iter()
                    .find(|r| r.seed == seed && r.solver == solver)
            });
            if let Some(r) = recorded {
                let l = recorded_logits(&dir, seed, solver, pool_tokens.len())?;
                tracing::info!(
                    seed,
                    solver = solver.name(),
                    "ranker kept from the previous run"
                );
                let mut r = r.clone();
                r.logits = l.clone();
                result.rankers.push(r);
                logits.insert(solver, l);
                continue;
            }
            tracing::info!(seed, solver = solver.name(), "ranking");
            let t0 = Instant::now();
            let model = stages::load(&start_dir, device)?.model;
            let r = stages::rank(
                model,
                stages::RankData {
                    finetune: pool_tokens.clone(),
                    safe: safe_tokens.clone(),
                    pad,
                },
                solver,
                &config.rank,
                seed,
                config.progress,
            )?;
            r.ranker.save(&dir)?;
            seal_bilevel::official::write_scores(
                &dir.join("scores.jsonl"),
                &r.ranker,
                Some(&labels),
            )?;
            let l = r.ranker.logits_vec()?;
            let auroc = stages::score_auroc(&l, &labels)?;
            tracing::info!(seed, solver = solver.name(), ?auroc, "ranker trained");
            result.rankers.push(RankerRun {
                seed,
                solver,
                auroc,
                steps: r.report.steps,
                seconds: t0.elapsed().as_secs_f64(),
                seconds_per_step: r.report.seconds_per_step(),
                tokens_per_second: r.report.tokens_per_second(),
                logits: l.clone(),
            });
            logits.insert(solver, l);
        }
        for method in &methods {
            let name = method.name();
            let recorded = previous
                .as_ref()
                .and_then(|p| p.runs.iter().find(|r| r.seed == seed && r.method == name));
            if let Some(r) = recorded {
                tracing::info!(seed, method = name, "kept from the previous run");
                result.runs.push(r.clone());
                continue;
            }
            tracing::info!(seed, method = name, "selecting and fine-tuning");
            let dir = seed_dir.join(name);
            mkdir(&dir)?;
            let t0 = Instant::now();
            let inputs = MethodInputs {
                pool: &pool,
                tokens: &pool_tokens,
                safe: &data.safe,
                task_target: &task_target,
                ranker_logits: method
                    .solver()
                    .and_then(|s| logits.get(&s))
                    .map(Vec::as_slice),
                model: start_llama.as_ref(),
                anchors: anchors_needed.then_some(stages::AnchorInputs {
                    harmful: &harmful_anchors,
                    safe: &safe_tokens,
                    features: &config.select.similarity,
                    model_dir: &start_dir,
                    device,
                }),
                pad,
                p: config.select.p,
                mixed_lambda: config.select.mixed_lambda,
                seed,
            };
            let selection = method.select(&inputs)?;
            seal_select::output::write_kept_ids(
                &dir.join("kept_ids.txt"),
                &selection.kept_ids(&sel_input),
            )?;
            seal_select::output::write_scored_jsonl(
                &dir.join("scored.jsonl"),
                &sel_input,
                &selection,
            )?;
            let scores: Vec<f64> = selection.entries.iter().map(|e| e.score).collect();
            let auroc = stages::score_auroc(&scores, &labels)?;
            let kept = selection.num_kept();
            let harmful_kept = selection
                .entries
                .iter()
                .zip(&labels)
                .filter(|(e, l)| e.kept && **l == Some(Label::Harmful))
                .count();
            let (sft, lambda) = stages::selection_data(
                &selection,
                &pool_tokens,
                &safe_tokens,
                &tokenizer,
                config.max_len,
            )?;
            let select_seconds = t0.elapsed().as_secs_f64();

            let t1 = Instant::now();
            let model = stages::load(&start_dir, device)?.model;
            let run = stages::finetune_on(
                model,
                sft,
                lambda,
                pad,
                &config.finetune,
                seed,
                config.progress,
                None,
            )?;
            let finetune_seconds = t1.elapsed().as_secs_f64();
            run.model
                .save_lora(&dir.join("adapter"), Some(&start_dir.to_string_lossy()))?;
            seal_model::weights::write_jsonl_atomic(&dir.join("train_log.jsonl"), &run.log)?;
            let eval = stages::evaluate(
                &run.model,
                &tokenizer,
                &sets,
                &config.eval,
                config.max_len,
                &dir,
                judge,
            )?;
            tracing::info!(
                seed,
                method = name,
                asr = ?eval.asr,
                over_refusal = ?eval.over_refusal,
                nll = ?eval.utility_nll,
                "evaluated"
            );
            result.runs.push(MethodRun {
                seed,
                method: name.to_string(),
                kept,
                added: selection.added.len(),
                harmful_kept,
                harmful_total,
                auroc,
                select_seconds,
                finetune_seconds,
                steps: run.report.steps,
                eval,
                log: run.log,
            });
            result.seconds = start.elapsed().as_secs_f64();
            write_results(&result, &labels, &out)?;
        }
    }

    result.seconds = start.elapsed().as_secs_f64();
    write_results(&result, &labels, &out)?;
    Ok(result)
}

/// Writes `results.json` and the report (also after every method, so a
/// long run that stops early keeps what it measured).
fn write_results(result: &PipelineResult, labels: &[Option<Label>], out: &Path) -> Result<()> {
    seal_model::weights::write_json_atomic(&out.join("results.json"), result)?;
    report::write(result, labels, out)
}
