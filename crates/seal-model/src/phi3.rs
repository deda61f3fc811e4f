//! Phi-3 family decoder (Phi-3-mini/-medium, Phi-3.5-mini, Phi-4-mini;
//! HF `model_type` `phi3`) on libtorch.
//!
//! Architecture as in Abdin et al. (2024), "Phi-3 Technical Report: A
//! Highly Capable Language Model Locally on Your Phone", and the Hugging
//! Face `transformers` implementation (`models/phi3/modeling_phi3.py`,
//! `Phi3ForCausalLM`; configuration in `configuration_phi3.py`). The blocks
//! are Llama's with fused projections: one `self_attn.qkv_proj` whose output
//! splits as `[q (heads·hd), k (kv_heads·hd), v (kv_heads·hd)]` and one
//! `mlp.gate_up_proj` whose output splits in halves (gate, then up; SiLU on
//! the gate). Rotary embeddings are rotate-half, optionally on the first
//! `partial_rotary_factor · head_dim` channels only (Phi-4-mini), with
//! LongRoPE for the 128k variants (`rope_scaling` type `longrope`, older
//! files `su`): the short or long per-frequency factors are chosen by the
//! longest position of a call against `original_max_position_embeddings`,
//! and cos/sin are scaled by the attention factor. A KV cache filled with
//! the short factors cannot be extended past that point (transformers
//! recomputes the whole sequence there): such a step is an
//! [`ModelError::Unsupported`] error rather than silently mixed rotations.
//!
//! `sliding_window` (2047 in Phi-3-mini-4k) is not applied, as for Mistral
//! in [`crate::llama`]: SEAL's sequences are far shorter. A warning is
//! logged once when a sequence is long enough for it to matter.
//!
//! LoRA targets the fused modules by their HF names (`qkv_proj`, `o_proj`,
//! `gate_up_proj`, `down_proj`), with PEFT keys such as
//! `base_model.model.model.layers.0.self_attn.qkv_proj`; SEAL's default
//! `q_proj`/`v_proj` targets match nothing here and are refused.

