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

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::lora::LoraConfig;
use crate::model::{CausalLm, KvCache, LmBatch};
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

/// LoRA factors of one linear layer.
struct LoraFactors {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
}

/// How [`Llama::build`] fills the base weights.
#[derive(Clone, Copy)]
enum WeightInit {
    /// N(0, 0.02), drawn from the (seeded) global generator.
    Random,
    /// Zeros: a checkpoint overwrites every weight right after.
    Overwritten,
}

/// A linear layer `y = x Wᵀ + b` with an optional LoRA branch.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraFactors>,
}

impl Linear {
    fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, init: nn::Init) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], init);
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.)));
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    fn forward(&self, x: &Tensor, training: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            None => y,
            Some(l) => {
                let xin = if x.kind() == l.a.kind() {
                    x.shallow_clone()
                } else {
                    x.to_kind(l.a.kind())
                };
                let xin = if training && l.dropout > 0.0 {
                    xin.dropout(l.dropout, true)
                } else {
                    xin
                };
                let delta = xin
                    .linear::<&Tensor>(&l.a, None)
                    .linear::<&Tensor>(&l.b, None)
                    * l.scale;
                let kind = y.kind();
                y + delta.to_kind(kind)
            }
        }
    }

    fn fork(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: None,
        }
    }
}

/// Root-mean-square layer norm, computed in f32 as in transformers.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.)),
            eps,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = if kind == Kind::Double {
            x.shallow_clone()
        } else {
            x.to_kind(Kind::Float)
        };
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, xf.kind());
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
    fn fork(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
        }
    }
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
}

/// How queries may attend to keys in one forward call.
enum Mask {
    /// Plain causal attention over the new tokens (no cache, no left padding).
    Causal,
    /// Every key is visible (single-token decode without padding).
    Full,
    /// Boolean `[B, 1, Lq, Lk]`, true where attention is allowed.
    Explicit(Tensor),
}

/// The LoRA adapter attached to a [`Llama`].
pub struct LoraAdapter {
    /// Its hyper-parameters.
    pub config: LoraConfig,
    /// Trainable factors, named with PEFT keys.
    pub vs: nn::VarStore,
}

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

