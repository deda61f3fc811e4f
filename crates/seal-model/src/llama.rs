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
    attach_lora, attend, load_lora_into, merge_lora_sites, repeat_kv, rotate_half,
    seeded_init_lock, softmax_matmul, step_masks, AttentionMask, Linear, LoraSite, RmsNorm,
    StepMasks,
};
use crate::lora::LoraConfig;
use crate::model::{response_nll, CausalLm, KvCache, LmBatch};
use crate::weights::{save_safetensors, write_json_atomic, WeightFiles};
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
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Where the weights live.
    pub device: Device,
    /// Weight dtype: `Float` on CPU; `Float` or `BFloat16` on CUDA.
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

fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f64> {
    let d = cfg.head_dim as f64;
    let base: Vec<f64> = (0..cfg.head_dim / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d))
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Checks that `weights` holds every base tensor of `c` with the right
/// shape before anything is allocated: the sizes come from `config.json`,
/// and a config asking for more than the files hold would otherwise
/// allocate it (or loop over an absurd layer count).
fn check_base_shapes(c: &LlamaConfig, weights: &WeightFiles) -> Result<()> {
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
    let inter = dim(Some(c.intermediate_size), "intermediate_size")?;
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
        for (group, name, out, inp, bias) in [
            ("self_attn", "q_proj", q, h, c.qkv_bias),
            ("self_attn", "k_proj", kv, h, c.qkv_bias),
            ("self_attn", "v_proj", kv, h, c.qkv_bias),
            ("self_attn", "o_proj", h, q, c.o_bias),
            ("mlp", "gate_proj", inter, h, c.mlp_bias),
            ("mlp", "up_proj", inter, h, c.mlp_bias),
            ("mlp", "down_proj", h, inter, c.mlp_bias),
        ] {
            weights.check_shape(&format!("{p}.{group}.{name}.weight"), &[out, inp])?;
            if bias {
                weights.check_shape(&format!("{p}.{group}.{name}.bias"), &[out])?;
            }
        }
    }
    Ok(())
}

impl Llama {
    /// Builds a randomly initialised model (N(0, 0.02) weights, unit norms)
    /// on `device` in `kind`; `seed` makes it reproducible.
    pub fn random(config: &LlamaConfig, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        let _lock = seeded_init_lock();
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(device);
        let model = Self::build(config, &mut vs, kind, WeightInit::Random)?;
        Ok(model)
    }

