//! A solver, a judge, an optimiser and a method written outside the library,
//! registered by name and named in a TOML config: the run uses each of them
//! (counted), and `results.json` records them under their names.

mod common;

use common::{config, tiny_model_dir};
use seal_bilevel::{LmProblem, SealPenalty, StepBatch, StepContext, StepStats};
use seal_model::optim::{Optimizer, Sgd, SgdConfig};
use seal_model::DynLm;
use seal_pipeline::config::{EvalConfig, RankConfig};
use seal_pipeline::registry::LmSolver;
use seal_pipeline::stages::MethodInputs;
use seal_pipeline::{
    OptimizerSettings, PipelineConfig, PipelineJudge, PipelineMethod, PipelineOptimizer,
    PipelineSolver,
};
use seal_select::selection::order_desc;
use seal_select::{Budget, Selection};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tch::{Device, Tensor};

static SOLVER_STEPS: AtomicUsize = AtomicUsize::new(0);
static OPTIMIZER_STEPS: AtomicUsize = AtomicUsize::new(0);
static JUDGED: AtomicUsize = AtomicUsize::new(0);

/// SEAL's memory-efficient penalty under another name, counting its steps.
struct CountingSeal;

impl seal_bilevel::Solver<LmProblem<DynLm>> for CountingSeal {
    fn name(&self) -> &'static str {
        "counting-seal"
    }
    fn step(
        &mut self,
        problem: &LmProblem<DynLm>,
        ctx: &mut StepContext<'_>,
        batch: &StepBatch,
    ) -> seal_bilevel::Result<StepStats> {
        SOLVER_STEPS.fetch_add(1, Ordering::SeqCst);
        seal_bilevel::Solver::step(&mut SealPenalty, problem, ctx, batch)
    }
}

struct CountingSealFactory;

impl PipelineSolver for CountingSealFactory {
    fn name(&self) -> &str {
        "counting-seal"
    }
    fn build(&self, _config: &RankConfig) -> seal_pipeline::Result<LmSolver> {
        Ok(Box::new(CountingSeal))
    }
}

/// Top-p of the `counting-seal` ranker.
struct TopOfCounting;

impl PipelineMethod for TopOfCounting {
    fn name(&self) -> &str {
        "counting-top"
    }
    fn solver(&self) -> Option<&str> {
        Some("counting-seal")
    }
    fn select(&self, input: &MethodInputs) -> seal_pipeline::Result<Selection> {
        let logits = input.ranker_logits.expect("the run passes the ranker");
        let k = Budget::Fraction(input.p).resolve(self.name(), logits.len())?;
        Ok(Selection::from_order(
            self.name(),
            logits.to_vec(),
            &order_desc(logits),
            k,
        )?)
    }
}

/// Calls a response harmful when it is longer than 3 characters: a judge
/// nobody would use, but one whose verdicts the test can recompute.
struct LengthJudge;

impl seal_eval::Judge for LengthJudge {
    fn name(&self) -> &str {
        "length-judge"
    }
    fn judge_harm(
        &self,
        _prompt: &str,
        response: &str,
    ) -> seal_eval::Result<seal_eval::HarmVerdict> {
        JUDGED.fetch_add(1, Ordering::SeqCst);
        let harmful = response.trim().chars().count() > 3;
        Ok(seal_eval::HarmVerdict {
            harmful,
            score: if harmful { 1.0 } else { 0.0 },
            rationale: "longer than 3 characters".into(),
        })
    }
}

struct LengthJudgeFactory;

impl PipelineJudge for LengthJudgeFactory {
    fn name(&self) -> &str {
        "length"
    }
    fn build(
        &self,
        _config: &EvalConfig,
        _device: Device,
    ) -> seal_pipeline::Result<Box<dyn seal_eval::Judge>> {
        Ok(Box::new(LengthJudge))
    }
}

/// Plain SGD that counts its steps.
struct CountingSgd(Sgd);

impl Optimizer for CountingSgd {
    fn name(&self) -> &str {
        "counting-sgd"
    }
    fn params(&self) -> &[(String, Tensor)] {
        self.0.params()
    }
    fn learning_rate(&self) -> f64 {
        self.0.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.0.set_learning_rate(lr)
    }
    fn step(&mut self) -> seal_model::Result<()> {
        OPTIMIZER_STEPS.fetch_add(1, Ordering::SeqCst);
        self.0.step()
    }
    fn step_count(&self) -> i64 {
        self.0.step_count()
    }
    fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        self.0.state()
    }
    fn load_state(&mut self, step: i64, state: &[(String, Tensor)]) -> seal_model::Result<()> {
        self.0.load_state(step, state)
    }
}

struct CountingSgdFactory;

