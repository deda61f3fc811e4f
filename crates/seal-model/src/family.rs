//! Model families by HF `model_type`: the registry that turns an HF model
//! directory into a [`DynLm`] of the right architecture.
//!
//! Built-in families register themselves exactly as a user's do, through
//! [`register_family`]; a downstream crate that implements [`crate::LoraLm`]
//! for its own architecture registers a loader once at start-up, and then
//! `seal`'s pipeline, CLI and evaluation open its checkpoints like any other.

use crate::adapter::DynLm;
use crate::error::{ModelError, Result};
use crate::llama::{Llama, LoadOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

/// Loads an HF model directory of one family.
pub type LoadFn = Arc<dyn Fn(&Path, &LoadOptions) -> Result<DynLm> + Send + Sync>;

fn registry() -> &'static RwLock<BTreeMap<String, LoadFn>> {
    static REGISTRY: OnceLock<RwLock<BTreeMap<String, LoadFn>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut families: BTreeMap<String, LoadFn> = BTreeMap::new();
        let llama: LoadFn = Arc::new(|dir, opts| Ok(Box::new(Llama::load(dir, opts)?) as DynLm));
        // One block layout covers these three (see `config`).
        for model_type in ["llama", "mistral", "qwen2"] {
            families.insert(model_type.into(), Arc::clone(&llama));
        }
        crate::neox::register(&mut families);
        crate::phi3::register(&mut families);
        RwLock::new(families)
    })
}

/// Registers (or replaces) the loader for `model_type`.
pub fn register_family(model_type: &str, load: LoadFn) {
    registry()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(model_type.to_string(), load);
}

/// The registered `model_type`s, sorted.
pub fn families() -> Vec<String> {
    registry()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// `model_type` of the HF directory `dir` (from its `config.json`).
pub fn model_type_of(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match value.get("model_type") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ModelError::Config {
            path,
            message: format!("field `model_type`: expected a string, got {other}"),
        }),
        None => Err(ModelError::Config {
            path,
            message: "field `model_type` is missing".into(),
        }),
    }
}

/// Opens the HF model directory `dir` with the loader registered for its
/// `model_type`.
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<DynLm> {
    let model_type = model_type_of(dir)?;
    let load = registry()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&model_type)
        .cloned();
    match load {
        Some(load) => load(dir, opts),
        None => Err(ModelError::UnsupportedModelType {
            path: dir.join("config.json"),
            model_type,
            supported: families().join(", "),
        }),
    }
}
