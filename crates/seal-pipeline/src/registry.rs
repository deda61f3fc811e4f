//! Everything a run names, by name: selection methods, ranking solvers,
//! judges and optimisers.
//!
//! A pipeline run never matches on a closed list. Each of the four kinds is
//! a trait here, and a [`NameRegistry`] maps the names used in configs, the
//! CLI, `results.json` and reports to trait objects:
//!
//! | kind | trait | named in | built-ins |
//! |---|---|---|---|
//! | selection method | [`PipelineMethod`] | `select.methods` | every [`Method`] |
//! | ranking solver | [`PipelineSolver`] | a method's [`PipelineMethod::solver`] | `seal`, `seal-full` ([`Solver`]), `implicit` |
//! | judge | [`PipelineJudge`] | `eval.judges`, `eval.win_rate.judge` | `keyword-gcg`, `classifier`, `endpoint` |
//! | optimiser | [`PipelineOptimizer`] | `align.sft.optimizer`, `rank.optimizer`, `rank.ranker_optimizer`, `finetune.optimizer` | `adamw`, `adam`, `sgd` |
//!
//! The built-ins are registered exactly as a user's are. Runs look names up
//! in the process-wide registries: a downstream crate adds its own once at
//! start-up ([`register_method`], [`register_solver`], [`register_judge`],
//! [`register_optimizer`]) and then names them in a TOML file, the CLI or
//! code (see `examples/custom_rule.rs` and `tests/registry.rs`).
//! Configurations that name an unregistered entry are refused when parsed,
//! with the registered names listed.