use crate::adapter::{DynLm, LoraLm};
use crate::config::TokenIds;
use crate::error::{ModelError, Result};
use crate::family::LoadFn;
use crate::layers::{
    attach_lora, attend, check_token_ids, collect_taps, compute_kind, load_lora_into,
    merge_lora_sites, rotate_half, seeded_init_lock, softmax_matmul, step_masks, AttentionMask,
    Linear, LoraAdapter, LoraSite, RmsNorm, StepMasks,
};
use crate::llama::{AttentionImpl, LoadOptions};
use crate::lora::LoraConfig;
use crate::model::{linear_head_nll, CausalLm, KvCache, LmBatch};
use crate::weights::{save_safetensors, torch_dtype_name, write_json_atomic, WeightFiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

/// `rope_scaling` / `rope_parameters` as written in Phi-3 `config.json`
/// files (transformers 4.x writes the former, 5.x the latter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HfPhi3Rope {
    /// `default`, `longrope` (`su` and `yarn` are read as `longrope`, as
    /// transformers does for Phi-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type` (both may be present in one file).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    /// RoPE base (transformers 5.x keeps it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Fraction of each head's channels that rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// LongRoPE: per-frequency divisors up to the original context length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    /// LongRoPE: per-frequency divisors beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
    /// LongRoPE: context extension factor (default: `max_position_embeddings
    /// / original_max_position_embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// LongRoPE: scale of cos/sin (default derived from `factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// Ignored for Phi-3: transformers takes the top-level field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// Serde image of the fields of a Phi-3 `config.json` that the model uses
/// (unknown fields are ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfPhi3Config {
    /// `phi3`.
    pub model_type: String,
    /// `["Phi3ForCausalLM"]` in files we write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (each half of `gate_up_proj`).
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of key/value heads (defaults to `num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width (defaults to `hidden_size / num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon (default 1e-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// RoPE base (older files; default 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Fraction of each head's channels that rotate (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// RoPE variant (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<HfPhi3Rope>,
    /// RoPE variant (transformers 5.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<HfPhi3Rope>,
    /// Context length (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// Pre-training context length, LongRoPE's switch point (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// Whether `lm_head` shares the embedding matrix (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// MLP activation (only `silu` is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Beginning-of-sequence token. This and the other token ids are
    /// written as `null` when absent: transformers' Phi-3 defaults (1 and
    /// 32000) would otherwise apply, outside a small vocabulary.
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<TokenIds>,
    /// Sliding attention window (not applied; see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Saved dtype (transformers 4.x), informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Saved dtype (transformers 5.x), informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

/// LongRoPE parameters (Phi-3 128k variants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongRope {
    /// Frequency divisors for sequences up to the original context length
    /// (`rotary_dim / 2` of them).
    pub short_factor: Vec<f64>,
    /// Frequency divisors for longer sequences (`rotary_dim / 2`).
    pub long_factor: Vec<f64>,
    /// Context extension factor; `None`: max / original context length.
    pub factor: Option<f64>,
    /// cos/sin scale; `None`: `√(1 + ln factor / ln original)` (1 when
    /// `factor ≤ 1`).
    pub attention_factor: Option<f64>,
}

/// Validated architecture hyper-parameters of a Phi-3 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Fraction of each head's channels that rotate, in (0, 1].
    pub partial_rotary_factor: f64,
    /// LongRoPE, when the checkpoint uses it.
    pub long_rope: Option<LongRope>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Pre-training context length (LongRoPE switches factors beyond it).
    pub original_max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Sliding attention window of the checkpoint (not applied).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
}

impl Phi3Config {
    /// Reads and validates a Phi-3 `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.into(),
                    what: "model config".into(),
                }
            } else {
                ModelError::io(path, e)
            }
        })?;
        let hf: HfPhi3Config = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_hf(&hf, path)
    }

    /// Validates an [`HfPhi3Config`] with transformers' defaults and
    /// precedence; `path` is only used in error messages.
    pub fn from_hf(hf: &HfPhi3Config, path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::Config {
            path: path.into(),
            message,
        };
        if hf.model_type != "phi3" {
            return Err(ModelError::UnsupportedModelType {
                path: path.into(),
                model_type: hf.model_type.clone(),
                supported: "phi3 (this loader); other families load through \
                            `seal_model::family::load_model`"
                    .into(),
            });
        }
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(bad(format!(
                    "field `hidden_act`: `{act}` is not supported (silu only)"
                )));
            }
        }
        let heads = hf.num_attention_heads;
        if heads == 0 {
            return Err(bad("field `num_attention_heads` must be positive".into()));
        }
        // transformers: `rope_scaling` wins over `rope_parameters`; values in
        // the dict win over the top-level `rope_theta` / `partial_rotary_factor`.
        let (rope, rope_field) = match (&hf.rope_scaling, &hf.rope_parameters) {
            (Some(r), _) => (Some(r), "rope_scaling"),
            (None, Some(r)) => (Some(r), "rope_parameters"),
            (None, None) => (None, "rope_scaling"),
        };
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(hf.rope_theta)
            .unwrap_or(10_000.0);
        let partial_rotary_factor = rope
            .and_then(|r| r.partial_rotary_factor)
            .or(hf.partial_rotary_factor)
            .unwrap_or(1.0);
        let long_rope = match rope {
            None => None,
            Some(r) => {
                let kind = r
                    .rope_type
                    .as_deref()
                    .or(r.legacy_type.as_deref())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "longrope" | "su" | "yarn" => {
                        let factors = |v: &Option<Vec<f64>>, name: &str| {
                            v.clone().ok_or_else(|| {
                                bad(format!(
                                    "field `{rope_field}.{name}` is missing (required by LongRoPE)"
                                ))
                            })
                        };
                        Some(LongRope {
                            short_factor: factors(&r.short_factor, "short_factor")?,
                            long_factor: factors(&r.long_factor, "long_factor")?,
                            factor: r.factor,
                            attention_factor: r.attention_factor,
                        })
                    }
                    other => {
                        return Err(bad(format!(
                            "field `{rope_field}.rope_type`: `{other}` is not supported by Phi-3 \
                             (default, longrope)"
                        )))
                    }
                }
            }
        };
        let cfg = Self {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(heads),
            // transformers floors here (no divisibility required).
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            rope_theta,
            partial_rotary_factor,
            long_rope,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            // Phi3Config always has this field (default 4096), and
            // transformers prefers it over the one inside the rope dict.
            original_max_position_embeddings: hf.original_max_position_embeddings.unwrap_or(4096),
            vocab_size: hf.vocab_size,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            sliding_window: hf.sliding_window,
            bos_token_id: hf
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
            pad_token_id: hf
                .pad_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
        };
        cfg.check()
            .map_err(|m| bad(m.replace("`long_rope.", &format!("`{rope_field}."))))?;
        Ok(cfg)
    }

    /// Consistency of the fields; the message names the offending field.
    fn check(&self) -> std::result::Result<(), String> {
        for (v, field) in [
            (self.hidden_size, "hidden_size"),
            (self.intermediate_size, "intermediate_size"),
            (self.num_hidden_layers, "num_hidden_layers"),
            (self.num_attention_heads, "num_attention_heads"),
            (self.num_key_value_heads, "num_key_value_heads"),
            (self.head_dim, "head_dim"),
            (self.vocab_size, "vocab_size"),
            (
                self.original_max_position_embeddings,
                "original_max_position_embeddings",
            ),
        ] {
            if v == 0 {
                return Err(format!("field `{field}` must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "field `num_key_value_heads`: {} does not divide num_attention_heads {}",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "field `rms_norm_eps`: {} is not a non-negative number",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "field `rope_theta`: {} is not a positive number",
                self.rope_theta
            ));
        }
        let prf = self.partial_rotary_factor;
        if !(prf > 0.0 && prf <= 1.0) {
            return Err(format!(
                "field `partial_rotary_factor`: {prf} is outside (0, 1]"
            ));
        }
        let rd = self.rotary_dim();
        if rd == 0 || rd % 2 != 0 {
            return Err(format!(
                "field `partial_rotary_factor`: {prf} × head_dim {} gives {rd} rotary channels; \
                 RoPE needs a positive even number",
                self.head_dim
            ));
        }
        if let Some(lr) = &self.long_rope {
            for (v, name) in [
                (&lr.short_factor, "short_factor"),
                (&lr.long_factor, "long_factor"),
            ] {
                if v.len() != rd / 2 {
                    return Err(format!(
                        "field `long_rope.{name}`: {} values, expected rotary_dim / 2 = {}",
                        v.len(),
                        rd / 2
                    ));
                }
                if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                    return Err(format!(
                        "field `long_rope.{name}`: {x} is not a positive number"
                    ));
                }
            }
            for (v, name) in [
                (lr.factor, "factor"),
                (lr.attention_factor, "attention_factor"),
            ] {
                if let Some(x) = v.filter(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(format!(
                        "field `long_rope.{name}`: {x} is not a positive number"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Channels per head that rotate: `⌊head_dim · partial_rotary_factor⌋`
    /// (transformers' `int(...)`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// The factor cos and sin are multiplied by (1 without LongRoPE).
    pub fn rope_attention_scaling(&self) -> f64 {
        let Some(lr) = &self.long_rope else {
            return 1.0;
        };
        if let Some(a) = lr.attention_factor {
            return a;
        }
        let original = self.original_max_position_embeddings as f64;
        let factor = lr
            .factor
            .unwrap_or(self.max_position_embeddings as f64 / original);
        if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / original.ln()).sqrt()
        }
    }

    /// A tiny random-initialisable config for tests and examples (hidden
    /// 32, 2 blocks, 4 query and 2 key/value heads, untied head).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            partial_rotary_factor: 1.0,
            long_rope: None,
            max_position_embeddings: 256,
            original_max_position_embeddings: 256,
            vocab_size,
            tie_word_embeddings: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    /// The HF `config.json` image of this config, in the format both
    /// transformers 4.x and 5.x read (`rope_theta` and
    /// `partial_rotary_factor` top level, `rope_scaling`).
    pub fn to_hf(&self) -> HfPhi3Config {
        let rope_scaling = self.long_rope.as_ref().map(|lr| HfPhi3Rope {
            rope_type: Some("longrope".into()),
            short_factor: Some(lr.short_factor.clone()),
            long_factor: Some(lr.long_factor.clone()),
            factor: lr.factor,
            attention_factor: lr.attention_factor,
            ..HfPhi3Rope::default()
        });
        HfPhi3Config {
            model_type: "phi3".into(),
            architectures: Some(vec!["Phi3ForCausalLM".into()]),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            vocab_size: self.vocab_size,
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            rms_norm_eps: Some(self.rms_norm_eps),
            rope_theta: Some(self.rope_theta),
            partial_rotary_factor: Some(self.partial_rotary_factor),
            rope_scaling,
            rope_parameters: None,
            max_position_embeddings: Some(self.max_position_embeddings),
            original_max_position_embeddings: Some(self.original_max_position_embeddings),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            hidden_act: Some("silu".into()),
            bos_token_id: self.bos_token_id.map(TokenIds::One),
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(TokenIds::One(*one)),
                many => Some(TokenIds::Many(many.to_vec())),
            },
            pad_token_id: self.pad_token_id.map(TokenIds::One),
            sliding_window: self.sliding_window,
            torch_dtype: Some("float32".into()),
            dtype: None,
        }
    }
}

/// How [`Phi3::build`] fills the base weights.
#[derive(Clone, Copy)]
enum WeightInit {
    /// N(0, 0.02), drawn from the (seeded) global generator.
    Random,
    /// Zeros: a checkpoint overwrites every weight right after.
    Overwritten,
}

struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate: i64,
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// The block's linear layers with their HF module group and name.
    fn linears_mut(&mut self) -> [(&'static str, &'static str, &mut Linear); 4] {
        [
            ("self_attn", "qkv_proj", &mut self.self_attn.qkv_proj),
            ("self_attn", "o_proj", &mut self.self_attn.o_proj),
            ("mlp", "gate_up_proj", &mut self.mlp.gate_up_proj),
            ("mlp", "down_proj", &mut self.mlp.down_proj),
        ]
    }

    /// The block's linears as LoRA sites, with their PEFT keys.
    fn lora_sites(&mut self, layer: usize) -> impl Iterator<Item = LoraSite<'_>> {
        self.linears_mut()
            .into_iter()
            .map(move |(group, name, linear)| LoraSite {
                key: format!("base_model.model.model.layers.{layer}.{group}.{name}"),
                name,
                linear,
            })
    }

    /// The same (shared) base weights without LoRA branches.
    fn fork(&self) -> Self {
        Self {
            input_layernorm: self.input_layernorm.fork(),
            self_attn: Attention {
                qkv_proj: self.self_attn.qkv_proj.fork(),
                o_proj: self.self_attn.o_proj.fork(),
                ..self.self_attn
            },
            post_attention_layernorm: self.post_attention_layernorm.fork(),
            mlp: Mlp {
                gate_up_proj: self.mlp.gate_up_proj.fork(),
                down_proj: self.mlp.down_proj.fork(),
                intermediate: self.mlp.intermediate,
            },
        }
    }
}

