//! # seal-model
//!
//! Llama-family causal language models on libtorch for seal-rs, the Rust
//! implementation of SEAL (Shen, Chen, Das, Chen, ICLR 2025, "SEAL:
//! Safety-enhanced Aligned LLM Fine-tuning via Bilevel Data Selection";
//! reference code <https://github.com/hanshen95/SEAL>).
//!
//! * [`model::CausalLm`]: the object-safe trait solvers and metrics code
//!   against; its key method is the per-sample response NLL.
//! * [`llama::Llama`]: Llama / Mistral / Qwen2 on CPU or CUDA, loaded from HF
//!   directories ([`llama::Llama::load`]) with HF weight names;
//!   [`neox::GptNeoX`] (Pythia, which SEAL's paper fine-tunes at 2.8B) and
//!   [`phi3::Phi3`] (Phi-3-mini, also in the paper) the same way.
//! * [`adapter::LoraLm`]: the LoRA side every family implements, and
//!   [`family`]: the registry that opens an HF directory as a [`DynLm`] of
//!   the family its `model_type` names (user families register the same way).
//! * [`layers`]: the shared blocks (LoRA-capable linear, norms, masks,
//!   attention, adapter bookkeeping), public for user architectures.
//! * [`gguf`]: import llama.cpp GGUF checkpoints into HF directories.
//! * [`lora`]: LoRA adapters in PEFT's format.
//! * [`generate`]: batched greedy / nucleus sampling through the public
//!   [`model::KvCache`], which any `CausalLm` can fill.
//! * [`locate`]: the installed SmolLM2 GGUF and the cache, found at run time.
//! * [`optim`]: the [`optim::Optimizer`] trait and AdamW, Adam and SGD over
//!   named tensors, with inspectable state.
//!
//! # Example
//!
//! ```
//! use seal_model::config::LlamaConfig;
//! use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
//! use seal_model::{CausalLm, Llama, LmBatch};
//! use tch::{Device, Kind};
//!
//! // A tiny random Llama (real checkpoints load with `Llama::load`).
//! let model = Llama::random(&LlamaConfig::tiny(64), Device::Cpu, Kind::Float, 0)?;
//! // Mean response-token NLL per row: token rows, first response position, pad id.
//! let batch = LmBatch::from_rows(&[vec![1, 5, 9, 14], vec![4, 8, 15]], &[2, 1], 0)?;
//! assert_eq!(model.per_sample_nll(&batch)?.size(), [2]);
//! // Greedy decoding through the KV cache.
//! let options = GenerationOptions {
//!     max_new_tokens: 4,
//!     sampling: Sampling::Greedy,
//!     eos_token_ids: vec![],
//!     pad_token_id: 0,
//!     seed: Some(0),
//!     prompt_limit: PromptLimit::Error(64),
//! };
//! let out = generate(&model, &[vec![1, 2, 3]], &options)?;
//! assert_eq!(out[0].len(), 4);
//! # Ok::<(), seal_model::ModelError>(())
//! ```

pub mod adapter;
pub mod config;
pub mod error;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod locate;
pub mod lora;
pub mod model;
pub mod neox;
pub mod optim;
pub mod phi3;
pub mod runtime;
pub mod weights;

pub use adapter::{DynLm, LoraLm};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use llama::{AttentionImpl, Llama, LoadOptions};
pub use lora::LoraConfig;
pub use model::{CausalLm, KvCache, LmBatch};
pub use neox::{GptNeoX, NeoxConfig};
pub use phi3::{Phi3, Phi3Config};
pub use runtime::WeightDtype;

/// An HF model directory opened for use: weights, tokenizer (with chat
/// template) and generation defaults. `M` is the model type: any family
/// chosen by `config.json` ([`DynLm`], the default), or a concrete one.
pub struct Pretrained<M = DynLm> {
    /// The model.
    pub model: M,
    /// Its tokenizer and chat template.
    pub tokenizer: seal_data::TextTokenizer,
    /// `generation_config.json`, when present.
    pub generation: Option<generate::GenerationConfig>,
}

impl Pretrained {
    /// Loads `config.json`, the safetensors weights, `tokenizer.json`,
    /// `tokenizer_config.json` and `generation_config.json` from `dir`, with
    /// the family registered for the config's `model_type`
    /// ([`family::load_model`]).
    pub fn load(dir: &std::path::Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_with(dir, opts, family::load_model)
    }
}

impl<M: CausalLm> Pretrained<M> {
    /// As [`Pretrained::load`], with the model built by `load` (e.g.
    /// `Llama::load` for a concrete `Llama`).
    pub fn load_with(
        dir: &std::path::Path,
        opts: &LoadOptions,
        load: impl FnOnce(&std::path::Path, &LoadOptions) -> Result<M>,
    ) -> Result<Self> {
        let tokenizer = seal_data::TextTokenizer::from_dir(dir)?;
        let model = load(dir, opts)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(ModelError::Config {
                path: dir.join("tokenizer.json"),
                message: format!(
                    "tokenizer has {} tokens but the model's vocab_size is {}",
                    tokenizer.vocab_size(),
                    model.vocab_size()
                ),
            });
        }
        let generation = generate::GenerationConfig::from_dir(dir)?;
        Ok(Self {
            model,
            tokenizer,
            generation,
        })
    }
}
