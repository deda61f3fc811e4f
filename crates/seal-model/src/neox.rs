//! GPT-NeoX decoder (Pythia) on libtorch.
//!
//! Architecture of GPT-NeoX (Black et al., 2022, "GPT-NeoX-20B: An
//! Open-Source Autoregressive Language Model") as released in the Pythia
//! suite (Biderman et al., 2023, "Pythia: A Suite for Analyzing Large
//! Language Models Across Training and Scaling"), following transformers'
//! `models/gpt_neox/modeling_gpt_neox.py` (`GPTNeoXForCausalLM`): LayerNorm
//! (with bias) pre-norm blocks, one fused `query_key_value` projection whose
//! output holds each head's query, key and value side by side, rotary
//! embeddings on the first `rotary_pct` of every head, a GELU MLP, and a
//! parallel (`x + attn(ln1(x)) + mlp(ln2(x))`) or sequential residual.
//! SEAL (Shen et al., ICLR 2025) reports results on Pythia-2.8B.
//!
//! Weights use HF names (`gpt_neox.layers.0.attention.query_key_value.weight`,
//! `embed_out.weight`); LoRA adapters use PEFT's keys
//! (`base_model.model.gpt_neox.layers.0.attention.query_key_value`), with the
//! module names `query_key_value`, `dense`, `dense_h_to_4h` and
//! `dense_4h_to_h` (PEFT's default target for this family is
//! `query_key_value`).

use crate::adapter::{DynLm, LoraLm};
use crate::config::TokenIds;
use crate::error::{ModelError, Result};
use crate::family::LoadFn;
use crate::layers::{
    attach_lora, attend, check_token_ids, collect_taps, compute_kind, load_lora_into,
    merge_lora_sites, rotate_half, seeded_init_lock, step_masks, AttentionMask, LayerNorm, Linear,
    LoraAdapter, LoraSite, StepMasks,
};
use crate::llama::{AttentionImpl, LoadOptions};
use crate::lora::LoraConfig;
use crate::model::{linear_head_nll, CausalLm, KvCache, LmBatch};
use crate::weights::{save_safetensors, torch_dtype_name, write_json_atomic, WeightFiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

/// The HF `model_type` of this family.
pub const MODEL_TYPE: &str = "gpt_neox";

/// `rope_parameters` (transformers 5) or `rope_scaling` (older files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfNeoxRope {
    /// Only `default` (plain RoPE) is supported.
    #[serde(default, alias = "type", skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// RoPE base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Fraction of each head that is rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
}

/// Serde image of the fields of a GPT-NeoX `config.json`. Older files name
/// the rotary settings `rotary_pct` and `rotary_emb_base`; transformers 5
/// writes them into `rope_parameters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfNeoxConfig {
    /// `gpt_neox`.
    pub model_type: String,
    /// Model class names (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// MLP activation (transformers' default: `gelu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Fraction of each head that is rotated (older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_pct: Option<f64>,
    /// RoPE base (older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_base: Option<f64>,
    /// Fraction of each head that is rotated (top-level spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// RoPE base (top-level spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary settings (transformers 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<HfNeoxRope>,
    /// Rotary scaling (older files; only `null` or `default` is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<HfNeoxRope>,
    /// Context length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// LayerNorm epsilon (default 1e-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norm_eps: Option<f64>,
    /// Parallel residual (default true, as Pythia).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_parallel_residual: Option<bool>,
    /// Bias on `query_key_value` and `dense` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Whether `embed_out` shares the embedding matrix (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<TokenIds>,
    /// Saved dtype, informative only (`dtype` in transformers 5).
    #[serde(default, alias = "dtype", skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NeoxActivation {
    /// Exact (erf) GELU: `gelu` (Pythia).
    Gelu,
    /// Tanh-approximated GELU: `gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl NeoxActivation {
    /// Parses an HF `hidden_act` name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    /// The HF name written to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_pytorch_tanh",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::GeluTanh => x.gelu("tanh"),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// Validated architecture hyper-parameters of a GPT-NeoX model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeoxConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads (each `hidden_size / num_attention_heads` wide).
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// MLP activation.
    pub hidden_act: NeoxActivation,
    /// Fraction of each head that is rotated (Pythia: 0.25).
    pub rotary_pct: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `x + attn(ln1(x)) + mlp(ln2(x))` (true) or the sequential residual.
    pub use_parallel_residual: bool,
    /// Bias on `query_key_value` and `dense`.
    pub attention_bias: bool,
    /// Whether `embed_out` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Context length (recorded, not enforced).
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