/// A Phi-3 causal LM.
pub struct Phi3 {
    config: Phi3Config,
    base: Arc<nn::VarStore>,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// Rotary frequencies (f64), with LongRoPE's short factors.
    inv_freq: Tensor,
    /// LongRoPE's frequencies beyond the original context length.
    long_inv_freq: Option<Tensor>,
    rope_scaling: f64,
    rotary_dim: i64,
    kind: Kind,
    device: Device,
    attention: AttentionImpl,
    training: bool,
    full_finetune: bool,
    lora: Option<LoraAdapter>,
    window_warned: AtomicBool,
}

/// Rotary inverse frequencies over the rotary channels, divided by
/// LongRoPE's per-frequency `factors` when given.
fn rope_inv_freq(cfg: &Phi3Config, factors: Option<&[f64]>) -> Vec<f64> {
    let d = cfg.rotary_dim() as f64;
    (0..cfg.rotary_dim() / 2)
        .map(|i| {
            let f = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            1.0 / (f * cfg.rope_theta.powf(2.0 * i as f64 / d))
        })
        .collect()
}

/// Checks that `weights` holds every base tensor of `c` with the right
/// shape before anything is allocated (the sizes come from `config.json`).
fn check_base_shapes(c: &Phi3Config, weights: &WeightFiles) -> Result<()> {
    let dim = |v: Option<usize>, field: &str| {
        v.and_then(|v| i64::try_from(v).ok()).ok_or_else(|| {
            ModelError::InvalidInput(format!("model config: `{field}` is too large"))
        })
    };
    let h = dim(Some(c.hidden_size), "hidden_size")?;
    let q = dim(
        c.num_attention_heads.checked_mul(c.head_dim),
        "num_attention_heads` × `head_dim",
    )?;
    let kv = dim(
        c.num_key_value_heads.checked_mul(c.head_dim),
        "num_key_value_heads` × `head_dim",
    )?;
    let qkv = q
        .checked_add(kv)
        .and_then(|x| x.checked_add(kv))
        .ok_or_else(|| ModelError::InvalidInput("model config: qkv width is too large".into()))?;
    let inter = dim(Some(c.intermediate_size), "intermediate_size")?;
    let gate_up = dim(c.intermediate_size.checked_mul(2), "2 × intermediate_size")?;
    let vocab = dim(Some(c.vocab_size), "vocab_size")?;
    weights.check_shape("model.embed_tokens.weight", &[vocab, h])?;
    if !c.tie_word_embeddings {
        weights.check_shape("lm_head.weight", &[vocab, h])?;
    }
    weights.check_shape("model.norm.weight", &[h])?;
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            weights.check_shape(&format!("{p}.{norm}.weight"), &[h])?;
        }
        for (name, out, inp) in [
            ("self_attn.qkv_proj", qkv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_up_proj", gate_up, h),
            ("mlp.down_proj", h, inter),
        ] {
            weights.check_shape(&format!("{p}.{name}.weight"), &[out, inp])?;
        }
    }
    Ok(())
}