use crate::config::{EvalConfig, Method, RankConfig, Solver};
use crate::error::{PipelineError, Result};
use crate::stages::{self, MethodInputs};
use seal_bilevel::{Implicit, ImplicitConfig, LmProblem, SealPenalty, SealPenaltyFull};
use seal_model::optim::{Adam, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use seal_model::{AttentionImpl, DynLm, LoraLm};
use seal_select::Selection;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use tch::{Device, Tensor};

/// Entries by name, one kind per registry. [`Default`] holds the built-ins.
pub struct NameRegistry<T: ?Sized> {
    /// The config field errors name.
    field: &'static str,
    entries: BTreeMap<String, Arc<T>>,
}

impl<T: ?Sized> Clone for NameRegistry<T> {
    fn clone(&self) -> Self {
        Self {
            field: self.field,
            entries: self.entries.clone(),
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for NameRegistry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

/// Registered names become directories and file names of a run
/// (`OUT/seed-N/NAME`, `rank-NAME`), so they are kept to a safe alphabet.
fn check_name(field: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(PipelineError::config(
            field,
            format!("name `{name}`: expected ASCII letters, digits, `-` and `_`"),
        ))
    }
}

impl<T: ?Sized> NameRegistry<T> {
    /// A registry without any entry; `field` is the config field its
    /// errors name.
    pub fn empty(field: &'static str) -> Self {
        Self {
            field,
            entries: BTreeMap::new(),
        }
    }

    /// Adds `entry` under `name`, replacing an entry of the same name. The
    /// name must be non-empty ASCII letters, digits, `-` and `_`.
    pub fn insert(&mut self, name: &str, entry: Arc<T>) -> Result<&mut Self> {
        check_name(self.field, name)?;
        self.entries.insert(name.to_string(), entry);
        Ok(self)
    }

    /// The entry called `name`; the error names `field` and lists the
    /// registered names.
    pub fn lookup(&self, field: &str, name: &str) -> Result<Arc<T>> {
        self.entries.get(name).cloned().ok_or_else(|| {
            PipelineError::config(
                field,
                format!(
                    "unknown name `{name}` (registered: {})",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// The entry called `name` (errors name the registry's field).
    pub fn get(&self, name: &str) -> Result<Arc<T>> {
        self.lookup(self.field, name)
    }

    /// The entries called `names`, in order.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Arc<T>>> {
        names.iter().map(|n| self.get(n)).collect()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

// ---------------------------------------------------------------- methods

/// What a method needs the run to prepare besides the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodNeeds {
    /// The aligned (starting) model, in [`MethodInputs::model`].
    pub model: bool,
    /// The harmful and safe anchors, in [`MethodInputs::anchors`].
    pub anchors: bool,
}

impl MethodNeeds {
    /// Nothing beyond the pool.
    pub const NONE: MethodNeeds = MethodNeeds {
        model: false,
        anchors: false,
    };

    /// Needs the starting model.
    pub fn with_model(mut self) -> Self {
        self.model = true;
        self
    }

    /// Needs the anchors.
    pub fn with_anchors(mut self) -> Self {
        self.anchors = true;
        self
    }
}

/// A selection method as the pipeline runs it.
pub trait PipelineMethod: Send + Sync {
    /// The name used in configs, the CLI, `results.json` and reports.
    fn name(&self) -> &str;
    /// The registered ranking solver ([`PipelineSolver`]) whose ranker
    /// logits the method reads in [`MethodInputs::ranker_logits`] (the run
    /// trains one ranker per solver and seed), if any.
    fn solver(&self) -> Option<&str> {
        None
    }
    /// What the run must prepare for it.
    fn needs(&self) -> MethodNeeds {
        MethodNeeds::NONE
    }
    /// Selects from the pool.
    fn select(&self, input: &MethodInputs) -> Result<Selection>;
}

impl PipelineMethod for Method {
    fn name(&self) -> &str {
        Method::name(*self)
    }
    fn solver(&self) -> Option<&str> {
        Method::solver(*self).map(Solver::name)
    }
    fn needs(&self) -> MethodNeeds {
        match self {
            Method::Loss => MethodNeeds::NONE.with_model(),
            Method::RepSim => MethodNeeds::NONE.with_model().with_anchors(),
            Method::GradSim => MethodNeeds::NONE.with_anchors(),
            _ => MethodNeeds::NONE,
        }
    }
    fn select(&self, input: &MethodInputs) -> Result<Selection> {
        stages::select(*self, input)
    }
}

/// Methods by name.
pub type MethodRegistry = NameRegistry<dyn PipelineMethod>;

impl Default for NameRegistry<dyn PipelineMethod> {
    fn default() -> Self {
        let mut registry = Self::empty("select.methods");
        for method in Method::ALL {
            // Built-in names are kebab-case ASCII: registration cannot fail.
            let _ = registry.register(Arc::new(method));
        }
        registry
    }
}

impl NameRegistry<dyn PipelineMethod> {
    /// Adds `method` under its name, replacing a method of the same name.
    /// The name becomes a directory of the run (`OUT/seed-N/NAME`).
    pub fn register(&mut self, method: Arc<dyn PipelineMethod>) -> Result<&mut Self> {
        let name = method.name().to_string();
        self.insert(&name, method)
    }

    /// The ranker solvers that the methods called `names` read, sorted and
    /// deduplicated.
    pub fn solvers(&self, names: &[String]) -> Result<Vec<String>> {
        Ok(solvers_of(&self.resolve(names)?))
    }
}

/// The ranker solvers `methods` read, sorted and deduplicated.
pub fn solvers_of(methods: &[Arc<dyn PipelineMethod>]) -> Vec<String> {
    let mut solvers: Vec<String> = methods
        .iter()
        .filter_map(|m| m.solver().map(str::to_string))
        .collect();
    solvers.sort();
    solvers.dedup();
    solvers
}

// ---------------------------------------------------------------- solvers

/// The bilevel solver a pipeline ranking run trains the ranker with.
pub type LmSolver = Box<dyn seal_bilevel::Solver<LmProblem<DynLm>>>;

/// A ranking solver as the pipeline runs it: it builds a fresh
/// [`seal_bilevel::Solver`] for each ranking run (one per seed) from the
/// `[rank]` settings.
pub trait PipelineSolver: Send + Sync {
    /// The name methods refer to ([`PipelineMethod::solver`]); also the
    /// ranker directory (`seed-N/rank-NAME`) and the report's solver column.
    fn name(&self) -> &str;
    /// Prepares the model before the problem is built (e.g. a
    /// twice-differentiable attention path for Hessian-vector products).
    fn configure_model(&self, model: &mut DynLm) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// The solver for one ranking run.
    fn build(&self, config: &RankConfig) -> Result<LmSolver>;
}

impl PipelineSolver for Solver {
    fn name(&self) -> &str {
        Solver::name(*self)
    }
    fn build(&self, config: &RankConfig) -> Result<LmSolver> {
        Ok(match self {
            Solver::Seal => Box::new(SealPenalty),
            Solver::SealFull => {
                let mut full = seal_bilevel::FullPenaltyConfig::default();
                // θ̂ takes the model's optimiser settings.
                full.optimizer = stages::model_optimizer(config.lr);
                full.lr_scale = config.full.lr_scale;
                full.inner_steps = config.full.inner_steps;
                full.warm_start_steps = config.full.warm_start_steps;
                full.warm_start_batch = config.batch;
                full.read_after_update = config.full.read_after_update;
                Box::new(SealPenaltyFull::new(full))
            }
        })
    }
}

/// The implicit-function-theorem solver ([`seal_bilevel::Implicit`]) under
/// the name `implicit`: no built-in method reads it, but a user's method
/// can (for small models; it needs double backward, so it switches the
/// model to the math attention path).
#[derive(Debug, Clone, Copy, Default)]
pub struct ImplicitSolver {
    /// Its settings.
    pub config: ImplicitConfig,
}

impl PipelineSolver for ImplicitSolver {
    fn name(&self) -> &str {
        "implicit"
    }
    fn configure_model(&self, model: &mut DynLm) -> Result<()> {
        model.set_attention_impl(AttentionImpl::Math);
        Ok(())
    }
    fn build(&self, _config: &RankConfig) -> Result<LmSolver> {
        Ok(Box::new(Implicit {
            config: self.config,
        }))
    }
}

/// Solvers by name.
pub type SolverRegistry = NameRegistry<dyn PipelineSolver>;

impl Default for NameRegistry<dyn PipelineSolver> {
    fn default() -> Self {
        let mut registry = Self::empty("solver");
        let builtins: [Arc<dyn PipelineSolver>; 3] = [
            Arc::new(Solver::Seal),
            Arc::new(Solver::SealFull),
            Arc::new(ImplicitSolver::default()),
        ];
        for solver in builtins {
            let _ = registry.register(solver);
        }
        registry
    }
}

impl NameRegistry<dyn PipelineSolver> {
    /// Adds `solver` under its name, replacing a solver of the same name.
    pub fn register(&mut self, solver: Arc<dyn PipelineSolver>) -> Result<&mut Self> {
        let name = solver.name().to_string();
        self.insert(&name, solver)
    }
}

// ---------------------------------------------------------------- judges

/// A judge as the pipeline runs it: built once per run, then asked about
/// every evaluated model's responses beside the keyword rule. Its verdicts
/// are recorded under [`seal_eval::Judge::name`] of the judge it builds.
pub trait PipelineJudge: Send + Sync {
    /// The name `eval.judges` uses.
    fn name(&self) -> &str;
    /// The judge for one run, on `device`, from the `[eval]` settings.
    fn build(&self, config: &EvalConfig, device: Device) -> Result<Box<dyn seal_eval::Judge>>;
}

/// The GCG refusal-keyword rule (`keyword-gcg`), which every evaluation
/// applies anyway; naming it in `eval.judges` adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeywordGcg;

impl PipelineJudge for KeywordGcg {
    fn name(&self) -> &str {
        "keyword-gcg"
    }
    fn build(&self, _config: &EvalConfig, _device: Device) -> Result<Box<dyn seal_eval::Judge>> {
        Ok(Box::new(seal_eval::KeywordJudge::new(
            seal_eval::refusal::RefusalMatcher::gcg(),
        )))
    }
}

/// The trained harm judge (`classifier`) of `eval.judge`, on the base model
/// of `eval.judge_base` (default: the path in its card).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainedClassifier;

impl PipelineJudge for TrainedClassifier {
    fn name(&self) -> &str {
        "classifier"
    }
    fn build(&self, config: &EvalConfig, device: Device) -> Result<Box<dyn seal_eval::Judge>> {
        let dir = config.judge.as_deref().ok_or_else(|| {
            PipelineError::config(
                "eval.judges",
                "`classifier` needs `eval.judge`, a directory written by `seal judge train`",
            )
        })?;
        Ok(Box::new(seal_eval::ClassifierJudge::load(
            dir,
            config.judge_base.as_deref(),
            device,
        )?))
    }
}

/// A judge behind any OpenAI-compatible endpoint (`endpoint`), from the
/// `[eval.endpoint]` table: harm and refusal verdicts with its rubric, and
/// pairwise preferences (what `[eval.win_rate]` needs).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiEndpoint;

impl PipelineJudge for OpenAiEndpoint {
    fn name(&self) -> &str {
        "endpoint"
    }
    fn build(&self, config: &EvalConfig, _device: Device) -> Result<Box<dyn seal_eval::Judge>> {
        let settings = config.endpoint.as_ref().ok_or_else(|| {
            PipelineError::config(
                "eval.judges",
                "`endpoint` needs an `[eval.endpoint]` table (url, model)",
            )
        })?;
        let judge = seal_eval::endpoint::EndpointJudge::new(settings.to_endpoint_config(None)?)?;
        Ok(Box::new(judge))
    }
}

/// Judges by name.
pub type JudgeRegistry = NameRegistry<dyn PipelineJudge>;

impl Default for NameRegistry<dyn PipelineJudge> {
    fn default() -> Self {
        let mut registry = Self::empty("eval.judges");
        let builtins: [Arc<dyn PipelineJudge>; 3] = [
            Arc::new(KeywordGcg),
            Arc::new(TrainedClassifier),
            Arc::new(OpenAiEndpoint),
        ];
        for judge in builtins {
            let _ = registry.register(judge);
        }
        registry
    }
}

impl NameRegistry<dyn PipelineJudge> {
    /// Adds `judge` under its name, replacing a judge of the same name.
    pub fn register(&mut self, judge: Arc<dyn PipelineJudge>) -> Result<&mut Self> {
        let name = judge.name().to_string();
        self.insert(&name, judge)
    }
}

// ------------------------------------------------------------- optimisers

/// The hyper-parameters a stage hands an optimiser factory: the stage's
/// learning rate and the moments' settings (betas (0.9, 0.95) for the
/// model's optimiser, `rank.ranker_betas` for the ranker's). A factory
/// uses what its rule has and ignores the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OptimizerSettings {
    /// Learning rate (before schedules).
    pub lr: f64,
    /// First-moment decay (Adam family); 0 elsewhere.
    pub beta1: f64,
    /// Second-moment decay (Adam family).
    pub beta2: f64,
    /// Denominator epsilon (Adam family).
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl OptimizerSettings {
    /// The model optimiser's settings at `lr` (every training stage's).
    pub fn model(lr: f64) -> Self {
        Self::from(stages::model_optimizer(lr))
    }

    /// The ranker optimiser's settings.
    pub fn ranker(config: &RankConfig) -> Self {
        Self {
            lr: config.ranker_lr,
            beta1: config.ranker_betas[0],
            beta2: config.ranker_betas[1],
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// As an [`AdamWConfig`].
    pub fn adam(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

impl From<AdamWConfig> for OptimizerSettings {
    fn from(c: AdamWConfig) -> Self {
        Self {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }
}

/// An optimiser as the pipeline builds it: over the parameters a stage
/// trains (the LoRA factors, or the ranker's `logits`), with that stage's
/// [`OptimizerSettings`].
pub trait PipelineOptimizer: Send + Sync {
    /// The name the config's `optimizer` keys use.
    fn name(&self) -> &str;
    /// The optimiser over `params` (names and order as given).
    fn build(
        &self,
        params: Vec<(String, Tensor)>,
        settings: &OptimizerSettings,
    ) -> Result<Box<dyn Optimizer>>;
}

/// The three update rules of [`seal_model::optim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuiltinOptimizer {
    /// `adamw`: Adam with decoupled weight decay.
    AdamW,
    /// `adam`: Adam with L2 weight decay.
    Adam,
    /// `sgd`: plain gradient descent (no momentum).
    Sgd,
}

impl PipelineOptimizer for BuiltinOptimizer {
    fn name(&self) -> &str {
        match self {
            BuiltinOptimizer::AdamW => "adamw",
            BuiltinOptimizer::Adam => "adam",
            BuiltinOptimizer::Sgd => "sgd",
        }
    }
    fn build(
        &self,
        params: Vec<(String, Tensor)>,
        settings: &OptimizerSettings,
    ) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            BuiltinOptimizer::AdamW => Box::new(AdamW::new(params, settings.adam())),
            BuiltinOptimizer::Adam => Box::new(Adam::new(params, settings.adam())),
            BuiltinOptimizer::Sgd => Box::new(Sgd::new(
                params,
                SgdConfig {
                    lr: settings.lr,
                    weight_decay: settings.weight_decay,
                    ..SgdConfig::default()
                },
            )),
        })
    }
}

/// Optimisers by name.
pub type OptimizerRegistry = NameRegistry<dyn PipelineOptimizer>;

impl Default for NameRegistry<dyn PipelineOptimizer> {
    fn default() -> Self {
        let mut registry = Self::empty("optimizer");
        for optimizer in [
            BuiltinOptimizer::AdamW,
            BuiltinOptimizer::Adam,
            BuiltinOptimizer::Sgd,
        ] {
            let _ = registry.register(Arc::new(optimizer));
        }
        registry
    }
}

impl NameRegistry<dyn PipelineOptimizer> {
    /// Adds `optimizer` under its name, replacing one of the same name.
    pub fn register(&mut self, optimizer: Arc<dyn PipelineOptimizer>) -> Result<&mut Self> {
        let name = optimizer.name().to_string();
        self.insert(&name, optimizer)
    }
}

// ---------------------------------------------------------- process-wide

/// The process-wide registries.
struct Global {
    methods: RwLock<MethodRegistry>,
    solvers: RwLock<SolverRegistry>,
    judges: RwLock<JudgeRegistry>,
    optimizers: RwLock<OptimizerRegistry>,
}

fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| Global {
        methods: RwLock::new(MethodRegistry::default()),
        solvers: RwLock::new(SolverRegistry::default()),
        judges: RwLock::new(JudgeRegistry::default()),
        optimizers: RwLock::new(OptimizerRegistry::default()),
    })
}

/// A registry's current value (a poisoned lock still holds valid maps:
/// registration is a single insert).
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Registers `method` process-wide (replacing a method of the same name), so
/// that configurations and runs can name it.
pub fn register_method(method: Arc<dyn PipelineMethod>) -> Result<()> {
    write(&global().methods).register(method)?;
    Ok(())
}

/// The process-wide method registry: the built-ins and every
/// [`register_method`] so far.
pub fn registered_methods() -> MethodRegistry {
    read(&global().methods)
}

/// Registers `solver` process-wide (replacing one of the same name), so
/// that methods can read its rankers.
pub fn register_solver(solver: Arc<dyn PipelineSolver>) -> Result<()> {
    write(&global().solvers).register(solver)?;
    Ok(())
}

/// The process-wide solver registry.
pub fn registered_solvers() -> SolverRegistry {
    read(&global().solvers)
}

/// Registers `judge` process-wide (replacing one of the same name), so that
/// `eval.judges` can name it.
pub fn register_judge(judge: Arc<dyn PipelineJudge>) -> Result<()> {
    write(&global().judges).register(judge)?;
    Ok(())
}

/// The process-wide judge registry.
pub fn registered_judges() -> JudgeRegistry {
    read(&global().judges)
}

/// Registers `optimizer` process-wide (replacing one of the same name), so
/// that the config's `optimizer` keys can name it.
pub fn register_optimizer(optimizer: Arc<dyn PipelineOptimizer>) -> Result<()> {
    write(&global().optimizers).register(optimizer)?;
    Ok(())
}

/// The process-wide optimiser registry.
pub fn registered_optimizers() -> OptimizerRegistry {
    read(&global().optimizers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_registered_by_name() {
        assert!(registered_methods().contains("seal-full"));
        assert_eq!(
            SolverRegistry::default().names(),
            ["implicit", "seal", "seal-full"]
        );
        assert_eq!(
            JudgeRegistry::default().names(),
            ["classifier", "endpoint", "keyword-gcg"]
        );
        assert_eq!(
            OptimizerRegistry::default().names(),
            ["adam", "adamw", "sgd"]
        );
    }

    #[test]
    fn unknown_names_list_the_registered_ones() {
        let e = OptimizerRegistry::default()
            .lookup("finetune.optimizer", "lion")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("finetune.optimizer"), "{e}");
        assert!(e.contains("lion") && e.contains("adam, adamw, sgd"), "{e}");
    }

    #[test]
    fn names_outside_the_safe_alphabet_are_refused() {
        let mut r = SolverRegistry::empty("solver");
        assert!(r.insert("../x", Arc::new(Solver::Seal)).is_err());
        assert!(r.insert("", Arc::new(Solver::Seal)).is_err());
        assert!(r.insert("seal_v2", Arc::new(Solver::Seal)).is_ok());
    }

    #[test]
    fn the_builtin_optimizers_keep_the_settings() {
        let p = Tensor::zeros([3], (tch::Kind::Float, Device::Cpu)).set_requires_grad(true);
        let s = OptimizerSettings::model(3e-4);
        for name in ["adamw", "adam", "sgd"] {
            let o = OptimizerRegistry::default()
                .get(name)
                .unwrap()
                .build(vec![("w".into(), p.shallow_clone())], &s)
                .unwrap();
            assert_eq!(o.name(), name);
            assert_eq!(o.learning_rate(), 3e-4);
            assert_eq!(o.params().len(), 1);
        }
    }
}