impl NeoxConfig {
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
        let hf: HfNeoxConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_hf(&hf, path)
    }

    /// Validates an [`HfNeoxConfig`]; `path` is only used in error messages.
    pub fn from_hf(hf: &HfNeoxConfig, path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::Config {
            path: path.into(),
            message,
        };
        if hf.model_type != MODEL_TYPE {
            return Err(ModelError::UnsupportedModelType {
                path: path.into(),
                model_type: hf.model_type.clone(),
                supported: format!(
                    "{MODEL_TYPE} (this loader); other families load through `seal_model::family::load_model`"
                ),
            });
        }
        for (field, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("num_attention_heads", hf.num_attention_heads),
            ("intermediate_size", hf.intermediate_size),
        ] {
            if v == 0 {
                return Err(bad(format!("field `{field}` must be positive")));
            }
        }
        if hf.hidden_size % hf.num_attention_heads != 0 {
            return Err(bad(format!(
                "field `hidden_size`: {} is not a multiple of num_attention_heads {}",
                hf.hidden_size, hf.num_attention_heads
            )));
        }
        let act_name = hf.hidden_act.as_deref().unwrap_or("gelu");
        let hidden_act = NeoxActivation::from_hf(act_name).ok_or_else(|| {
            bad(format!(
                "field `hidden_act`: `{act_name}` is not supported (gelu, gelu_new, gelu_fast, \
                 gelu_pytorch_tanh, relu, silu)"
            ))
        })?;
        // transformers 5 reads `rope_parameters` (or `rope_scaling`) first and
        // falls back to the older top-level names.
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let rope_field = if hf.rope_parameters.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref()) {
            if kind != "default" {
                return Err(bad(format!(
                    "field `{rope_field}.rope_type`: `{kind}` is not supported (default)"
                )));
            }
        }
        let rotary_pct = rope
            .and_then(|r| r.partial_rotary_factor)
            .or(hf.rotary_pct)
            .or(hf.partial_rotary_factor)
            .unwrap_or(0.25);
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(hf.rotary_emb_base)
            .or(hf.rope_theta)
            .unwrap_or(10_000.0);
        if !(0.0..=1.0).contains(&rotary_pct) {
            return Err(bad(format!(
                "field `rotary_pct` (partial_rotary_factor): {rotary_pct} is outside [0, 1]"
            )));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(format!(
                "field `rotary_emb_base` (rope_theta): {rope_theta} must be positive"
            )));
        }
        let layer_norm_eps = hf.layer_norm_eps.unwrap_or(1e-5);
        if !(layer_norm_eps.is_finite() && layer_norm_eps >= 0.0) {
            return Err(bad(format!(
                "field `layer_norm_eps`: {layer_norm_eps} must be a non-negative number"
            )));
        }
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            hidden_act,
            rotary_pct,
            rope_theta,
            layer_norm_eps,
            use_parallel_residual: hf.use_parallel_residual.unwrap_or(true),
            attention_bias: hf.attention_bias.unwrap_or(true),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            bos_token_id: hf
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
        };
        if config.rotary_dims() % 2 != 0 {
            return Err(bad(format!(
                "field `rotary_pct`: rotating {} of the {} dims of a head (an odd count) is not supported",
                config.rotary_dims(),
                config.head_dim()
            )));
        }
        Ok(config)
    }

    /// A tiny config (hidden 32, 2 blocks, 4 heads, half of each head
    /// rotated, parallel residual) for tests and examples.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: NeoxActivation::Gelu,
            rotary_pct: 0.5,
            rope_theta: 10_000.0,
            layer_norm_eps: 1e-5,
            use_parallel_residual: true,
            attention_bias: true,
            tie_word_embeddings: false,
            max_position_embeddings: 256,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Leading dims of each head that are rotated: `int(head_dim · rotary_pct)`,
    /// truncated as transformers does.
    pub fn rotary_dims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    /// The HF `config.json` image of this config (readable by transformers
    /// 4.x through `rotary_pct` / `rotary_emb_base` and by 5.x through
    /// `rope_parameters`).
    pub fn to_hf(&self) -> HfNeoxConfig {
        HfNeoxConfig {
            model_type: MODEL_TYPE.into(),
            architectures: Some(vec!["GPTNeoXForCausalLM".into()]),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: Some(self.hidden_act.hf_name().into()),
            rotary_pct: Some(self.rotary_pct),
            rotary_emb_base: Some(self.rope_theta),
            partial_rotary_factor: None,
            rope_theta: None,
            rope_parameters: Some(HfNeoxRope {
                rope_type: Some("default".into()),
                rope_theta: Some(self.rope_theta),
                partial_rotary_factor: Some(self.rotary_pct),
            }),
            rope_scaling: None,
            max_position_embeddings: Some(self.max_position_embeddings),
            layer_norm_eps: Some(self.layer_norm_eps),
            use_parallel_residual: Some(self.use_parallel_residual),
            attention_bias: Some(self.attention_bias),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            bos_token_id: self.bos_token_id.map(TokenIds::One),
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(TokenIds::One(*one)),
                many => Some(TokenIds::Many(many.to_vec())),
            },
            pad_token_id: None,
            torch_dtype: Some("float32".into()),
        }
    }
}