impl Phi3 {
    /// Builds a randomly initialised model (N(0, 0.02) weights, unit norms)
    /// on `device` in `kind`; `seed` makes it reproducible.
    pub fn random(config: &Phi3Config, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        config.check().map_err(ModelError::InvalidInput)?;
        let _lock = seeded_init_lock();
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(device);
        Self::build(config, &mut vs, kind, WeightInit::Random)
    }

    /// Loads an HF Phi-3 directory (`config.json` plus `model.safetensors`
    /// or a sharded index). The tokenizer is loaded separately.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = Phi3Config::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open_dir(dir)?;
        Self::from_weights(&config, &weights, opts)
    }

    /// Builds the model from already opened weight files.
    pub fn from_weights(
        config: &Phi3Config,
        weights: &WeightFiles,
        opts: &LoadOptions,
    ) -> Result<Self> {
        config.check().map_err(ModelError::InvalidInput)?;
        check_base_shapes(config, weights)?;
        let mut vs = nn::VarStore::new(opts.device);
        let model = Self::build(config, &mut vs, opts.kind, WeightInit::Overwritten)?;
        let _guard = tch::no_grad_guard();
        for (name, mut var) in model.base.variables() {
            let t = weights.load(&name, &var.size(), opts.kind, opts.device)?;
            var.f_copy_(&t)?;
        }
        Ok(model)
    }

    fn build(
        config: &Phi3Config,
        vs: &mut nn::VarStore,
        kind: Kind,
        weight_init: WeightInit,
    ) -> Result<Self> {
        if !matches!(
            kind,
            Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
        ) {
            return Err(ModelError::InvalidInput(format!(
                "unsupported model dtype {kind:?}"
            )));
        }
        let c = config;
        let h = c.hidden_size as i64;
        let q_dim = (c.num_attention_heads * c.head_dim) as i64;
        let kv_dim = (c.num_key_value_heads * c.head_dim) as i64;
        let inter = c.intermediate_size as i64;
        // Weights a checkpoint overwrites start at zero: no draw from the
        // global generator that a concurrently seeded build would see consumed.
        let init = match weight_init {
            WeightInit::Random => nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            WeightInit::Overwritten => nn::Init::Const(0.),
        };
        let root = vs.root();
        let m = &root / "model";
        let embed_tokens = (&m / "embed_tokens").var("weight", &[c.vocab_size as i64, h], init);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = &m / "layers" / i;
            let a = &p / "self_attn";
            let mp = &p / "mlp";
            layers.push(Block {
                input_layernorm: RmsNorm::new(&(&p / "input_layernorm"), h, c.rms_norm_eps),
                self_attn: Attention {
                    qkv_proj: Linear::new(&(&a / "qkv_proj"), h, q_dim + 2 * kv_dim, false, init),
                    o_proj: Linear::new(&(&a / "o_proj"), q_dim, h, false, init),
                    n_heads: c.num_attention_heads as i64,
                    n_kv_heads: c.num_key_value_heads as i64,
                    head_dim: c.head_dim as i64,
                },
                post_attention_layernorm: RmsNorm::new(
                    &(&p / "post_attention_layernorm"),
                    h,
                    c.rms_norm_eps,
                ),
                mlp: Mlp {
                    gate_up_proj: Linear::new(&(&mp / "gate_up_proj"), h, 2 * inter, false, init),
                    down_proj: Linear::new(&(&mp / "down_proj"), inter, h, false, init),
                    intermediate: inter,
                },
            });
        }
        let norm = RmsNorm::new(&(&m / "norm"), h, c.rms_norm_eps);
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (&root / "lm_head").var("weight", &[c.vocab_size as i64, h], init)
        };
        // Variables are created in f32; convert in place, then re-fetch them.
        match kind {
            Kind::Double => vs.double(),
            Kind::BFloat16 => vs.bfloat16(),
            Kind::Half => vs.half(),
            _ => {}
        }
        vs.freeze();
        let device = vs.device();
        let freq = |f: Option<&[f64]>| Tensor::from_slice(&rope_inv_freq(c, f)).to_device(device);
        let inv_freq = freq(c.long_rope.as_ref().map(|lr| lr.short_factor.as_slice()));
        let long_inv_freq = c
            .long_rope
            .as_ref()
            .map(|lr| freq(Some(lr.long_factor.as_slice())));
        let base = Arc::new(std::mem::replace(vs, nn::VarStore::new(device)));
        let mut model = Self {
            config: config.clone(),
            base,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            long_inv_freq,
            rope_scaling: c.rope_attention_scaling(),
            rotary_dim: c.rotary_dim() as i64,
            kind,
            device,
            attention: AttentionImpl::Sdpa,
            training: false,
            full_finetune: false,
            lora: None,
            window_warned: AtomicBool::new(false),
        };
        model.rebind_base()?;
        Ok(model)
    }

    /// Points every layer at the VarStore's current tensors (a dtype
    /// conversion replaced them).
    fn rebind_base(&mut self) -> Result<()> {
        let vars = self.base.variables();
        let get = |name: &str| -> Result<Tensor> {
            vars.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
                ModelError::InvalidInput(format!("internal: variable `{name}` missing"))
            })
        };
        self.embed_tokens = get("model.embed_tokens.weight")?;
        self.lm_head = if self.config.tie_word_embeddings {
            self.embed_tokens.shallow_clone()
        } else {
            get("lm_head.weight")?
        };
        self.norm.weight = get("model.norm.weight")?;
        for (i, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            b.input_layernorm.weight = get(&format!("{p}.input_layernorm.weight"))?;
            b.post_attention_layernorm.weight =
                get(&format!("{p}.post_attention_layernorm.weight"))?;
            for (group, name, lin) in b.linears_mut() {
                lin.weight = get(&format!("{p}.{group}.{name}.weight"))?;
            }
        }
        Ok(())
    }

    /// The architecture.
    pub fn config(&self) -> &Phi3Config {
        &self.config
    }

    /// Selects the attention kernel (use [`AttentionImpl::Math`] for double backward).
    pub fn set_attention_impl(&mut self, attention: AttentionImpl) {
        self.attention = attention;
    }

    /// Training mode enables LoRA dropout.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Makes the base weights trainable (full fine-tuning) or frozen.
    pub fn set_full_finetune(&mut self, on: bool) {
        self.full_finetune = on;
        for (_, v) in self.base.variables() {
            let _ = v.set_requires_grad(on);
        }
    }

    /// Base weights by HF name (shared storage, not copies), sorted.
    pub fn base_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.base.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Attaches a freshly initialised LoRA adapter (replacing any other).
    /// Targets are the fused module names (`qkv_proj`, `o_proj`,
    /// `gate_up_proj`, `down_proj`).
    pub fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        let (device, kind) = (self.device, self.kind);
        let adapter = attach_lora(self.lora_sites(), config, seed, device, kind)?;
        self.lora = Some(adapter);
        Ok(())
    }

    fn lora_sites(&mut self) -> Vec<LoraSite<'_>> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, b)| b.lora_sites(i))
            .collect()
    }

    /// The attached LoRA adapter, if any.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// LoRA parameters by PEFT key, sorted by name.
    pub fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        self.lora
            .as_ref()
            .map(LoraAdapter::parameters)
            .unwrap_or_default()
    }

    /// A second model over the same (shared, not copied) base weights with a
    /// fresh LoRA adapter. The base must stay frozen while forks share it.
    pub fn fork_with_lora(&self, config: &LoraConfig, seed: i64) -> Result<Self> {
        let mut fork = Self {
            config: self.config.clone(),
            base: Arc::clone(&self.base),
            embed_tokens: self.embed_tokens.shallow_clone(),
            layers: self.layers.iter().map(Block::fork).collect(),
            norm: self.norm.fork(),
            lm_head: self.lm_head.shallow_clone(),
            inv_freq: self.inv_freq.shallow_clone(),
            long_inv_freq: self.long_inv_freq.as_ref().map(Tensor::shallow_clone),
            rope_scaling: self.rope_scaling,
            rotary_dim: self.rotary_dim,
            kind: self.kind,
            device: self.device,
            attention: self.attention,
            training: self.training,
            full_finetune: false,
            lora: None,
            window_warned: AtomicBool::new(self.window_warned.load(Ordering::Relaxed)),
        };
        fork.add_lora(config, seed)?;
        Ok(fork)
    }

    /// Saves the adapter in PEFT format (`adapter_config.json`,
    /// `adapter_model.safetensors`), each file written atomically.
    pub fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let adapter = self.lora.as_ref().ok_or_else(|| {
            ModelError::InvalidInput("the model has no LoRA adapter to save".into())
        })?;
        adapter.save(dir, base_model)
    }

    /// Loads a PEFT LoRA adapter directory, replacing any attached adapter.
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let (device, kind) = (self.device, self.kind);
        let adapter = load_lora_into(self.lora_sites(), dir, device, kind)?;
        self.lora = Some(adapter);
        Ok(())
    }

    /// Folds the adapter into the base weights (`W += scale·B·A`) and detaches
    /// it. Forks sharing this base see the merged weights too.
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.lora.is_none() {
            return Err(ModelError::InvalidInput(
                "the model has no LoRA adapter to merge".into(),
            ));
        }
        merge_lora_sites(self.lora_sites())?;
        self.lora = None;
        Ok(())
    }

    /// Writes an HF model directory (`config.json`, `model.safetensors`)
    /// that transformers' `Phi3ForCausalLM` loads.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = self.base_parameters();
        if self.config.tie_word_embeddings {
            tensors.retain(|(n, _)| n != "lm_head.weight");
        }
        save_safetensors(
            &dir.join("model.safetensors"),
            &tensors,
            Some([("format".to_string(), "pt".to_string())].into()),
        )?;
        let mut hf = self.config.to_hf();
        hf.torch_dtype = Some(torch_dtype_name(self.kind).into());
        write_json_atomic(&dir.join("config.json"), &hf)
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<()> {
        if input_ids.size().contains(&0) {
            return Err(ModelError::InvalidInput(format!(
                "input_ids must be a non-empty [batch, seq], got {:?}",
                input_ids.size()
            )));
        }
        check_token_ids(input_ids, self.config.vocab_size)
    }

    /// The rotary frequencies for a call whose longest sequence reaches
    /// position `seq_len - 1`: LongRoPE's long factors beyond the original
    /// context length (transformers' rule), else the short ones. `past_len`
    /// is the longest sequence already in the cache.
    fn step_inv_freq(&self, positions: &Tensor, past_len: i64) -> Result<&Tensor> {
        let Some(long) = &self.long_inv_freq else {
            return Ok(&self.inv_freq);
        };
        let original = self.config.original_max_position_embeddings as i64;
        let seq_len = positions.max().int64_value(&[]) + 1;
        if seq_len <= original {
            return Ok(&self.inv_freq);
        }
        if past_len > 0 && past_len <= original {
            // The cached keys were rotated with the short factors; transformers
            // drops its cache here and recomputes the whole sequence.
            return Err(ModelError::Unsupported(format!(
                "LongRoPE: this step takes the sequence to {seq_len} positions, past \
                 original_max_position_embeddings = {original}, where the rotary factors switch \
                 from short to long; the KV cache holds keys rotated with the short ones. Run the \
                 whole sequence again without the cache (or keep sequences within {original} \
                 tokens)"
            )));
        }
        Ok(long)
    }

    fn warn_sliding_window(&self, keys: i64) {
        if let Some(w) = self.config.sliding_window {
            if keys > w as i64 && !self.window_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    sliding_window = w,
                    sequence = keys,
                    "Phi-3: a sequence is longer than the checkpoint's sliding window, which is \
                     not applied; attention sees the whole sequence (transformers would not)"
                );
            }
        }
    }

    /// Final-norm hidden states `[B, L, H]` for new tokens, extending `cache`
    /// when given. `attention_mask` is `[B, L]` (1 = token, 0 = padding) for
    /// the new tokens; left and right padding are both handled.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut taps = Vec::new();
        self.forward_impl(input_ids, attention_mask, cache, &[], &mut taps)
    }

    /// Residual-stream hidden states `[B, L, H]` after each of `layers`
    /// (1-based block numbers; 0 is the embedding output), in the order
    /// given. The forward pass stops after the deepest block asked for.
    pub fn forward_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        collect_taps(layers, self.config.num_hidden_layers, |taps| {
            self.forward_impl(input_ids, attention_mask, None, layers, taps)
                .map(|_| ())
        })
    }

    /// The forward pass. With `taps` non-empty, records the residual stream
    /// after those blocks and returns early after the deepest one.
    fn forward_impl(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        taps: &[usize],
        tapped: &mut Vec<(usize, Tensor)>,
    ) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        let (b, l) = (input_ids.size()[0], input_ids.size()[1]);
        // Longest sequence in the cache before this step (for LongRoPE).
        let past_len = match cache.as_deref().and_then(KvCache::mask) {
            Some(m) if m.numel() > 0 => m
                .sum_dim_intlist(1, false, Kind::Int64)
                .max()
                .int64_value(&[]),
            _ => 0,
        };
        let StepMasks {
            mask,
            full_mask,
            positions,
        } = step_masks(attention_mask, b, l, cache.as_deref(), self.device)?;
        self.warn_sliding_window(full_mask.size()[1]);
        let inv_freq = self.step_inv_freq(&positions, past_len)?;
        let freqs =
            positions.to_kind(Kind::Double).unsqueeze(-1) * inv_freq.unsqueeze(0).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let rope_kind = compute_kind(self.kind);
        // Angles in f64, cos/sin in f32 (f64 models: f64), then the compute dtype.
        let trig = |t: Tensor| (t * self.rope_scaling).to_kind(self.kind).unsqueeze(1);
        let cos = trig(emb.to_kind(rope_kind).cos());
        let sin = trig(emb.to_kind(rope_kind).sin());

        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let deepest = taps.iter().copied().max();
        if taps.contains(&0) {
            tapped.push((0, x.shallow_clone()));
        }
        if deepest == Some(0) {
            return Ok(x);
        }
        for (i, block) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let h = block.input_layernorm.forward(&x);
            let attn =
                self.attention_forward(&block.self_attn, &h, &cos, &sin, &mask, layer_cache)?;
            x = &x + attn; // out of place: autograd needs the old x
            let h = block.post_attention_layernorm.forward(&x);
            let gate_up = block.mlp.gate_up_proj.forward(&h, self.training);
            let inter = block.mlp.intermediate;
            let gate = gate_up.narrow(-1, 0, inter);
            let up = gate_up.narrow(-1, inter, inter);
            x = &x
                + block
                    .mlp
                    .down_proj
                    .forward(&(up * gate.silu()), self.training);
            if taps.contains(&(i + 1)) {
                tapped.push((i + 1, x.shallow_clone()));
                if deepest == Some(i + 1) {
                    return Ok(x);
                }
            }
        }
        if let Some(c) = cache {
            c.commit(full_mask)?;
        }
        Ok(self.norm.forward(&x))
    }

    /// Rotates the first `rotary_dim` channels of `x` `[B, H, L, D]`; the
    /// rest pass through (partial rotary embeddings).
    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.size()[3];
        let rd = self.rotary_dim;
        if rd == d {
            return x * cos + rotate_half(x) * sin;
        }
        let rot = x.narrow(-1, 0, rd);
        let pass = x.narrow(-1, rd, d - rd);
        Tensor::cat(&[&rot * cos + rotate_half(&rot) * sin, pass], -1)
    }

    fn attention_forward(
        &self,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let hd = attn.head_dim;
        let (q_dim, kv_dim) = (attn.n_heads * hd, attn.n_kv_heads * hd);
        let qkv = attn.qkv_proj.forward(x, self.training);
        let split = |start: i64, width: i64, heads: i64| {
            qkv.narrow(-1, start, width)
                .reshape([b, l, heads, hd])
                .transpose(1, 2)
        };
        let q = split(0, q_dim, attn.n_heads);
        let k = split(q_dim, kv_dim, attn.n_kv_heads);
        let v = split(q_dim + kv_dim, kv_dim, attn.n_kv_heads);
        let q = self.apply_rope(&q, cos, sin);
        let k = self.apply_rope(&k, cos, sin);
        let decoding = cache.is_some() && l == 1 && !matches!(mask, AttentionMask::Causal);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let groups = attn.n_heads / attn.n_kv_heads;
        if decoding && groups > 1 {
            return Ok(self.decode_attention(attn, &q, &k, &v, mask, b));
        }
        // `attend` takes the grouped heads as they are (repeating them where
        // its kernel needs it).
        let out = attend(&q, &k, &v, mask, self.attention)
            .transpose(1, 2)
            .contiguous()
            .view([b, l, q_dim]);
        Ok(attn.o_proj.forward(&out, self.training))
    }

    /// One new token per row against the cache without repeating keys and
    /// values per query head: the `groups` query heads sharing a key/value
    /// head become `groups` query rows of it (query head `h` reads key/value
    /// head `h / groups`, as transformers' `repeat_kv`).
    fn decode_attention(
        &self,
        attn: &Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        b: i64,
    ) -> Tensor {
        let hd = attn.head_dim;
        let groups = attn.n_heads / attn.n_kv_heads;
        let q = q.reshape([b, attn.n_kv_heads, groups, hd]);
        // `[B, 1, 1, Lk]` broadcasts over the key/value heads and the groups.
        let explicit = match mask {
            AttentionMask::Explicit(m) => Some(m),
            _ => None,
        };
        let out = match self.attention {
            AttentionImpl::Sdpa => {
                Tensor::scaled_dot_product_attention(&q, k, v, explicit, 0.0, false, None, false)
            }
            AttentionImpl::Math => {
                let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt();
                let scores = match explicit {
                    Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
                    None => scores,
                };
                softmax_matmul(&scores, v)
            }
        };
        let out = out.reshape([b, 1, attn.n_heads * hd]);
        attn.o_proj.forward(&out, self.training)
    }

    /// Applies the LM head to hidden states (any leading shape).
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<&Tensor>(&self.lm_head, None)
    }
}

