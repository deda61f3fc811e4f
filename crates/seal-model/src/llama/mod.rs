//! Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) on libtorch.
//!
//! Architecture as in Touvron et al. (2023) and the Hugging Face
//! `transformers` implementation (`modeling_llama.py`): pre-norm RMSNorm
//! blocks, rotary position embeddings (rotate-half layout, optional Llama-3
//! or linear scaling), grouped-query attention through
//! `scaled_dot_product_attention`, a SwiGLU MLP and tied or untied
//! embeddings. Weights use HF names (`model.layers.0.self_attn.q_proj.weight`)
//! and are created through `nn::Path`s of a [`nn::VarStore`].
//!
//! Attention has two implementations ([`AttentionImpl`]): libtorch's SDPA
//! (fast fused kernels) and an explicit math path that supports double
//! backward, needed for Hessian-vector products in implicit hypergradients.

use crate::adapter::{DynLm, LoraLm};
use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::layers::{
    attach_lora, attend, check_token_ids, collect_taps, compute_kind, load_lora_into,
    merge_lora_sites, rotate_half, seeded_init_lock, softmax_matmul, step_masks, AttentionMask,
    Linear, LoraSite, RmsNorm, StepMasks,
};
use crate::lora::LoraConfig;
use crate::model::{linear_head_nll, CausalLm, KvCache, LmBatch};
use crate::weights::{save_safetensors, torch_dtype_name, write_json_atomic, WeightFiles};
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

/// Which attention kernel the model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AttentionImpl {
    /// `torch.nn.functional.scaled_dot_product_attention` (fused kernels).
    #[default]
    Sdpa,
    /// Explicit softmax(QKᵀ/√d)V; twice differentiable.
    Math,
}

/// Options for loading a model.
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Where the weights live.
    pub device: Device,
    /// Weight dtype: `Float`, or `BFloat16` for mixed precision (bf16 base
    /// weights, f32 LoRA, norms and losses; [`crate::runtime::WeightDtype`]),
    /// on CPU or CUDA.
    pub kind: Kind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

/// How [`Llama::build`] fills the base weights.
#[derive(Clone, Copy)]
enum WeightInit {
    /// N(0, 0.02), drawn from the (seeded) global generator.
    Random,
    /// Zeros: a checkpoint overwrites every weight right after.
    Overwritten,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// The block's linear layers with their HF module group and name.
    fn linears_mut(&mut self) -> [(&'static str, &'static str, &mut Linear); 7] {
        [
            ("self_attn", "q_proj", &mut self.self_attn.q_proj),
            ("self_attn", "k_proj", &mut self.self_attn.k_proj),
            ("self_attn", "v_proj", &mut self.self_attn.v_proj),
            ("self_attn", "o_proj", &mut self.self_attn.o_proj),
            ("mlp", "gate_proj", &mut self.mlp.gate_proj),
            ("mlp", "up_proj", &mut self.mlp.up_proj),
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
}

pub use crate::layers::LoraAdapter;

/// A Llama-family causal LM.
pub struct Llama {
    config: LlamaConfig,
    base: Arc<nn::VarStore>,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
    attention: AttentionImpl,
    training: bool,
    full_finetune: bool,
    lora: Option<LoraAdapter>,
}

mod adapter;
mod forward;
mod load;
