//! Selection methods by name: how a rule enters a pipeline run.
//!
//! A [`PipelineMethod`] turns the pool, and what the run computed for it (the
//! SEAL ranker's logits, the aligned model, the anchors), into a
//! [`Selection`]; the pipeline then fine-tunes on that selection, evaluates
//! the model and records the run under the method's name in `results.json`
//! and the report. The built-in methods ([`Method`]) are registered through
//! [`MethodRegistry::register`] exactly as a user's own are. Runs look names
//! up in the process-wide registry: a downstream crate adds its rule once at
//! start-up with [`register_method`] and then names it in `select.methods`
//! of a TOML file, the CLI or code (see `examples/custom_rule.rs`), and
//! configurations naming an unregistered method are refused when parsed.

use crate::config::{Method, Solver};
use crate::error::{PipelineError, Result};
use crate::stages::{self, MethodInputs};
use seal_select::Selection;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

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
    /// The SEAL solver whose ranker logits the method reads (the run trains
    /// one ranker per solver and seed), if any.
    fn solver(&self) -> Option<Solver> {
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
    fn solver(&self) -> Option<Solver> {
        Method::solver(*self)
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

/// Methods by name. [`Default`] holds the built-ins.
#[derive(Clone)]
pub struct MethodRegistry {
    methods: BTreeMap<String, Arc<dyn PipelineMethod>>,
}

impl Default for MethodRegistry {
    fn default() -> Self {
        let mut registry = Self::empty();
        for method in Method::ALL {
            // Built-in names are kebab-case ASCII: registration cannot fail.
            let _ = registry.register(Arc::new(method));
        }
        registry
    }
}

impl std::fmt::Debug for MethodRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.methods.keys()).finish()
    }
}

impl MethodRegistry {
    /// A registry without any method.
    pub fn empty() -> Self {
        Self {
            methods: BTreeMap::new(),
        }
    }

    /// Adds `method` under its name, replacing a method of the same name.
    /// The name becomes a directory of the run (`OUT/seed-N/NAME`), so it
    /// must be non-empty ASCII letters, digits, `-` and `_`.
    pub fn register(&mut self, method: Arc<dyn PipelineMethod>) -> Result<&mut Self> {
        let name = method.name().to_string();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(PipelineError::config(
                "select.methods",
                format!("method name `{name}`: expected ASCII letters, digits, `-` and `_`"),
            ));
        }
        self.methods.insert(name, method);
        Ok(self)
    }

    /// The method called `name`; the error lists the registered names.
    pub fn get(&self, name: &str) -> Result<Arc<dyn PipelineMethod>> {
        self.methods.get(name).cloned().ok_or_else(|| {
            PipelineError::config(
                "select.methods",
                format!(
                    "unknown method `{name}` (registered: {})",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// The methods called `names`, in order.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Arc<dyn PipelineMethod>>> {
        names.iter().map(|n| self.get(n)).collect()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.methods.keys().cloned().collect()
    }

    /// The ranker solvers that `names` need, sorted and deduplicated.
    pub fn solvers(&self, names: &[String]) -> Result<Vec<Solver>> {
        Ok(solvers_of(&self.resolve(names)?))
    }
}

/// The ranker solvers `methods` read, sorted and deduplicated.
pub fn solvers_of(methods: &[Arc<dyn PipelineMethod>]) -> Vec<Solver> {
    let mut solvers: Vec<Solver> = methods.iter().filter_map(|m| m.solver()).collect();
    solvers.sort();
    solvers.dedup();
    solvers
}

fn global() -> &'static RwLock<MethodRegistry> {
    static GLOBAL: OnceLock<RwLock<MethodRegistry>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(MethodRegistry::default()))
}

/// Registers `method` process-wide (replacing a method of the same name), so
/// that configurations and runs can name it.
pub fn register_method(method: Arc<dyn PipelineMethod>) -> Result<()> {
    global()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .register(method)?;
    Ok(())
}

/// The process-wide registry: the built-ins and every [`register_method`]
/// so far.
pub fn registered_methods() -> MethodRegistry {
    global()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}