impl PipelineOptimizer for CountingSgdFactory {
    fn name(&self) -> &str {
        "counting-sgd"
    }
    fn build(
        &self,
        params: Vec<(String, Tensor)>,
        settings: &OptimizerSettings,
    ) -> seal_pipeline::Result<Box<dyn Optimizer>> {
        Ok(Box::new(CountingSgd(Sgd::new(
            params,
            SgdConfig {
                lr: settings.lr,
                ..SgdConfig::default()
            },
        ))))
    }
}

fn register() {
    seal_pipeline::register_solver(Arc::new(CountingSealFactory)).unwrap();
    seal_pipeline::register_method(Arc::new(TopOfCounting)).unwrap();
    seal_pipeline::register_judge(Arc::new(LengthJudgeFactory)).unwrap();
    seal_pipeline::register_optimizer(Arc::new(CountingSgdFactory)).unwrap();
}

/// The tiny config with the user's entries named in TOML.
fn user_config(root: &Path) -> PipelineConfig {
    let base = config(root);
    let text = format!(
        r#"
seeds = [1]
max_len = 1024
progress = false
out = "out"
[model]
dir = "model"
[data]
dir = "bench"
eval_limit = 3
[align]
enabled = false
[rank]
max_steps = 2
batch = 4
optimizer = "counting-sgd"
[select]
methods = ["counting-top", "random"]
[finetune]
epochs = 1
batch = 4
max_steps = 2
lr = {lr}
optimizer = "counting-sgd"
[eval]
max_new_tokens = 4
batch = 4
gsm8k_accuracy = false
judges = ["length", "keyword-gcg"]
"#,
        lr = base.finetune.lr
    );
    PipelineConfig::from_toml(&text, Path::new("user.toml"), root).unwrap()
}

#[test]
fn user_solver_judge_optimizer_and_method_enter_a_run_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));

    // Unknown names are refused when parsed, listing the registered ones.
    let refused = |text: &str| {
        PipelineConfig::from_toml(text, Path::new("x.toml"), root)
            .unwrap_err()
            .to_string()
    };
    let e = refused("[finetune]\noptimizer = \"counting-sgd\"\n");
    assert!(
        e.contains("finetune.optimizer") && e.contains("adamw"),
        "{e}"
    );
    let e = refused("[eval]\njudges = [\"length\"]\n");
    assert!(e.contains("eval.judges") && e.contains("classifier"), "{e}");
    let e = refused("[eval]\njudges = [\"classifier\"]\n");
    assert!(e.contains("eval.judge"), "{e}");

    register();
    let cfg = user_config(root);
    assert_eq!(cfg.solvers().unwrap(), ["counting-seal"]);
    let r = seal_pipeline::run(&cfg).unwrap();

    // The user's solver trained the only ranker, with the user's optimiser
    // for the model (two ranker steps, then two fine-tuning steps per method).
    assert_eq!(r.rankers.len(), 1);
    assert_eq!(r.rankers[0].solver, "counting-seal");
    assert_eq!(SOLVER_STEPS.load(Ordering::SeqCst), 2);
    assert_eq!(OPTIMIZER_STEPS.load(Ordering::SeqCst), 2 + 2 * 2);
    assert!(cfg
        .out
        .join("seed-1/rank-counting-seal/ranker.json")
        .is_file());

    // The user's method read that ranker: its selection is the top of the
    // recorded logits.
    let run = r.runs.iter().find(|m| m.method == "counting-top").unwrap();
    let random = r.runs.iter().find(|m| m.method == "random").unwrap();
    assert_eq!(run.kept, random.kept);
    assert!(run.kept < r.rankers[0].logits.len());
    assert_eq!(run.auroc, r.rankers[0].auroc, "its scores are the logits");

    // The user's judge rated every evaluation, and its rate is what its
    // rule gives on the recorded responses.
    assert!(JUDGED.load(Ordering::SeqCst) > 0);
    for m in &r.runs {
        let rate = m.eval.asr_by_judge["length-judge"];
        let text = std::fs::read_to_string(
            cfg.out
                .join("seed-1")
                .join(&m.method)
                .join("safety_responses.jsonl"),
        )
        .unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let long = rows
            .iter()
            .filter(|r| r["response"].as_str().unwrap().trim().chars().count() > 3)
            .count();
        assert_eq!(rate, long as f64 / rows.len() as f64, "{}", m.method);
        // Naming the keyword rule again adds no second entry.
        assert_eq!(m.eval.asr_by_judge.len(), 2, "{:?}", m.eval.asr_by_judge);
    }
    let results = std::fs::read_to_string(cfg.out.join("results.json")).unwrap();
    for name in [
        "counting-seal",
        "counting-top",
        "length-judge",
        "counting-sgd",
    ] {
        assert!(results.contains(name), "{name} missing from results.json");
    }
    let report = std::fs::read_to_string(cfg.out.join("report.md")).unwrap();
    assert!(report.contains("counting-top") && report.contains("length-judge"));
}
