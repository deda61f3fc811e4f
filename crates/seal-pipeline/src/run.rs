//! The whole pipeline: align → (per seed) rank → select → fine-tune →
//! evaluate, then the report.

use crate::config::PipelineConfig;
use crate::error::{PipelineError, Result};
use crate::registry::{
    registered_judges, registered_methods, registered_solvers, solvers_of, MethodNeeds,
    PipelineMethod, PipelineSolver,
};
use crate::report;
use crate::stages::{self, EvalSets, MethodInputs};
use seal_data::benchmark::Benchmark;
use seal_data::tokenize::TokenizedSample;
use seal_data::{Label, Sample, TextTokenizer};
use seal_model::{DynLm, LoraLm};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

pub use crate::results::{MethodRun, PipelineResult, RankerRun, SetWinRate};

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

/// Wall time of a record that several invocations may build (`--resume`):
/// the seconds the record already holds plus this invocation's so far.
pub(crate) struct WallClock {
    started: Instant,
    recorded: f64,
}

impl WallClock {
    /// Starts counting this invocation.
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            recorded: 0.0,
        }
    }

    /// Counts on from the `seconds` of the record being resumed, if any.
    pub(crate) fn resume_from(&mut self, recorded: Option<f64>) {
        self.recorded = recorded.unwrap_or(0.0);
    }

    /// Recorded seconds plus this invocation's.
    pub(crate) fn seconds(&self) -> f64 {
        self.recorded + self.started.elapsed().as_secs_f64()
    }
}

/// A sweep's record (`dose.json`, `lambda_sweep.json`): the configuration
/// it ran with, for [`read_previous`].
pub(crate) trait SweepRecord: serde::de::DeserializeOwned {
    /// The configuration the record was written with.
    fn recorded_config(&self) -> &PipelineConfig;
}

/// The record a sweep left in `json`, for `resume` (`None` when there is
/// none). A record written with another precision or `max_len` than
/// `config` (they change every model of any sweep), or for which
/// `same_settings` (the sweep's own settings) is false, is refused.
pub(crate) fn read_previous<T: SweepRecord>(
    json: &Path,
    config: &PipelineConfig,
    same_settings: impl FnOnce(&T) -> bool,
) -> Result<Option<T>> {
    if !json.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(json).map_err(|e| PipelineError::io(json, e))?;
    let prev: T = serde_json::from_str(&text)
        .map_err(|e| PipelineError::stage("resume", format!("{}: {e}", json.display())))?;
    let was = prev.recorded_config();
    let same_run = was.model.dtype == config.model.dtype && was.max_len == config.max_len;
    if !(same_run && same_settings(&prev)) {
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
/// (imported when it is a GGUF), aligned on `align` when the config's
/// alignment stage is on; both cached in [`shared_cache`].
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
    let shared = shared_cache(config, out);
    let base = stages::resolve_model(
        config.model.dir.as_deref(),
        config.model.gguf.as_deref(),
        &shared,
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
        config.model.dtype,
        &shared,
        config.progress,
    )?
    .dir)
}