impl CausalLm for Phi3 {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        self.device
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask, None)?;
        Ok(self.lm_head(&h))
    }

    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask, cache)?;
        let l = h.size()[1];
        Ok(self
            .lm_head(&h.narrow(1, l - 1, 1).squeeze_dim(1))
            .to_kind(Kind::Float))
    }

    fn per_sample_nll(&self, batch: &LmBatch) -> Result<Tensor> {
        batch.validate()?;
        let ids = batch.input_ids.to_device(self.device);
        if ids.size()[1] < 2 {
            return Ok(Tensor::zeros(
                [ids.size()[0]],
                (compute_kind(self.kind), self.device),
            ));
        }
        let hidden = self.forward_hidden(&ids, Some(&batch.attention_mask), None)?;
        linear_head_nll(
            &hidden,
            batch,
            compute_kind(self.kind),
            &self.lm_head,
            self.attention,
        )
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params = self.lora_parameters();
        if self.full_finetune {
            params.extend(self.base_parameters());
        }
        params
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        self.forward_layers(input_ids, attention_mask, layers)
    }
}

impl LoraLm for Phi3 {
    fn model_type(&self) -> &str {
        "phi3"
    }
    fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        Phi3::add_lora(self, config, seed)
    }
    fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }
    fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        Phi3::lora_parameters(self)
    }
    fn base_parameters(&self) -> Vec<(String, Tensor)> {
        Phi3::base_parameters(self)
    }
    fn fork_lora(&self, config: &LoraConfig, seed: i64) -> Result<DynLm> {
        Ok(Box::new(self.fork_with_lora(config, seed)?))
    }
    fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        Phi3::save_lora(self, dir, base_model)
    }
    fn load_lora(&mut self, dir: &Path) -> Result<()> {
        Phi3::load_lora(self, dir)
    }
    fn merge_lora(&mut self) -> Result<()> {
        Phi3::merge_lora(self)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        Phi3::save_pretrained(self, dir)
    }
    fn set_training(&mut self, training: bool) {
        Phi3::set_training(self, training)
    }
    fn set_full_finetune(&mut self, on: bool) {
        Phi3::set_full_finetune(self, on)
    }
    fn set_attention_impl(&mut self, attention: AttentionImpl) {
        Phi3::set_attention_impl(self, attention)
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}

/// Adds this family's loaders to the built-in registry.
pub(crate) fn register(families: &mut BTreeMap<String, LoadFn>) {
    let load: LoadFn = Arc::new(|dir, opts| Ok(Box::new(Phi3::load(dir, opts)?) as DynLm));
    families.insert("phi3".into(), load);
}
