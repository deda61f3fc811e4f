//! LoRA adapters (Hu et al., 2021) in PEFT's on-disk format.
//!
//! An adapter adds `scale · B·A` to selected linear layers of a frozen base:
//! `A` is `[r, in]` (Kaiming-uniform initialised, as PEFT), `B` is `[out, r]`
//! (zeros, so training starts from the base model) and `scale = alpha / r`
//! (`alpha / sqrt(r)` with rsLoRA). SEAL adapts `q_proj` and `v_proj`.
//!
//! Files are PEFT-compatible: `adapter_config.json` and
//! `adapter_model.safetensors` with keys such as
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, so
//! `peft.PeftModel.from_pretrained` loads what we write and we load PEFT's.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The linear layers of a Llama block, by their HF module names (every one
/// can carry LoRA). Other families name theirs differently (GPT-NeoX:
/// `query_key_value`, `dense`...; Phi-3: `qkv_proj`, `gate_up_proj`...);
/// the model checks that every target names one of its modules.
pub const LORA_TARGETABLE: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA hyper-parameters.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// Scaling numerator `alpha`.
    pub alpha: f64,
    /// Dropout applied to the adapter's input while training.
    pub dropout: f64,
    /// Module names to adapt (for Llama, see [`LORA_TARGETABLE`]).
    pub target_modules: Vec<String>,
    /// Use `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// SEAL's defaults: r = 16, alpha = 32 (scale 2), no dropout, q_proj and v_proj.
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks rank, dropout and target names.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::InvalidInput(
                "LoRA rank r must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidInput(format!(
                "LoRA dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::InvalidInput(
                "LoRA target_modules is empty".into(),
            ));
        }
        for m in &self.target_modules {
            let plain = !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !plain {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA target module `{m}`: expected a module name such as q_proj"
                )));
            }
        }
        Ok(())
    }

    /// Whether `module` (e.g. `q_proj`) is adapted.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|m| m == module)
    }

    /// PEFT's `adapter_config.json` for this config.
    pub fn to_peft_json(&self, base_model: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "base_model_name_or_path": base_model,
            "revision": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
        })
    }

    /// Reads PEFT's `adapter_config.json`, rejecting features we do not
    /// implement (DoRA, per-layer rank or alpha patterns, bias training).
    pub fn from_peft_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.into(),
                    what: "PEFT adapter config".into(),
                }
            } else {
                ModelError::io(path, e)
            }
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        let bad = |message: String| ModelError::Config {
            path: path.into(),
            message,
        };
        let peft_type = v
            .get("peft_type")
            .and_then(|x| x.as_str())
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "field `peft_type`: `{peft_type}` is not supported (LORA)"
            )));
        }
        if v.get("use_dora").and_then(|x| x.as_bool()).unwrap_or(false) {
            return Err(bad(
                "field `use_dora`: DoRA adapters are not supported".into()
            ));
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if v.get(field)
                .and_then(|x| x.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(format!(
                    "field `{field}`: per-layer patterns are not supported"
                )));
            }
        }
        if let Some(bias) = v.get("bias").and_then(|x| x.as_str()) {
            if bias != "none" {
                return Err(bad(format!(
                    "field `bias`: `{bias}` is not supported (none)"
                )));
            }
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("field `r`: missing or not an integer".into()))?
            as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("field `lora_alpha`: missing or not a number".into()))?;
        let dropout = v
            .get("lora_dropout")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0);
        let target_modules = match v.get("target_modules") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("field `target_modules`: not a list of strings".into()))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(serde_json::Value::String(s)) => {
                return Err(bad(format!(
                    "field `target_modules`: regex targets (`{s}`) are not supported; list module names"
                )))
            }
            _ => return Err(bad("field `target_modules`: missing".into())),
        };
        let cfg = Self {
            r,
            alpha,
            dropout,
            target_modules,
            use_rslora: v
                .get("use_rslora")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}