/// libtorch's generator is global: seeding and initialising under one lock
/// keeps seeded initialisation reproducible when threads build models at once.
fn seeded_init_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Repeats each key/value head `groups` times along the head axis, as
/// transformers' `repeat_kv` (expand + reshape: its backward is a plain sum).
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], groups, s[2], s[3]], false)
        .reshape([s[0], s[1] * groups, s[2], s[3]])
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
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
        config.validate()?;
        let _lock = seeded_init_lock();
        tch::manual_seed(seed);
        // Initialised on the CPU generator and then moved, so a seed gives
        // the same adapter on every device.
        let vs = nn::VarStore::new(Device::Cpu);
        let lora_kind = match self.kind {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let root = vs.root();
        let scale = config.scale();
        for (i, b) in self.layers.iter_mut().enumerate() {
            let p = &root / "base_model" / "model" / "model" / "layers" / i;
            for (group, name, lin) in b.linears_mut() {
                if !config.targets(name) {
                    lin.lora = None;
                    continue;
                }
                let size = lin.weight.size();
                let (out_dim, in_dim) = (size[0], size[1]);
                let lp = &p / group / name;
                // PEFT: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0.
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = (&lp / "lora_A").var(
                    "weight",
                    &[config.r as i64, in_dim],
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                );
                let bm = (&lp / "lora_B").var(
                    "weight",
                    &[out_dim, config.r as i64],
                    nn::Init::Const(0.),
                );
                lin.lora = Some(LoraFactors {
                    a,
                    b: bm,
                    scale,
                    dropout: config.dropout,
                });
            }
        }
        let mut vs = vs;
        if lora_kind == Kind::Double {
            vs.double();
        }
        vs.set_device(self.device);
        self.lora = Some(LoraAdapter {
            config: config.clone(),
            vs,
        });
        self.rebind_lora()?;
        Ok(())
    }

    fn rebind_lora(&mut self) -> Result<()> {
        let Some(adapter) = &self.lora else {
            return Ok(());
        };
        let vars = adapter.vs.variables();
        for (i, b) in self.layers.iter_mut().enumerate() {
            for (group, name, lin) in b.linears_mut() {
                if let Some(l) = &mut lin.lora {
                    let key = format!("base_model.model.model.layers.{i}.{group}.{name}");
                    let fetch = |suffix: &str| {
                        vars.get(&format!("{key}.{suffix}.weight"))
                            .map(Tensor::shallow_clone)
                            .ok_or_else(|| {
                                ModelError::InvalidInput(format!(
                                    "internal: LoRA variable {key}.{suffix} missing"
                                ))
                            })
                    };
                    l.a = fetch("lora_A")?;
                    l.b = fetch("lora_B")?;
                }
            }
        }
        Ok(())
    }

    /// The attached LoRA adapter, if any.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// LoRA parameters by PEFT key, sorted by name.
    pub fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .lora
            .as_ref()
            .map(|l| l.vs.variables().into_iter().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
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
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        save_safetensors(
            &dir.join("adapter_model.safetensors"),
            &self.lora_parameters(),
            None,
        )?;
        write_json_atomic(
            &dir.join("adapter_config.json"),
            &adapter.config.to_peft_json(base_model),
        )
    }

    /// Loads a PEFT LoRA adapter directory, replacing any attached adapter.
    /// Every expected tensor must be present with the right shape, and no
    /// unexpected tensor may be left over.
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let config = LoraConfig::from_peft_file(&dir.join("adapter_config.json"))?;
        let path = dir.join("adapter_model.safetensors");
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path,
                what: "PEFT adapter weights".into(),
            });
        }
        let weights = WeightFiles::open_file(&path)?;
        // `r` comes from the config file and sizes the adapter: check the
        // file's factors before allocating it.
        let r = i64::try_from(config.r).map_err(|_| ModelError::Config {
            path: dir.join("adapter_config.json"),
            message: format!("field `r`: {} is too large", config.r),
        })?;
        for (i, b) in self.layers.iter_mut().enumerate() {
            for (group, name, lin) in b.linears_mut() {
                if !config.targets(name) {
                    continue;
                }
                let size = lin.weight.size();
                let key = format!("base_model.model.model.layers.{i}.{group}.{name}");
                weights.check_shape(&format!("{key}.lora_A.weight"), &[r, size[1]])?;
                weights.check_shape(&format!("{key}.lora_B.weight"), &[size[0], r])?;
            }
        }
        self.add_lora(&config, 0)?;
        let params = self.lora_parameters();
        let _guard = tch::no_grad_guard();
        for (name, var) in &params {
            let t = weights.load(name, &var.size(), var.kind(), self.device)?;
            var.shallow_clone().f_copy_(&t)?;
        }
        let expected: std::collections::HashSet<&str> =
            params.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = weights.names().find(|n| !expected.contains(n)) {
            return Err(ModelError::Safetensors {
                path,
                message: format!("unexpected tensor `{extra}` (not a LoRA factor of the configured target modules)"),
            });
        }
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
        let _guard = tch::no_grad_guard();
        for b in &mut self.layers {
            for (_, _, lin) in b.linears_mut() {
                if let Some(l) = lin.lora.take() {
                    let delta = (l.b.matmul(&l.a) * l.scale).to_kind(lin.weight.kind());
                    let _ = lin.weight.f_add_(&delta)?;
                }
            }
        }
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
        let new_mask = match attention_mask {
            Some(m) => {
                if m.size() != [b, l] {
                    return Err(ModelError::InvalidInput(format!(
                        "attention_mask has shape {:?}, input_ids {:?}",
                        m.size(),
                        [b, l]
                    )));
                }
                m.to_device(self.device).to_kind(Kind::Int64)
            }
            None => Tensor::ones([b, l], (Kind::Int64, self.device)),
        };
        let past_len = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        let full_mask = match cache.as_ref() {
            Some(c) => c.step_mask(&new_mask)?,
            None => new_mask.shallow_clone(),
        };
        let has_padding = full_mask.min().int64_value(&[]) == 0;
        let right_padded = !has_padding || {
            let lf = full_mask.size()[1];
            lf < 2
                || full_mask
                    .narrow(1, 1, lf - 1)
                    .gt_tensor(&full_mask.narrow(1, 0, lf - 1))
                    .any()
                    .int64_value(&[])
                    == 0
        };
        let mask = if past_len == 0 && right_padded {
            // Valid tokens of right-padded rows never see padding under a causal mask.
            Mask::Causal
        } else if l == 1 && !has_padding {
            Mask::Full
        } else {
            let lk = past_len + l;
            let k_idx = Tensor::arange(lk, (Kind::Int64, self.device));
            let q_idx = Tensor::arange(l, (Kind::Int64, self.device)) + past_len;
            let causal = k_idx.unsqueeze(0).le_tensor(&q_idx.unsqueeze(1)); // [Lq, Lk]
            let key_ok = full_mask.gt(0).unsqueeze(1); // [B, 1, Lk]
            let diag = k_idx.unsqueeze(0).eq_tensor(&q_idx.unsqueeze(1));
            // A padded query still attends to itself so no row is empty (no NaN).
            let allowed = causal
                .unsqueeze(0)
                .logical_and(&key_ok)
                .logical_or(&diag.unsqueeze(0));
            Mask::Explicit(allowed.unsqueeze(1))
        };
        let positions = (full_mask.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, past_len, l);
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
        mask: &Mask,
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
        let decoding = cache.is_some() && l == 1 && !matches!(mask, Mask::Causal);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let groups = attn.n_heads / attn.n_kv_heads;
        if decoding && groups > 1 {
            return self.decode_attention(attn, &q, &k, &v, mask, b);
        }
        let out = match self.attention {
            AttentionImpl::Sdpa => {
                let (k, v) = if groups > 1 {
                    (repeat_kv(&k, groups), repeat_kv(&v, groups))
                } else {
                    (k, v)
                };
                match mask {
                    Mask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                        &q, &k, &v, None, 0.0, true, None, false,
                    ),
                    Mask::Full => Tensor::scaled_dot_product_attention::<Tensor>(
                        &q, &k, &v, None, 0.0, false, None, false,
                    ),
                    Mask::Explicit(m) => Tensor::scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        Some(m),
                        0.0,
                        false,
                        None,
                        false,
                    ),
                }
            }
            AttentionImpl::Math => {
                let (k, v) = if groups > 1 {
                    (repeat_kv(&k, groups), repeat_kv(&v, groups))
                } else {
                    (k, v)
                };
                let lk = k.size()[2];
                let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt();
                let scores = match mask {
                    Mask::Causal => {
                        let causal = Tensor::ones([l, lk], (Kind::Bool, self.device)).tril(lk - l);
                        scores.masked_fill(&causal.logical_not(), f64::NEG_INFINITY)
                    }
                    Mask::Full => scores,
                    Mask::Explicit(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
                };
                self.softmax_matmul(&scores, &v)
            }
        };
        let out = out
            .transpose(1, 2)
            .contiguous()
            .view([b, l, attn.n_heads * hd]);
        Ok(attn.o_proj.forward(&out, self.training))
    }

    /// The math attention path's last step: softmax over keys in at least
    /// f32, then the weighted sum of the values.
    fn softmax_matmul(&self, scores: &Tensor, v: &Tensor) -> Tensor {
        let kind = if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        scores
            .to_kind(kind)
            .softmax(-1, None::<Kind>)
            .to_kind(v.kind())
            .matmul(v)
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
        mask: &Mask,
        b: i64,
    ) -> Result<Tensor> {
        let hd = attn.head_dim;
        let groups = attn.n_heads / attn.n_kv_heads;
        let q = q.reshape([b, attn.n_kv_heads, groups, hd]);
        // `[B, 1, 1, Lk]` broadcasts over the key/value heads and the groups.
        let explicit = match mask {
            Mask::Explicit(m) => Some(m),
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
                self.softmax_matmul(&scores, v)
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
        let (b, l) = (ids.size()[0], ids.size()[1]);
        if l < 2 {
            return Ok(Tensor::zeros([b], (self.loss_kind(), self.device)));
        }
        let hidden = self.forward_hidden(&ids, Some(&batch.attention_mask), None)?;
        let h = hidden
            .narrow(1, 0, l - 1)
            .reshape([-1, self.config.hidden_size as i64]);
        let targets = ids.narrow(1, 1, l - 1).reshape([-1]);
        let mask = batch
            .loss_mask
            .to_device(self.device)
            .narrow(1, 1, l - 1)
            .to_kind(Kind::Bool);
        let flat = mask.reshape([-1]).nonzero().squeeze_dim(1);
        let counts = mask.sum_dim_intlist(1, false, self.loss_kind());
        // Only positions that carry a label go through the LM head.
        let logits = self
            .lm_head(&h.index_select(0, &flat))
            .to_kind(self.loss_kind());
        let token_nll = logits.cross_entropy_loss::<Tensor>(
            &targets.index_select(0, &flat),
            None,
            tch::Reduction::None,
            -100,
            0.0,
        );
        let rows = flat.divide_scalar_mode(l - 1, "floor");
        let sums =
            Tensor::zeros([b], (self.loss_kind(), self.device)).index_add(0, &rows, &token_nll);
        Ok(sums / counts.clamp_min(1.0))
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