    /// Loads an HF model directory (`config.json` plus `model.safetensors` or
    /// a sharded index). The tokenizer is loaded separately with
    /// [`seal_data::TextTokenizer::from_dir`].
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open_dir(dir)?;
        Self::from_weights(&config, &weights, opts)
    }

    /// Builds the model from already opened weight files.
    pub fn from_weights(
        config: &LlamaConfig,
        weights: &WeightFiles,
        opts: &LoadOptions,
    ) -> Result<Self> {
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
        config: &LlamaConfig,
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
        // Weights about to be overwritten by a checkpoint start at zero: no
        // draw from libtorch's global generator, which a concurrently seeded
        // `Llama::random` or `add_lora` would otherwise see consumed.
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
                    q_proj: Linear::new(&(&a / "q_proj"), h, q_dim, c.qkv_bias, init),
                    k_proj: Linear::new(&(&a / "k_proj"), h, kv_dim, c.qkv_bias, init),
                    v_proj: Linear::new(&(&a / "v_proj"), h, kv_dim, c.qkv_bias, init),
                    o_proj: Linear::new(&(&a / "o_proj"), q_dim, h, c.o_bias, init),
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
                    gate_proj: Linear::new(&(&mp / "gate_proj"), h, inter, c.mlp_bias, init),
                    up_proj: Linear::new(&(&mp / "up_proj"), h, inter, c.mlp_bias, init),
                    down_proj: Linear::new(&(&mp / "down_proj"), inter, h, c.mlp_bias, init),
                },
            });
        }
        let norm = RmsNorm::new(&(&m / "norm"), h, c.rms_norm_eps);
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (&root / "lm_head").var("weight", &[c.vocab_size as i64, h], init)
        };
        // Variables are created in f32; convert in place so every shallow
        // clone taken above sees the new dtype.
        match kind {
            Kind::Double => vs.double(),
            Kind::BFloat16 => vs.bfloat16(),
            Kind::Half => vs.half(),
            _ => {}
        }
        vs.freeze();
        let device = vs.device();
        let inv_freq = Tensor::from_slice(&rope_inv_freq(c)).to_device(device);
        let base = Arc::new(std::mem::replace(vs, nn::VarStore::new(device)));
        // Re-fetch the tensors after the dtype change (set_kind replaces data in place).
        let mut model = Self {
            config: config.clone(),
            base,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            kind,
            device,
            attention: AttentionImpl::Sdpa,
            training: false,
            full_finetune: false,
            lora: None,
        };
        model.rebind_base()?;
        Ok(model)
    }

    /// Points every layer at the VarStore's current tensors (after a dtype
    /// conversion the VarStore holds new tensor objects).
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
                if lin.bias.is_some() {
                    lin.bias = Some(get(&format!("{p}.{group}.{name}.bias"))?);
                }
            }
        }
        Ok(())
    }

    /// The architecture.
    pub fn config(&self) -> &LlamaConfig {
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

    /// Base weights by HF name (shared storage, not copies).
    pub fn base_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.base.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Attaches a freshly initialised LoRA adapter (replacing any other).
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
    /// fresh LoRA adapter, e.g. the auxiliary lower-level copy of SEAL's
    /// penalty method. The base must stay frozen while forks share it.
    pub fn fork_with_lora(&self, config: &LoraConfig, seed: i64) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|b| Block {
                input_layernorm: b.input_layernorm.fork(),
                self_attn: Attention {
                    q_proj: b.self_attn.q_proj.fork(),
                    k_proj: b.self_attn.k_proj.fork(),
                    v_proj: b.self_attn.v_proj.fork(),
                    o_proj: b.self_attn.o_proj.fork(),
                    n_heads: b.self_attn.n_heads,
                    n_kv_heads: b.self_attn.n_kv_heads,
                    head_dim: b.self_attn.head_dim,
                },
                post_attention_layernorm: b.post_attention_layernorm.fork(),
                mlp: Mlp {
                    gate_proj: b.mlp.gate_proj.fork(),
                    up_proj: b.mlp.up_proj.fork(),
                    down_proj: b.mlp.down_proj.fork(),
                },
            })
            .collect();
        let mut fork = Self {
            config: self.config.clone(),
            base: Arc::clone(&self.base),
            embed_tokens: self.embed_tokens.shallow_clone(),
            layers,
            norm: self.norm.fork(),
            lm_head: self.lm_head.shallow_clone(),
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
    /// Every expected tensor must be present with the right shape, and no
    /// unexpected tensor may be left over.
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

    /// Writes an HF model directory (`config.json`, `model.safetensors`).
    /// Tokenizer files are not touched; copy them with the model if needed.
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
        hf.torch_dtype = Some(
            match self.kind {
                Kind::BFloat16 => "bfloat16",
                Kind::Half => "float16",
                Kind::Double => "float64",
                _ => "float32",
            }
            .into(),
        );
        write_json_atomic(&dir.join("config.json"), &hf)
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<()> {
        if input_ids.dim() != 2 {
            return Err(ModelError::InvalidInput(format!(
                "input_ids must be [batch, seq], got {:?}",
                input_ids.size()
            )));
        }
        if input_ids.numel() > 0 {
            let max = input_ids.max().int64_value(&[]);
            let min = input_ids.min().int64_value(&[]);
            if min < 0 || max >= self.config.vocab_size as i64 {
                return Err(ModelError::InvalidInput(format!(
                    "input_ids contain token {} outside the vocabulary [0, {})",
                    if min < 0 { min } else { max },
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
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
    /// given. The forward pass stops after the deepest block asked for, so
    /// shallow features cost only the blocks they read.
    pub fn forward_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        let n = self.config.num_hidden_layers;
        if let Some(&bad) = layers.iter().find(|&&l| l > n) {
            return Err(ModelError::InvalidInput(format!(
                "hidden-state layer {bad} does not exist (the model has {n} blocks; 0 = embeddings)"
            )));
        }
        if layers.is_empty() {
            return Ok(Vec::new());
        }
        let mut taps = Vec::new();
        let _deepest = self.forward_impl(input_ids, attention_mask, None, layers, &mut taps)?;
        Ok(layers
            .iter()
            .map(|l| {
                taps.iter()
                    .find(|(i, _)| i == l)
                    .map(|(_, t)| t.shallow_clone())
                    .expect("every requested layer is tapped")
            })
            .collect())
    }

    /// The forward pass. With `taps` non-empty, records the residual stream
    /// after those blocks and returns early after the deepest one (its
    /// return value is then that block's output, without the final norm).
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
        let StepMasks {
            mask,
            full_mask,
            positions,
        } = step_masks(attention_mask, b, l, cache.as_deref(), self.device)?;
        let freqs =
            positions.to_kind(Kind::Double).unsqueeze(-1) * self.inv_freq.unsqueeze(0).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let rope_kind = if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        // Angles in f64, then cos/sin in the compute dtype, as close to HF's f32 path as possible.
        let cos = emb.to_kind(rope_kind).cos().to_kind(self.kind).unsqueeze(1);
        let sin = emb.to_kind(rope_kind).sin().to_kind(self.kind).unsqueeze(1);

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
            let gate = block.mlp.gate_proj.forward(&h, self.training).silu();
            let up = block.mlp.up_proj.forward(&h, self.training);
            x = &x + block.mlp.down_proj.forward(&(gate * up), self.training);
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
        let q = attn
            .q_proj
            .forward(x, self.training)
            .view([b, l, attn.n_heads, hd])
            .transpose(1, 2);
        let k = attn
            .k_proj
            .forward(x, self.training)
            .view([b, l, attn.n_kv_heads, hd])
            .transpose(1, 2);
        let v = attn
            .v_proj
            .forward(x, self.training)
            .view([b, l, attn.n_kv_heads, hd])
            .transpose(1, 2);
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        let decoding = cache.is_some() && l == 1 && !matches!(mask, AttentionMask::Causal);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let groups = attn.n_heads / attn.n_kv_heads;
        if decoding && groups > 1 {
            return self.decode_attention(attn, &q, &k, &v, mask, b);
        }
        let (k, v) = if groups > 1 {
            (repeat_kv(&k, groups), repeat_kv(&v, groups))
        } else {
            (k, v)
        };
        let out = attend(&q, &k, &v, mask, self.attention);
        let out = out
            .transpose(1, 2)
            .contiguous()
            .view([b, l, attn.n_heads * hd]);
        Ok(attn.o_proj.forward(&out, self.training))
    }

    /// Attention of one new token per row against the cache, without
    /// repeating the keys and values for every query head: the `groups`
    /// query heads that share a key/value head become `groups` query rows
    /// of that head (HF's head order: query head `h` reads key/value head
    /// `h / groups`). Same result as the general path, a fraction of the
    /// memory traffic.
    fn decode_attention(
        &self,
        attn: &Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        b: i64,
    ) -> Result<Tensor> {
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
        Ok(attn.o_proj.forward(&out, self.training))
    }

    /// Applies the LM head to hidden states (any leading shape).
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<&Tensor>(&self.lm_head, None)
    }
}

impl CausalLm for Llama {
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
                (self.loss_kind(), self.device),
            ));
        }
        let hidden = self.forward_hidden(&ids, Some(&batch.attention_mask), None)?;
        response_nll(&hidden, batch, self.loss_kind(), &|h| self.lm_head(h))
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

impl Llama {
    fn loss_kind(&self) -> Kind {
        if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        }
    }
}

impl LoraLm for Llama {
    fn model_type(&self) -> &str {
        "llama"
    }
    fn add_lora(&mut self, config: &LoraConfig, seed: i64) -> Result<()> {
        Llama::add_lora(self, config, seed)
    }
    fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }
    fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        Llama::lora_parameters(self)
    }
    fn base_parameters(&self) -> Vec<(String, Tensor)> {
        Llama::base_parameters(self)
    }
    fn fork_lora(&self, config: &LoraConfig, seed: i64) -> Result<DynLm> {
        Ok(Box::new(self.fork_with_lora(config, seed)?))
    }
    fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        Llama::save_lora(self, dir, base_model)
    }
    fn load_lora(&mut self, dir: &Path) -> Result<()> {
        Llama::load_lora(self, dir)
    }
    fn merge_lora(&mut self) -> Result<()> {
        Llama::merge_lora(self)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        Llama::save_pretrained(self, dir)
    }
    fn set_training(&mut self, training: bool) {
        Llama::set_training(self, training)
    }
    fn set_full_finetune(&mut self, on: bool) {
        Llama::set_full_finetune(self, on)
    }
    fn set_attention_impl(&mut self, attention: AttentionImpl) {
        Llama::set_attention_impl(self, attention)
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}