/// How [`GptNeoX::build`] fills the base weights.
#[derive(Clone, Copy)]
enum WeightInit {
    /// N(0, 0.02) matrices, drawn from the (seeded) global generator.
    Random,
    /// Zeros: a checkpoint overwrites every weight right after.
    Overwritten,
}

struct Block {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

impl Block {
    /// The block's linears as LoRA sites, with their PEFT keys.
    fn lora_sites(&mut self, layer: usize) -> [LoraSite<'_>; 4] {
        let key = |group: &str, name: &str| {
            format!("base_model.model.gpt_neox.layers.{layer}.{group}.{name}")
        };
        [
            LoraSite {
                key: key("attention", "query_key_value"),
                name: "query_key_value",
                linear: &mut self.query_key_value,
            },
            LoraSite {
                key: key("attention", "dense"),
                name: "dense",
                linear: &mut self.dense,
            },
            LoraSite {
                key: key("mlp", "dense_h_to_4h"),
                name: "dense_h_to_4h",
                linear: &mut self.dense_h_to_4h,
            },
            LoraSite {
                key: key("mlp", "dense_4h_to_h"),
                name: "dense_4h_to_h",
                linear: &mut self.dense_4h_to_h,
            },
        ]
    }

    /// The same (shared) base weights without LoRA.
    fn fork(&self) -> Self {
        Self {
            input_layernorm: self.input_layernorm.fork(),
            post_attention_layernorm: self.post_attention_layernorm.fork(),
            query_key_value: self.query_key_value.fork(),
            dense: self.dense.fork(),
            dense_h_to_4h: self.dense_h_to_4h.fork(),
            dense_4h_to_h: self.dense_4h_to_h.fork(),
        }
    }
}

/// Name of the output embedding in `weights`: `embed_out.weight` (Pythia and
/// transformers' saves), or `lm_head.weight` as some converters write it.
fn head_name(weights: &WeightFiles) -> &'static str {
    if !weights.contains("embed_out.weight") && weights.contains("lm_head.weight") {
        "lm_head.weight"
    } else {
        "embed_out.weight"
    }
}

/// Checks that `weights` holds every base tensor of `c` with the right
/// shape before anything is allocated: the sizes come from `config.json`,
/// and a config asking for more than the files hold would otherwise
/// allocate it.
fn check_base_shapes(c: &NeoxConfig, weights: &WeightFiles) -> Result<()> {
    let dim = |v: Option<usize>, field: &str| {
        v.and_then(|v| i64::try_from(v).ok()).ok_or_else(|| {
            ModelError::InvalidInput(format!("model config: `{field}` is too large"))
        })
    };
    let h = dim(Some(c.hidden_size), "hidden_size")?;
    let qkv = dim(c.hidden_size.checked_mul(3), "3 × hidden_size")?;
    let inter = dim(Some(c.intermediate_size), "intermediate_size")?;
    let vocab = dim(Some(c.vocab_size), "vocab_size")?;
    weights.check_shape("gpt_neox.embed_in.weight", &[vocab, h])?;
    if !c.tie_word_embeddings {
        weights.check_shape(head_name(weights), &[vocab, h])?;
    }
    for part in ["weight", "bias"] {
        weights.check_shape(&format!("gpt_neox.final_layer_norm.{part}"), &[h])?;
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("gpt_neox.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            for part in ["weight", "bias"] {
                weights.check_shape(&format!("{p}.{norm}.{part}"), &[h])?;
            }
        }
        for (name, out, inp, bias) in [
            ("attention.query_key_value", qkv, h, c.attention_bias),
            ("attention.dense", h, h, c.attention_bias),
            ("mlp.dense_h_to_4h", inter, h, true),
            ("mlp.dense_4h_to_h", h, inter, true),
        ] {
            weights.check_shape(&format!("{p}.{name}.weight"), &[out, inp])?;
            if bias {
                weights.check_shape(&format!("{p}.{name}.bias"), &[out])?;
            }
        }
    }
    Ok(())
}