/// Where a run keeps what is keyed by content (the imported GGUF, the
/// aligned model): `cache_dir` when the config names one, so runs with
/// different outputs share one import (about 500 MB for SmolLM2) instead of
/// each writing its own, else the run's own `OUT/cache`.
pub(crate) fn shared_cache(config: &PipelineConfig, out: &Path) -> PathBuf {
    config
        .cache_dir
        .clone()
        .unwrap_or_else(|| out.join("cache"))
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
    // Where content-keyed entries are cached does not change them.
    c.cache_dir = None;
    c.progress = false;
    // Win rates are computed from the recorded responses: adding or
    // changing them completes a run instead of invalidating it.
    c.eval.win_rate = None;
    if !c.eval.judge_names().iter().any(|n| n == "endpoint") {
        c.eval.endpoint = None;
    }
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
fn recorded_logits(dir: &Path, seed: u64, solver: &str, pool: usize) -> Result<Vec<f64>> {
    let logits = seal_bilevel::Ranker::load(dir)
        .and_then(|k| k.logits_vec())
        .map_err(|e| {
            PipelineError::stage(
                "resume",
                format!(
                    "results.json records ranker {solver} of seed {seed}, but it cannot be read back: {e}"
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
    let device = seal_model::runtime::parse_device(&config.device).ok_or_else(|| {
        PipelineError::config(
            "device",
            format!("`{}`: expected cpu, cuda, cuda:N or auto", config.device),
        )
    })?;
    if config.model.tf32 && device.is_cuda() && !seal_model::runtime::allow_tf32() {
        tracing::warn!(
            "[model] tf32: left off, {} is set to something else in the environment",
            seal_model::runtime::TF32_OVERRIDE_VAR
        );
    }
    Ok(device)
}

/// Runs the pipeline of `config` with `options` (see [`RunOptions`]): the
/// stages below in order, writing `results.json` and the report after every
/// method so that a run stopped early keeps what it measured.
pub fn run_with(config: &PipelineConfig, options: &RunOptions) -> Result<PipelineResult> {
    let mut clock = WallClock::start();
    let device = prepare(config)?;
    // Every name is resolved before anything is written or computed.
    let methods = registered_methods().resolve(&config.select.methods)?;
    let solver_registry = registered_solvers();
    let solvers = solvers_of(&methods)
        .iter()
        .map(|name| solver_registry.lookup("select.methods", name))
        .collect::<Result<Vec<_>>>()?;
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
    let shared = shared_cache(config, &out);
    let base = stages::resolve_model(
        config.model.dir.as_deref(),
        config.model.gguf.as_deref(),
        &shared,
    )?;
    // Loaded once: a trained judge's base model serves every evaluation.
    // An endpoint judge caches its answers inside the run unless told
    // otherwise, so a resumed run asks nothing twice.
    let mut eval_config = config.eval.clone();
    if let Some(e) = eval_config.endpoint.as_mut() {
        e.cache.get_or_insert_with(|| cache.join("judge-endpoint"));
    }
    let loaded_judges = stages::load_judges(&eval_config, device)?;
    let win_judge = match &config.eval.win_rate {
        Some(w) => Some(
            registered_judges()
                .lookup("eval.win_rate.judge", &w.judge)?
                .build(&eval_config, device)?,
        ),
        None => None,
    };
    let ctx = RunContext {
        config,
        device,
        out: &out,
        previous: previous.as_ref(),
        sets: EvalSets {
            safety: &data.eval_safety,
            benign: &data.eval_benign,
            utility: &data.eval_utility,
            safety_as_judged: None,
        },
        judges: loaded_judges.iter().map(|j| j.as_ref()).collect(),
        win_judge: win_judge.as_deref(),
    };

    let base_eval = ctx.evaluate_original(&base)?;
    let (aligned, aligned_eval, start_dir) = ctx.align_stage(&data, &base, &shared)?;
    let needs = MethodNeeds {
        model: methods.iter().any(|m| m.needs().model),
        anchors: methods.iter().any(|m| m.needs().anchors),
    };
    let pool = ctx.prepare_pool(&data, start_dir, needs)?;
    let (sizes, pool_fingerprint) = ctx.check_resumable(&data, &pool)?;
    clock.resume_from(previous.as_ref().map(|p| p.seconds));
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
        let mut logits: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        // The fine-tunings of this seed so far, to run each distinct one once.
        let mut finetuned: Vec<Finetuned> = Vec::new();
        for solver in &solvers {
            let run = ctx.rank_stage(&pool, seed, solver.as_ref())?;
            logits.insert(solver.name().to_string(), run.logits.clone());
            result.rankers.push(run);
        }
        for method in &methods {
            let recorded = ctx.previous.and_then(|p| {
                p.runs
                    .iter()
                    .find(|r| r.seed == seed && r.method == method.name())
            });
            let run = match recorded {
                Some(r) => {
                    tracing::info!(seed, method = method.name(), "kept from the previous run");
                    r.clone()
                }
                None => ctx.method_stage(&pool, method.as_ref(), seed, &logits, &mut finetuned)?,
            };
            result.runs.push(run);
            result.seconds = clock.seconds();
            write_results(&result, &pool.labels, &out)?;
        }
        // Every method of the seed is evaluated: compare with the reference.
        if ctx.win_rate_stage(seed, &mut result.runs)? {
            result.seconds = clock.seconds();
            write_results(&result, &pool.labels, &out)?;
        }
    }

    result.seconds = clock.seconds();
    write_results(&result, &pool.labels, &out)?;
    Ok(result)
}

/// One fine-tuning of a seed: its data and objective, and the run it gave.
struct Finetuned {
    data: seal_bilevel::SftData,
    lambda: f64,
    run: MethodRun,
}

/// Copies the files of a method's directory `from` into `to` (atomically,
/// folders included), except the names in `skip`: the outputs of a reused
/// run, so that every method's directory holds its adapter and responses.
fn copy_outputs(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    mkdir(to)?;
    let entries = std::fs::read_dir(from).map_err(|e| PipelineError::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| PipelineError::io(from, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().map_err(|e| PipelineError::io(&src, e))?;
        if kind.is_dir() {
            copy_outputs(&src, &dst, &[])?;
        } else if kind.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| PipelineError::io(&src, e))?;
            seal_model::weights::write_atomic(&dst, &bytes)?;
        }
    }
    Ok(())
}

/// What every stage of one run reads.
struct RunContext<'a> {
    config: &'a PipelineConfig,
    device: Device,
    out: &'a Path,
    /// The recorded run being resumed, if any.
    previous: Option<&'a PipelineResult>,
    sets: EvalSets<'a>,
    judges: Vec<&'a dyn seal_eval::Judge>,
    /// The pairwise judge of `[eval.win_rate]`.
    win_judge: Option<&'a dyn seal_eval::Judge>,
}

/// The pool as every ranker and method sees it: tokenised once with the
/// starting model's tokenizer.
struct Pool {
    /// The starting model's directory (aligned, or the base).
    start_dir: PathBuf,
    /// The starting model, kept when a method reads it.
    start_model: Option<DynLm>,
    tokenizer: TextTokenizer,
    pad: u32,
    tokens: Vec<TokenizedSample>,
    samples: Vec<Sample>,
    safe: Vec<Sample>,
    safe_tokens: Vec<TokenizedSample>,
    labels: Vec<Option<Label>>,
    harmful_total: usize,
    ids: Vec<String>,
    harmful_anchors: Vec<TokenizedSample>,
    /// The align set's benign answers (the `dsir-task` target).
    task_target: Vec<Sample>,
}

impl RunContext<'_> {
    /// Loads a model directory on the run's device and in its precision.
    fn load(&self, dir: &Path) -> Result<seal_model::Pretrained> {
        stages::load(dir, self.device, self.config.model.dtype)
    }

    /// The original model's evaluation (kept from a resumed run).
    fn evaluate_original(&self, base: &Path) -> Result<stages::ModelEval> {
        if let Some(p) = self.previous {
            return Ok(p.base_eval.clone());
        }
        tracing::info!("evaluating the original model {}", base.display());
        let original = self.load(base)?;
        let dir = self.out.join("eval-original");
        mkdir(&dir)?;
        stages::evaluate(
            &original.model,
            &original.tokenizer,
            &self.sets,
            &self.config.eval,
            self.config.max_len,
            &dir,
            &self.judges,
        )
    }

    /// Alignment (cached by content) and the aligned model's evaluation;
    /// returns the starting model's directory last.
    fn align_stage(
        &self,
        data: &Benchmark,
        base: &Path,
        cache: &Path,
    ) -> Result<(Option<stages::Aligned>, Option<stages::ModelEval>, PathBuf)> {
        let config = self.config;
        if !config.align.enabled {
            return Ok((None, None, base.to_path_buf()));
        }
        let a = stages::align(
            base,
            &data.align,
            &config.align,
            config.max_len,
            self.device,
            config.model.dtype,
            cache,
            config.progress,
        )?;
        let d = a.dir.clone();
        if let Some((pa, pe)) = self
            .previous
            .and_then(|p| Some((p.aligned.clone()?, p.aligned_eval.clone()?)))
        {
            return Ok((Some(pa), Some(pe), d));
        }
        let m = self.load(&a.dir)?;
        let dir = self.out.join("eval-aligned");
        mkdir(&dir)?;
        if !a.log.is_empty() {
            seal_model::weights::write_jsonl_atomic(&dir.join("align_log.jsonl"), &a.log)?;
        }
        let e = stages::evaluate(
            &m.model,
            &m.tokenizer,
            &self.sets,
            &config.eval,
            config.max_len,
            &dir,
            &self.judges,
        )?;
        Ok((Some(a), Some(e), d))
    }

    /// Tokenises the pool, the safe set and the anchors with the starting
    /// model's tokenizer.
    fn prepare_pool(
        &self,
        data: &Benchmark,
        start_dir: PathBuf,
        needs: MethodNeeds,
    ) -> Result<Pool> {
        let config = self.config;
        let start_model = self.load(&start_dir)?;
        let tokenizer = start_model.tokenizer.clone();
        let pad = stages::pad_id(&tokenizer);
        let tokens = stages::tokenize_pool(&tokenizer, &data.finetune, config.max_len)?;
        let samples: Vec<Sample> = tokens
            .iter()
            .map(|t| data.finetune[t.index].clone())
            .collect();
        let safe_tokens = stages::tokenize(&tokenizer, "safe set", &data.safe, config.max_len)?;
        let labels: Vec<Option<Label>> = samples.iter().map(|s| s.label).collect();
        let harmful_total = labels
            .iter()
            .filter(|l| **l == Some(Label::Harmful))
            .count();
        let ids: Vec<String> = tokens.iter().map(|t| t.id.clone()).collect();
        let harmful_anchors = if needs.anchors {
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
        Ok(Pool {
            start_dir,
            start_model: needs.model.then_some(start_model.model),
            tokenizer,
            pad,
            tokens,
            samples,
            safe: data.safe.clone(),
            safe_tokens,
            labels,
            harmful_total,
            ids,
            harmful_anchors,
            task_target,
        })
    }

    /// The data sizes and pool fingerprint of the run; a resumed run must
    /// have been written for the same.
    fn check_resumable(
        &self,
        data: &Benchmark,
        pool: &Pool,
    ) -> Result<(BTreeMap<String, usize>, String)> {
        let mut sizes = BTreeMap::new();
        sizes.insert("finetune (tokenised)".to_string(), pool.samples.len());
        sizes.insert("finetune harmful".to_string(), pool.harmful_total);
        sizes.insert("safe".to_string(), data.safe.len());
        sizes.insert("align".to_string(), data.align.len());
        sizes.insert("eval_safety".to_string(), data.eval_safety.len());
        sizes.insert("eval_benign".to_string(), data.eval_benign.len());
        sizes.insert("eval_utility".to_string(), data.eval_utility.len());
        let pool_fingerprint = seal_bilevel::dataset_fingerprint(&pool.tokens);
        if let Some(p) = self.previous {
            if p.data != sizes
                || (!p.pool_fingerprint.is_empty() && p.pool_fingerprint != pool_fingerprint)
            {
                return Err(PipelineError::stage(
                    "resume",
                    format!(
                        "{} was written for other data (sizes {:?}, pool {}); now sizes {:?}, pool {}",
                        self.out.join("results.json").display(),
                        p.data,
                        p.pool_fingerprint,
                        sizes,
                        pool_fingerprint
                    ),
                ));
            }
        }
        Ok((sizes, pool_fingerprint))
    }

    /// One SEAL ranker for `seed` (re-read from its directory when the
    /// resumed run has it).
    fn rank_stage(&self, pool: &Pool, seed: u64, solver: &dyn PipelineSolver) -> Result<RankerRun> {
        let config = self.config;
        let name = solver.name();
        let dir = self
            .out
            .join(format!("seed-{seed}"))
            .join(format!("rank-{name}"));
        let recorded = self.previous.and_then(|p| {
            p.rankers
                .iter()
                .find(|r| r.seed == seed && r.solver == name)
        });
        if let Some(r) = recorded {
            let l = recorded_logits(&dir, seed, name, pool.tokens.len())?;
            tracing::info!(seed, solver = name, "ranker kept from the previous run");
            let mut r = r.clone();
            r.logits = l;
            return Ok(r);
        }
        tracing::info!(seed, solver = name, "ranking");
        let t0 = Instant::now();
        let model = self.load(&pool.start_dir)?.model;
        let r = stages::rank(
            model,
            stages::RankData {
                finetune: pool.tokens.clone(),
                safe: pool.safe_tokens.clone(),
                pad: pool.pad,
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
            Some(&pool.labels),
        )?;
        let l = r.ranker.logits_vec()?;
        let auroc = stages::score_auroc(&l, &pool.labels)?;
        tracing::info!(seed, solver = name, ?auroc, "ranker trained");
        Ok(RankerRun {
            seed,
            solver: name.to_string(),
            auroc,
            steps: r.report.steps,
            seconds: t0.elapsed().as_secs_f64(),
            seconds_per_step: r.report.seconds_per_step(),
            tokens_per_second: r.report.tokens_per_second(),
            logits: l,
        })
    }

    /// One method for `seed`: select, fine-tune from the starting model,
    /// evaluate; the audit outputs and the adapter in `seed-N/NAME/`. A
    /// selection that gives the same data and objective as an earlier method
    /// of the seed (in `finetuned`) reuses that method's run instead of
    /// repeating it.
    fn method_stage(
        &self,
        pool: &Pool,
        method: &dyn PipelineMethod,
        seed: u64,
        logits: &BTreeMap<String, Vec<f64>>,
        finetuned: &mut Vec<Finetuned>,
    ) -> Result<MethodRun> {
        let config = self.config;
        let name = method.name();
        tracing::info!(seed, method = name, "selecting and fine-tuning");
        let dir = self.out.join(format!("seed-{seed}")).join(name);
        mkdir(&dir)?;
        let t0 = Instant::now();
        let inputs = MethodInputs {
            pool: &pool.samples,
            tokens: &pool.tokens,
            safe: &pool.safe,
            task_target: &pool.task_target,
            ranker_logits: method
                .solver()
                .and_then(|s| logits.get(s))
                .map(Vec::as_slice),
            model: pool.start_model.as_ref(),
            anchors: method.needs().anchors.then_some(stages::AnchorInputs {
                harmful: &pool.harmful_anchors,
                safe: &pool.safe_tokens,
                features: &config.select.similarity,
                model_dir: &pool.start_dir,
                device: self.device,
                dtype: config.model.dtype,
            }),
            pad: pool.pad,
            p: config.select.p,
            mixed_lambda: config.select.mixed_lambda,
            seed,
        };
        let selection = method.select(&inputs)?;
        // For the audit outputs (kept ids, scored JSONL).
        let sel_input = seal_select::SelectionInput::new(&pool.ids)?.with_samples(&pool.samples)?;
        seal_select::output::write_kept_ids(
            &dir.join("kept_ids.txt"),
            &selection.kept_ids(&sel_input),
        )?;
        seal_select::output::write_scored_jsonl(&dir.join("scored.jsonl"), &sel_input, &selection)?;
        let scores: Vec<f64> = selection.entries.iter().map(|e| e.score).collect();
        let auroc = stages::score_auroc(&scores, &pool.labels)?;
        let kept = selection.num_kept();
        let harmful_kept = selection
            .entries
            .iter()
            .zip(&pool.labels)
            .filter(|(e, l)| e.kept && **l == Some(Label::Harmful))
            .count();
        let (sft, lambda) = stages::selection_data(
            &selection,
            &pool.tokens,
            &pool.safe_tokens,
            &pool.tokenizer,
            config.max_len,
        )?;
        let select_seconds = t0.elapsed().as_secs_f64();
        // The run's record, from its own fine-tuning or a reused one.
        let record = |finetune_seconds: f64,
                      steps: usize,
                      eval: stages::ModelEval,
                      log: Vec<seal_bilevel::SftStep>,
                      reused_from: Option<String>| MethodRun {
            seed,
            method: name.to_string(),
            kept,
            added: selection.added.len(),
            harmful_kept,
            harmful_total: pool.harmful_total,
            auroc,
            select_seconds,
            finetune_seconds,
            steps,
            eval,
            log,
            win_rates: BTreeMap::new(),
            reused_from,
        };
        if let Some(same) = finetuned
            .iter()
            .find(|f| f.data == sft && f.lambda.to_bits() == lambda.to_bits())
        {
            let source = &same.run;
            tracing::info!(
                seed,
                method = name,
                reused_from = %source.method,
                "same data and objective as an earlier method: its run is reused"
            );
            copy_outputs(
                &dir.with_file_name(&source.method),
                &dir,
                &["kept_ids.txt", "scored.jsonl"],
            )?;
            let mut eval = source.eval.clone();
            eval.seconds = 0.0;
            return Ok(record(
                0.0,
                source.steps,
                eval,
                source.log.clone(),
                Some(source.method.clone()),
            ));
        }

        let t1 = Instant::now();
        let model = self.load(&pool.start_dir)?.model;
        let run = stages::finetune_on(
            model,
            sft.clone(),
            lambda,
            pool.pad,
            &config.finetune,
            seed,
            config.progress,
            None,
        )?;
        let finetune_seconds = t1.elapsed().as_secs_f64();
        run.model.save_lora(
            &dir.join("adapter"),
            Some(&pool.start_dir.to_string_lossy()),
        )?;
        seal_model::weights::write_jsonl_atomic(&dir.join("train_log.jsonl"), &run.log)?;
        let eval = stages::evaluate(
            &run.model,
            &pool.tokenizer,
            &self.sets,
            &config.eval,
            config.max_len,
            &dir,
            &self.judges,
        )?;
        tracing::info!(
            seed,
            method = name,
            asr = ?eval.asr,
            over_refusal = ?eval.over_refusal,
            nll = ?eval.utility_nll,
            "evaluated"
        );
        let result = record(finetune_seconds, run.report.steps, eval, run.log, None);
        finetuned.push(Finetuned {
            data: sft,
            lambda,
            run: result.clone(),
        });
        Ok(result)
    }
}

impl RunContext<'_> {
    /// The win rates of `seed`'s methods against the reference method, from
    /// the responses each evaluation wrote, for the runs that lack them (a
    /// resumed run, or one whose win rates came from another judge or
    /// reference, is completed). Returns whether anything was computed.
    fn win_rate_stage(&self, seed: u64, runs: &mut [MethodRun]) -> Result<bool> {
        let (Some(w), Some(judge)) = (&self.config.eval.win_rate, self.win_judge) else {
            return Ok(false);
        };
        let seed_dir = self.out.join(format!("seed-{seed}"));
        let reference_dir = seed_dir.join(&w.reference);
        let explicit = !w.sets.is_empty();
        let opts = w.options();
        let mut computed = false;
        for run in runs
            .iter_mut()
            .filter(|r| r.seed == seed && r.method != w.reference)
        {
            for (set, file) in w.sets_and_files(self.config.eval.gsm8k_accuracy) {
                let recorded = run.win_rates.get(set).is_some_and(|r| {
                    r.reference == w.reference && r.win_rate.judge == judge.name()
                });
                if recorded {
                    continue;
                }
                let (candidate, reference) = (
                    seed_dir.join(&run.method).join(file),
                    reference_dir.join(file),
                );
                if !reference.is_file() || !candidate.is_file() {
                    if explicit {
                        return Err(PipelineError::stage(
                            "win rate",
                            format!(
                                "set `{set}` was asked for, but {} is missing",
                                if reference.is_file() {
                                    &candidate
                                } else {
                                    &reference
                                }
                                .display()
                            ),
                        ));
                    }
                    // The evaluation had no prompts of this set.
                    continue;
                }
                let before = judge.unparsable();
                let rate =
                    seal_eval::winrate::win_rate_of_files(judge, &candidate, &reference, &opts)?;
                let unparsable = judge.unparsable().map(|n| n - before.unwrap_or(0));
                tracing::info!(
                    seed,
                    method = %run.method,
                    reference = %w.reference,
                    set,
                    rate = rate.rate,
                    low = rate.low,
                    high = rate.high,
                    "win rate"
                );
                run.win_rates.insert(
                    set.to_string(),
                    SetWinRate {
                        reference: w.reference.clone(),
                        win_rate: rate,
                        unparsable,
                    },
                );
                computed = true;
            }
        }
        Ok(computed)
    }
}

/// Writes `results.json` and the report (also after every method, so a
/// long run that stops early keeps what it measured).
fn write_results(result: &PipelineResult, labels: &[Option<Label>], out: &Path) -> Result<()> {
    seal_model::weights::write_json_atomic(&out.join("results.json"), result)?;
    report::write(result, labels, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keyed_entries_go_to_cache_dir_when_one_is_set() {
        let mut config = PipelineConfig::default();
        let out = Path::new("/runs/a");
        assert_eq!(shared_cache(&config, out), out.join("cache"));
        config.cache_dir = Some(PathBuf::from("/shared/cache"));
        assert_eq!(
            shared_cache(&config, out),
            PathBuf::from("/shared/cache"),
            "the GGUF import and the aligned model share the run-independent cache"
        );
    }
}
