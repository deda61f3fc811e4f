//! Model configuration: a serde image of Hugging Face `config.json`
//! ([`HfConfig`]) turned into a plain, validated [`LlamaConfig`].
//!
//! Supported `model_type`s are the Llama family that shares one block layout:
//! `llama`, `mistral` (sliding-window attention is not applied: the windows of
//! released Mistral models exceed the sequence lengths SEAL trains on; a
//! warning is logged when it would matter) and `qwen2` (biases on q/k/v).

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A token id or a list of them, as `eos_token_id` may be either in HF files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` as written in HF configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfRopeScaling {
    /// `rope_type` (newer files) or `type` (older files).
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama-3: low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3: high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3: the context length the model was pre-trained with.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// Serde image of the fields of HF `config.json` that Llama-family models use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (defaults to `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width (defaults to `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE scaling.
    #[serde(default)]
    pub rope_scaling: Option<HfRopeScaling>,
    /// Context length.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: bias on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Llama: bias on MLP projections.
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// MLP activation (only `silu` is supported).
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<TokenIds>,
    /// Mistral/Qwen2 sliding window (not applied; see module docs).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Saved dtype, informative only.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// How RoPE frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of the frequencies.
        factor: f64,
    },
    /// Llama-3.1 style: long wavelengths scaled, short kept, smooth between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Pre-training context length.
        original_max_position_embeddings: usize,
    },
}

/// Validated architecture hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// The HF `model_type` this came from.
    pub model_type: String,
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
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Bias on MLP projections.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
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
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_hf(&hf, path)
    }

    /// Validates an [`HfConfig`]; `path` is only used in error messages.
    pub fn from_hf(hf: &HfConfig, path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::Config {
            path: path.into(),
            message,
        };
        let (qkv_bias, o_bias) = match hf.model_type.as_str() {
            "llama" => {
                let b = hf.attention_bias.unwrap_or(false);
                (b, b)
            }
            "mistral" => (false, false),
            "qwen2" => (true, false),
            other => {
                return Err(ModelError::UnsupportedModelType {
                    path: path.into(),
                    model_type: other.to_string(),
                    supported: "llama, mistral, qwen2 (this loader); other families load through `seal_model::family::load_model`".into(),
                })
            }
        };
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(bad(format!(
                    "field `hidden_act`: `{act}` is not supported (silu only)"
                )));
            }
        }
        let positive = |v: usize, field: &str| {
            if v == 0 {
                Err(bad(format!("field `{field}` must be positive")))
            } else {
                Ok(())
            }
        };
        positive(hf.hidden_size, "hidden_size")?;
        positive(hf.intermediate_size, "intermediate_size")?;
        positive(hf.num_hidden_layers, "num_hidden_layers")?;
        positive(hf.num_attention_heads, "num_attention_heads")?;
        positive(hf.vocab_size, "vocab_size")?;
        let kv = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        positive(kv, "num_key_value_heads")?;
        if hf.num_attention_heads % kv != 0 {
            return Err(bad(format!(
                "field `num_key_value_heads`: {kv} does not divide num_attention_heads {}",
                hf.num_attention_heads
            )));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None => {
                if hf.hidden_size % hf.num_attention_heads != 0 {
                    return Err(bad(format!(
                        "field `hidden_size`: {} is not a multiple of num_attention_heads {}",
                        hf.hidden_size, hf.num_attention_heads
                    )));
                }
                hf.hidden_size / hf.num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(format!(
                "field `head_dim`: {head_dim} must be even for RoPE"
            )));
        }
        let rope_scaling = match &hf.rope_scaling {
            None => RopeScaling::None,
            Some(rs) => {
                let kind = rs.rope_type.as_deref().unwrap_or("default");
                let factor = || {
                    rs.factor
                        .ok_or_else(|| bad("field `rope_scaling.factor` is missing".into()))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: factor()? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: factor()?,
                        low_freq_factor: rs.low_freq_factor.ok_or_else(|| {
                            bad("field `rope_scaling.low_freq_factor` is missing".into())
                        })?,
                        high_freq_factor: rs.high_freq_factor.ok_or_else(|| {
                            bad("field `rope_scaling.high_freq_factor` is missing".into())
                        })?,
                        original_max_position_embeddings: rs
                            .original_max_position_embeddings
                            .ok_or_else(|| {
                                bad("field `rope_scaling.original_max_position_embeddings` is missing"
                                    .into())
                            })?,
                    },
                    other => {
                        return Err(bad(format!(
                            "field `rope_scaling.rope_type`: `{other}` is not supported (default, linear, llama3)"
                        )))
                    }
                }
            }
        };
        Ok(Self {
            model_type: hf.model_type.clone(),
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            vocab_size: hf.vocab_size,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            bos_token_id: hf
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
        })
    }

    /// A tiny random-initialisable config for tests and examples.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            model_type: "llama".into(),
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 256,
            vocab_size,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Parameter count of the base model.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_hidden_layers * per_layer + embed + head + h
    }

    /// The HF `config.json` image of this config.
    pub fn to_hf(&self) -> HfConfig {
        let rope_scaling = match self.rope_scaling {
            RopeScaling::None => None,
            RopeScaling::Linear { factor } => Some(HfRopeScaling {
                rope_type: Some("linear".into()),
                factor: Some(factor),
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: None,
            }),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => Some(HfRopeScaling {
                rope_type: Some("llama3".into()),
                factor: Some(factor),
                low_freq_factor: Some(low_freq_factor),
                high_freq_factor: Some(high_freq_factor),
                original_max_position_embeddings: Some(original_max_position_embeddings),
            }),
        };
        HfConfig {
            model_type: self.model_type.clone(),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            vocab_size: self.vocab_size,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: (self.model_type == "llama").then_some(self.qkv_bias),
            mlp_bias: Some(self.mlp_bias),
            hidden_act: Some("silu".into()),
            bos_token_id: self.bos_token_id.map(TokenIds::One),
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(TokenIds::One(*one)),
                many => Some(TokenIds::Many(many.to_vec())),
            },
            pad_token_id: None,
            sliding_window: None,
            torch_dtype: Some("float32".into()),
        }
    }
}