/// A GPT-NeoX (Pythia) causal LM.
pub struct GptNeoX {
    config: NeoxConfig,
    base: Arc<nn::VarStore>,
    embed_in: Tensor,
    layers: Vec<Block>,
    final_layer_norm: LayerNorm,
    embed_out: Tensor,
    /// `[rotary_dims / 2]` RoPE frequencies, in f32 (f64 for f64 models).
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
    attention: AttentionImpl,
    training: bool,
    full_finetune: bool,
    lora: Option<LoraAdapter>,
}

impl GptNeoX {
    /// Builds a randomly initialised model (N(0, 0.02) matrices, zero biases,
    /// unit norms) on `device` in `kind`; `seed` makes it reproducible.
    pub fn random(config: &NeoxConfig, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        let _lock = seeded_init_lock();
        tch::manual_seed(seed);
        Self::build(config, device, kind, WeightInit::Random)
    }

    /// Loads an HF model directory (`config.json` plus `model.safetensors` or
    /// a sharded index), e.g. a Pythia checkpoint.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = NeoxConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open_dir(dir)?;
        Self::from_weights(&config, &weights, opts)
    }

    /// Builds the model from already opened weight files.
    pub fn from_weights(
        config: &NeoxConfig,
        weights: &WeightFiles,
        opts: &LoadOptions,
    ) -> Result<Self> {
        check_base_shapes(config, weights)?;
        let model = Self::build(config, opts.device, opts.kind, WeightInit::Overwritten)?;
        let head = head_name(weights);
        let _guard = tch::no_grad_guard();
        for (name, mut var) in model.base.variables() {
            let file_name = if name == "embed_out.weight" {
                head
            } else {
                name.as_str()
            };
            let t = weights.load(file_name, &var.size(), opts.kind, opts.device)?;
            var.f_copy_(&t)?;
        }
        Ok(model)
    }

    fn build(config: &NeoxConfig, device: Device, kind: Kind, init: WeightInit) -> Result<Self> {
        if !matches!(
            kind,
            Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
        ) {
            return Err(ModelError::InvalidInput(format!(
                "unsupported model dtype {kind:?}"
            )));
        }
        let c = config;
        let too_large =
            |field: &str| ModelError::InvalidInput(format!("model config: `{field}` is too large"));
        let h = i64::try_from(c.hidden_size).map_err(|_| too_large("hidden_size"))?;
        let inter =
            i64::try_from(c.intermediate_size).map_err(|_| too_large("intermediate_size"))?;
        let vocab = i64::try_from(c.vocab_size).map_err(|_| too_large("vocab_size"))?;
        if h == 0 || c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(ModelError::InvalidInput(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if c.rotary_dims() % 2 != 0 || c.rotary_dims() > c.head_dim() {
            return Err(ModelError::InvalidInput(format!(
                "rotary_pct {} gives {} rotated dims of a {}-dim head (must be even and at most the head)",
                c.rotary_pct,
                c.rotary_dims(),
                c.head_dim()
            )));
        }
        // Weights about to be overwritten by a checkpoint start at zero: no
        // draw from libtorch's global generator, which a concurrently seeded
        // `random` or `add_lora` would otherwise see consumed.
        let init = match init {
            WeightInit::Random => nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            WeightInit::Overwritten => nn::Init::Const(0.),
        };
        let mut vs = nn::VarStore::new(device);
        // Variables are created directly in the model dtype (no conversion
        // afterwards, so the tensors held below stay the store's own).
        vs.set_kind(kind);
        let root = vs.root();
        let m = &root / "gpt_neox";
        let embed_in = (&m / "embed_in").var("weight", &[vocab, h], init);
        let bias = c.attention_bias;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = &m / "layers" / i;
                let (a, mlp) = (&p / "attention", &p / "mlp");
                Block {
                    input_layernorm: LayerNorm::new(&(&p / "input_layernorm"), h, c.layer_norm_eps),
                    post_attention_layernorm: LayerNorm::new(
                        &(&p / "post_attention_layernorm"),
                        h,
                        c.layer_norm_eps,
                    ),
                    query_key_value: Linear::new(&(&a / "query_key_value"), h, 3 * h, bias, init),
                    dense: Linear::new(&(&a / "dense"), h, h, bias, init),
                    dense_h_to_4h: Linear::new(&(&mlp / "dense_h_to_4h"), h, inter, true, init),
                    dense_4h_to_h: Linear::new(&(&mlp / "dense_4h_to_h"), inter, h, true, init),
                }
            })
            .collect();
        let final_layer_norm = LayerNorm::new(&(&m / "final_layer_norm"), h, c.layer_norm_eps);
        let embed_out = if c.tie_word_embeddings {
            embed_in.shallow_clone()
        } else {
            (&root / "embed_out").var("weight", &[vocab, h], init)
        };
        vs.freeze();
        // As transformers: 1 / θ^(2i/d) over the rotated dims, in f32.
        let rope_kind = compute_kind(kind);
        let rot = c.rotary_dims() as i64;
        let inv_freq = if rot == 0 {
            Tensor::zeros([0], (rope_kind, device))
        } else {
            Tensor::pow_scalar(
                c.rope_theta,
                &(Tensor::arange_start_step(0, rot, 2, (rope_kind, device)) / rot as f64),
            )
            .reciprocal()
        };
        Ok(Self {
            config: config.clone(),
            base: Arc::new(vs),
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
            inv_freq,
            kind,
            device,
            attention: AttentionImpl::Sdpa,
            training: false,
            full_finetune: false,
            lora: None,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &NeoxConfig {
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

    /// Base weights by HF name (shared storage, not copies), sorted by name.
    pub fn base_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.base.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn lora_sites(&mut self) -> Vec<LoraSite<'_>> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, b)| b.lora_sites(i))
            .collect()
    }

    /// Attaches a freshly initialised LoRA adapter (replacing any other).
    /// Targets are this family's module names (`query_key_value`, `dense`,
    /// `dense_h_to_4h`, `dense_4h_to_h`).
    pub fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        let (device, kind) = (self.device, self.kind);
        let adapter = attach_lora(self.lora_sites(), config, seed, device, kind)?;
        self.lora = Some(adapter);
        Ok(())
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
            embed_in: self.embed_in.shallow_clone(),
            layers: self.layers.iter().map(Block::fork).collect(),
            final_layer_norm: self.final_layer_norm.fork(),
            embed_out: self.embed_out.shallow_clone(),
            inv_freq: self.inv_freq.shallow_clone(),
            kind: self.kind,
            device: self.device,
            attention: self.attention,
            training: self.training,
            full_finetune: false,
            lora: None,
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
    /// that transformers' `GPTNeoXForCausalLM` loads.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        save_safetensors(
            &dir.join("model.safetensors"),
            &self.base_parameters(),
            Some([("format".to_string(), "pt".to_string())].into()),
        )?;
        let mut hf = self.config.to_hf();
        hf.torch_dtype = Some(torch_dtype_name(self.kind).into());
        write_json_atomic(&dir.join("config.json"), &hf)
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<()> {
        check_token_ids(input_ids, self.config.vocab_size)
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
        self.forward_impl(input_ids, attention_mask, cache, &[], &mut Vec::new())
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
        let input_ids = input_ids.to_device(self.device);
        let (b, l) = (input_ids.size()[0], input_ids.size()[1]);
        let StepMasks {
            mask,
            full_mask,
            positions,
        } = step_masks(attention_mask, b, l, cache.as_deref(), self.device)?;
        let (cos, sin) = self.rotary(&positions);

        let mut x = Tensor::embedding(&self.embed_in, &input_ids, -1, false, false);
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
            let attn = self.attention_forward(block, &h, &cos, &sin, &mask, layer_cache)?;
            // Sums in transformers' order (mlp + attn + x), out of place:
            // autograd needs the old x.
            x = if self.config.use_parallel_residual {
                let mlp = self.mlp(block, &block.post_attention_layernorm.forward(&x));
                mlp + attn + &x
            } else {
                let x_attn = attn + &x;
                let mlp = self.mlp(block, &block.post_attention_layernorm.forward(&x_attn));
                mlp + x_attn
            };
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
        Ok(self.final_layer_norm.forward(&x))
    }

    /// cos and sin `[B, 1, L, rotary_dims]` of the positions `[B, L]`,
    /// computed in f32 (f64 for f64 models) as transformers does, then cast.
    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let rope_kind = compute_kind(self.kind);
        let freqs = positions.to_kind(rope_kind).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(self.kind).unsqueeze(1),
            emb.sin().to_kind(self.kind).unsqueeze(1),
        )
    }

    fn attention_forward(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let heads = self.config.num_attention_heads as i64;
        let hd = self.config.head_dim() as i64;
        // The fused projection holds, per head, [q | k | v] side by side
        // (not all queries, then all keys, then all values).
        let qkv = block
            .query_key_value
            .forward(x, self.training)
            .view([b, l, heads, 3 * hd])
            .transpose(1, 2);
        let rot = self.config.rotary_dims() as i64;
        let q = apply_partial_rotary(&qkv.narrow(-1, 0, hd), cos, sin, rot);
        let k = apply_partial_rotary(&qkv.narrow(-1, hd, hd), cos, sin, rot);
        let v = qkv.narrow(-1, 2 * hd, hd);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let out = attend(&q, &k, &v, mask, self.attention)
            .transpose(1, 2)
            .contiguous()
            .view([b, l, heads * hd]);
        Ok(block.dense.forward(&out, self.training))
    }

    fn mlp(&self, block: &Block, x: &Tensor) -> Tensor {
        let h = block.dense_h_to_4h.forward(x, self.training);
        block
            .dense_4h_to_h
            .forward(&self.config.hidden_act.apply(&h), self.training)
    }

    /// Applies the output embedding to hidden states (any leading shape).
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<&Tensor>(&self.embed_out, None)
    }
}

