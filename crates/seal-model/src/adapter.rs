//! The adapter side of a causal LM: what SEAL's pipeline needs beyond
//! [`CausalLm`] to rank, fine-tune and save a model through LoRA.
//!
//! SEAL trains LoRA factors on q_proj and v_proj by default (Shen et al.,
//! ICLR 2025; <https://github.com/hanshen95/SEAL>, `train_seal.sh`), and the
//! full penalty method keeps an auxiliary lower-level copy as a second LoRA
//! over the same frozen base. Every model family implements [`LoraLm`]
//! (Llama, GPT-NeoX and Phi-3 here; a user's own model downstream), and the
//! pipeline holds a [`DynLm`], so a family is chosen at run time from
//! `config.json`'s `model_type` ([`crate::family`]).

use crate::error::Result;
use crate::llama::AttentionImpl;
use crate::lora::LoraConfig;
use crate::model::{CausalLm, KvCache, LmBatch};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A causal LM that carries a LoRA adapter (PEFT format) and can train,
/// fork, merge and save it. Object safe: the pipeline uses `Box<dyn LoraLm>`.
pub trait LoraLm: CausalLm {
    /// The family's HF `model_type` (`"llama"`, `"gpt_neox"`, `"phi3"`...).
    fn model_type(&self) -> &str;
    /// Attaches a freshly initialised LoRA adapter, replacing any other.
    fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()>;
    /// The attached adapter's configuration, if any.
    fn lora_config(&self) -> Option<&LoraConfig>;
    /// The adapter's factors by PEFT key, sorted by name.
    fn lora_parameters(&self) -> Vec<(String, Tensor)>;
    /// Base weights by HF name (shared storage, not copies).
    fn base_parameters(&self) -> Vec<(String, Tensor)>;
    /// A second model over the same frozen base with a fresh adapter.
    fn fork_lora(&self, config: &LoraConfig, seed: i64) -> Result<DynLm>;
    /// Writes `adapter_config.json` and `adapter_model.safetensors`.
    fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()>;
    /// Loads a PEFT adapter directory, replacing any attached adapter.
    fn load_lora(&mut self, dir: &Path) -> Result<()>;
    /// Folds the adapter into the base weights and detaches it.
    fn merge_lora(&mut self) -> Result<()>;
    /// Writes an HF model directory (`config.json`, `model.safetensors`).
    fn save_pretrained(&self, dir: &Path) -> Result<()>;
    /// Training mode (enables LoRA dropout).
    fn set_training(&mut self, training: bool);
    /// Makes the base weights trainable (full fine-tuning) or frozen.
    fn set_full_finetune(&mut self, on: bool);
    /// Selects the attention kernel; solvers that differentiate twice ask for
    /// [`AttentionImpl::Math`].
    fn set_attention_impl(&mut self, attention: AttentionImpl);
    /// Hidden size of the residual stream (width of [`CausalLm::hidden_states`]).
    fn hidden_size(&self) -> usize;
}

/// A model of any family, chosen at run time.
pub type DynLm = Box<dyn LoraLm>;

impl<M: CausalLm + ?Sized> CausalLm for Box<M> {
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn device(&self) -> Device {
        (**self).device()
    }
    fn kind(&self) -> Kind {
        (**self).kind()
    }
    fn num_layers(&self) -> usize {
        (**self).num_layers()
    }
    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        (**self).logits(input_ids, attention_mask)
    }
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        (**self).last_logits(input_ids, attention_mask, cache)
    }
    fn per_sample_nll(&self, batch: &LmBatch) -> Result<Tensor> {
        (**self).per_sample_nll(batch)
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        (**self).trainable_parameters()
    }
    fn new_cache(&self) -> KvCache {
        (**self).new_cache()
    }
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        (**self).hidden_states(input_ids, attention_mask, layers)
    }
}

impl<M: LoraLm + ?Sized> LoraLm for Box<M> {
    fn model_type(&self) -> &str {
        (**self).model_type()
    }
    fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        (**self).add_lora(config, seed)
    }
    fn lora_config(&self) -> Option<&LoraConfig> {
        (**self).lora_config()
    }
    fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        (**self).lora_parameters()
    }
    fn base_parameters(&self) -> Vec<(String, Tensor)> {
        (**self).base_parameters()
    }
    fn fork_lora(&self, config: &LoraConfig, seed: i64) -> Result<DynLm> {
        (**self).fork_lora(config, seed)
    }
    fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        (**self).save_lora(dir, base_model)
    }
    fn load_lora(&mut self, dir: &Path) -> Result<()> {
        (**self).load_lora(dir)
    }
    fn merge_lora(&mut self) -> Result<()> {
        (**self).merge_lora()
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        (**self).save_pretrained(dir)
    }
    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }
    fn set_full_finetune(&mut self, on: bool) {
        (**self).set_full_finetune(on)
    }
    fn set_attention_impl(&mut self, attention: AttentionImpl) {
        (**self).set_attention_impl(attention)
    }
    fn hidden_size(&self) -> usize {
        (**self).hidden_size()
    }
}