/// Rotates the first `rot` dims of `t` `[B, H, L, D]`, passing the rest through.
fn apply_partial_rotary(t: &Tensor, cos: &Tensor, sin: &Tensor, rot: i64) -> Tensor {
    if rot == 0 {
        return t.shallow_clone();
    }
    let d = *t.size().last().unwrap_or(&0);
    let t_rot = t.narrow(-1, 0, rot);
    let rotated = &t_rot * cos + rotate_half(&t_rot) * sin;
    if rot == d {
        rotated
    } else {
        Tensor::cat(&[rotated, t.narrow(-1, rot, d - rot)], -1)
    }
}

impl CausalLm for GptNeoX {
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
        if l == 0 {
            return Err(ModelError::InvalidInput(
                "last_logits needs at least one new token".into(),
            ));
        }
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
            &self.embed_out,
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

impl LoraLm for GptNeoX {
    fn model_type(&self) -> &str {
        MODEL_TYPE
    }
    fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        GptNeoX::add_lora(self, config, seed)
    }
    fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }
    fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        GptNeoX::lora_parameters(self)
    }
    fn base_parameters(&self) -> Vec<(String, Tensor)> {
        GptNeoX::base_parameters(self)
    }
    fn fork_lora(&self, config: &LoraConfig, seed: i64) -> Result<DynLm> {
        Ok(Box::new(self.fork_with_lora(config, seed)?))
    }
    fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        GptNeoX::save_lora(self, dir, base_model)
    }
    fn load_lora(&mut self, dir: &Path) -> Result<()> {
        GptNeoX::load_lora(self, dir)
    }
    fn merge_lora(&mut self) -> Result<()> {
        GptNeoX::merge_lora(self)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        GptNeoX::save_pretrained(self, dir)
    }
    fn set_training(&mut self, training: bool) {
        GptNeoX::set_training(self, training)
    }
    fn set_full_finetune(&mut self, on: bool) {
        GptNeoX::set_full_finetune(self, on)
    }
    fn set_attention_impl(&mut self, attention: AttentionImpl) {
        GptNeoX::set_attention_impl(self, attention)
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}

/// Adds this family's loaders to the built-in registry.
pub(crate) fn register(families: &mut BTreeMap<String, LoadFn>) {
    let load: LoadFn = Arc::new(|dir, opts| Ok(Box::new(GptNeoX::load(dir, opts)?) as DynLm));
    families.insert(MODEL_TYPE.into(), load);
}
