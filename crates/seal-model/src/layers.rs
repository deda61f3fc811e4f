//! Building blocks shared by the model families, public so that a user's own
//! architecture gets the same LoRA-capable linear layer, masks, attention
//! kernels and adapter bookkeeping as the built-in ones.
//!
//! * [`Linear`]: `y = x Wᵀ + b` with an optional LoRA branch
//!   (`scale · B A x`, PEFT's initialisation and key names).
//! * [`RmsNorm`] and [`LayerNorm`], computed in f32 as in transformers.
//! * [`step_masks`]: the attention mask, cache mask and positions of one
//!   forward call over left- or right-padded rows, with or without a
//!   [`KvCache`]; [`attend`]: SDPA or the twice-differentiable math path.
//! * [`LoraSite`], [`attach_lora`], [`load_lora_into`], [`merge_lora_sites`]:
//!   a family lists its adapted linears with their PEFT keys once, and these
//!   do the rest.

use crate::error::{ModelError, Result};
use crate::llama::AttentionImpl;
use crate::lora::LoraConfig;
use crate::model::KvCache;
use crate::weights::{save_safetensors, write_json_atomic, WeightFiles};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// LoRA factors of one linear layer.
pub struct LoraFactors {
    /// `A`, `[r, in]`.
    pub a: Tensor,
    /// `B`, `[out, r]`.
    pub b: Tensor,
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f64,
    /// Dropout on the LoRA input while training.
    pub dropout: f64,
}

/// A linear layer `y = x Wᵀ + b` with an optional LoRA branch.
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
    /// The LoRA branch, when attached.
    pub lora: Option<LoraFactors>,
}

impl Linear {
    /// A layer whose weight (and bias, zero-initialised) live under `p`
    /// as `weight` and `bias`.
    pub fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, init: nn::Init) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], init);
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.)));
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Applies the layer; `training` enables LoRA dropout.
    pub fn forward(&self, x: &Tensor, training: bool) -> Tensor {
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

    /// The same (shared) base weights without a LoRA branch.
    pub fn fork(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: None,
        }
    }
}

/// Root-mean-square layer norm, computed in f32 as in transformers.
pub struct RmsNorm {
    /// `[dim]`.
    pub weight: Tensor,
    /// Added to the mean square.
    pub eps: f64,
}

fn at_least_f32(x: &Tensor) -> Tensor {
    if x.kind() == Kind::Double {
        x.shallow_clone()
    } else {
        x.to_kind(Kind::Float)
    }
}

/// f64 for f64 models, else f32: the dtype of losses, softmaxes and rotary
/// angles of a model whose weights are `kind`.
pub fn compute_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Checks `input_ids` before a forward pass: `[batch, seq]`, integer, every
/// id in `[0, vocab_size)` (an out-of-range id would abort inside libtorch's
/// embedding instead of returning an error).
pub fn check_token_ids(input_ids: &Tensor, vocab_size: usize) -> Result<()> {
    if input_ids.dim() != 2 {
        return Err(ModelError::InvalidInput(format!(
            "input_ids must be [batch, seq], got {:?}",
            input_ids.size()
        )));
    }
    if !matches!(input_ids.kind(), Kind::Int64 | Kind::Int) {
        return Err(ModelError::InvalidInput(format!(
            "input_ids must hold integer token ids, got {:?}",
            input_ids.kind()
        )));
    }
    if input_ids.numel() > 0 {
        let max = input_ids.max().int64_value(&[]);
        let min = input_ids.min().int64_value(&[]);
        if min < 0 || max >= vocab_size as i64 {
            return Err(ModelError::InvalidInput(format!(
                "input_ids contain token {} outside the vocabulary [0, {vocab_size})",
                if min < 0 { min } else { max },
            )));
        }
    }
    Ok(())
}

/// Residual-stream taps after `layers` (1-based blocks, 0 = embeddings), in
/// the order asked: checks them against `num_layers`, lets `run` record
/// `(block, hidden)` pairs (a forward pass that stops after the deepest),
/// and picks the asked ones out.
pub fn collect_taps(
    layers: &[usize],
    num_layers: usize,
    run: impl FnOnce(&mut Vec<(usize, Tensor)>) -> Result<()>,
) -> Result<Vec<Tensor>> {
    if let Some(&bad) = layers.iter().find(|&&l| l > num_layers) {
        return Err(ModelError::InvalidInput(format!(
            "hidden-state layer {bad} does not exist (the model has {num_layers} blocks; 0 = embeddings)"
        )));
    }
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    let mut taps = Vec::new();
    run(&mut taps)?;
    layers
        .iter()
        .map(|l| {
            taps.iter()
                .find(|(i, _)| i == l)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| {
                    ModelError::InvalidInput(format!("internal: layer {l} was not tapped"))
                })
        })
        .collect()
}

impl RmsNorm {
    /// A norm with its `weight` under `p`, initialised to ones.
    pub fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.)),
            eps,
        }
    }
    /// `x / rms(x) · weight`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = at_least_f32(x);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, xf.kind());
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
    /// The same (shared) weight.
    pub fn fork(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
        }
    }
}

/// Layer norm with weight and bias, computed in f32 (GPT-NeoX's norm).
pub struct LayerNorm {
    /// `[dim]`.
    pub weight: Tensor,
    /// `[dim]`.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// A norm with `weight` (ones) and `bias` (zeros) under `p`.
    pub fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.)),
            bias: p.var("bias", &[dim], nn::Init::Const(0.)),
            eps,
        }
    }
    /// `(x − mean) / √(var + eps) · weight + bias`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = at_least_f32(x);
        let dim = *x.size().last().unwrap_or(&0);
        xf.layer_norm(
            [dim],
            Some(&at_least_f32(&self.weight)),
            Some(&at_least_f32(&self.bias)),
            self.eps,
            false,
        )
        .to_kind(kind)
    }
    /// The same (shared) weights.
    pub fn fork(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            eps: self.eps,
        }
    }
}

/// How queries may attend to keys in one forward call.
pub enum AttentionMask {
    /// Plain causal attention over the new tokens (no cache, no left padding).
    Causal,
    /// Every key is visible (single-token decode without padding).
    Full,
    /// Boolean `[B, 1, Lq, Lk]`, true where attention is allowed.
    Explicit(Tensor),
}

/// The masks and positions of one forward call ([`step_masks`]).
pub struct StepMasks {
    /// What each new query may attend to.
    pub mask: AttentionMask,
    /// `[B, past + L]` token mask of the cache after this call; hand it to
    /// [`KvCache::commit`] once every block has appended its keys.
    pub full_mask: Tensor,
    /// `[B, L]` position ids of the new tokens (padding does not count).
    pub positions: Tensor,
}

/// Masks and positions for `b × l` new tokens with the `[B, L]`
/// `attention_mask` (1 = token, 0 = padding; `None` = no padding), after
/// what `cache` holds. Left and right padding are both handled; a padded
/// query attends to itself so that no softmax row is empty.
pub fn step_masks(
    attention_mask: Option<&Tensor>,
    b: i64,
    l: i64,
    cache: Option<&KvCache>,
    device: Device,
) -> Result<StepMasks> {
    let new_mask = match attention_mask {
        Some(m) => {
            if m.size() != [b, l] {
                return Err(ModelError::InvalidInput(format!(
                    "attention_mask has shape {:?}, input_ids {:?}",
                    m.size(),
                    [b, l]
                )));
            }
            m.to_device(device).to_kind(Kind::Int64)
        }
        None => Tensor::ones([b, l], (Kind::Int64, device)),
    };
    let past_len = cache.map(|c| c.seq_len()).unwrap_or(0);
    let full_mask = match cache {
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
        AttentionMask::Causal
    } else if l == 1 && !has_padding {
        AttentionMask::Full
    } else {
        let lk = past_len + l;
        let k_idx = Tensor::arange(lk, (Kind::Int64, device));
        let q_idx = Tensor::arange(l, (Kind::Int64, device)) + past_len;
        let causal = k_idx.unsqueeze(0).le_tensor(&q_idx.unsqueeze(1)); // [Lq, Lk]
        let key_ok = full_mask.gt(0).unsqueeze(1); // [B, 1, Lk]
        let diag = k_idx.unsqueeze(0).eq_tensor(&q_idx.unsqueeze(1));
        let allowed = causal
            .unsqueeze(0)
            .logical_and(&key_ok)
            .logical_or(&diag.unsqueeze(0));
        AttentionMask::Explicit(allowed.unsqueeze(1))
    };
    let positions = (full_mask.cumsum(1, Kind::Int64) - 1)
        .clamp_min(0)
        .narrow(1, past_len, l);
    Ok(StepMasks {
        mask,
        full_mask,
        positions,
    })
}

/// Scaled dot-product attention of `q` `[B, H, Lq, D]` over `k`, `v`
/// `[B, H_kv, Lk, D]`, where `H` is a multiple of `H_kv` (grouped-query
/// attention: query head `h` reads key/value head `h / (H / H_kv)`, HF's
/// order). On the CPU, SDPA reads the grouped heads directly
/// (`enable_gqa`: the same output, and about a quarter less time for
/// SmolLM2's 9 query and 3 key/value heads in bf16, forward and backward);
/// on CUDA, where only the flash kernel takes grouped heads, and on the
/// math path they are repeated first ([`repeat_kv`]).
/// [`AttentionImpl::Math`] is twice differentiable.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    attention: AttentionImpl,
) -> Tensor {
    let groups = q.size()[1] / k.size()[1].max(1);
    let gqa = groups > 1 && attention == AttentionImpl::Sdpa && q.device() == Device::Cpu;
    let repeated = (groups > 1 && !gqa).then(|| (repeat_kv(k, groups), repeat_kv(v, groups)));
    let (k, v) = repeated.as_ref().map_or((k, v), |(k, v)| (k, v));
    match attention {
        AttentionImpl::Sdpa => {
            let (explicit, causal) = match mask {
                AttentionMask::Causal => (None, true),
                AttentionMask::Full => (None, false),
                AttentionMask::Explicit(m) => (Some(m), false),
            };
            Tensor::scaled_dot_product_attention(q, k, v, explicit, 0.0, causal, None, gqa)
        }
        AttentionImpl::Math => {
            let (lq, lk) = (q.size()[2], k.size()[2]);
            let hd = *q.size().last().unwrap_or(&1);
            let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt();
            let scores = match mask {
                AttentionMask::Causal => {
                    let causal = Tensor::ones([lq, lk], (Kind::Bool, q.device())).tril(lk - lq);
                    scores.masked_fill(&causal.logical_not(), f64::NEG_INFINITY)
                }
                AttentionMask::Full => scores,
                AttentionMask::Explicit(m) => {
                    scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY)
                }
            };
            softmax_matmul(&scores, v)
        }
    }
}

/// The math attention path's last step: softmax over keys in at least f32,
/// then the weighted sum of the values.
pub fn softmax_matmul(scores: &Tensor, v: &Tensor) -> Tensor {
    at_least_f32(scores)
        .softmax(-1, None::<Kind>)
        .to_kind(v.kind())
        .matmul(v)
}

/// Repeats each key/value head `groups` times along the head axis, as
/// transformers' `repeat_kv` (expand + reshape: its backward is a plain sum).
pub fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], groups, s[2], s[3]], false)
        .reshape([s[0], s[1] * groups, s[2], s[3]])
}

/// `[-x₂, x₁]` over the last axis: the rotation of rotary embeddings.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// libtorch's generator is global: seeding and initialising under one lock
/// keeps seeded initialisation reproducible when threads build models at once.
pub fn seeded_init_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A linear layer that may carry LoRA: its PEFT module key (e.g.
/// `base_model.model.model.layers.3.self_attn.q_proj`) and the module name
/// that [`LoraConfig::target_modules`] matches (`q_proj`).
pub struct LoraSite<'a> {
    /// PEFT key of the module, without `.lora_A.weight`.
    pub key: String,
    /// Module name matched against the config's targets.
    pub name: &'static str,
    /// The layer.
    pub linear: &'a mut Linear,
}

/// An adapter's factors, owned in one variable store named with PEFT keys.
pub struct LoraAdapter {
    /// Its hyper-parameters.
    pub config: LoraConfig,
    /// Trainable factors, named with PEFT keys.
    pub vs: nn::VarStore,
}

impl LoraAdapter {
    /// The factors by PEFT key, sorted by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors`, each
    /// atomically.
    pub fn save(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        save_safetensors(
            &dir.join("adapter_model.safetensors"),
            &self.parameters(),
            None,
        )?;
        write_json_atomic(
            &dir.join("adapter_config.json"),
            &self.config.to_peft_json(base_model),
        )
    }
}

/// Attaches fresh LoRA factors (PEFT's initialisation: `A` Kaiming-uniform,
/// `B` zero) to the sites the config targets, clearing the others. Factors
/// are drawn on the CPU generator under `seed`, so a seed gives the same
/// adapter on every device, then moved to `device` in f32 (f64 for f64
/// models). Every target must name a site.
pub fn attach_lora(
    sites: Vec<LoraSite<'_>>,
    config: &LoraConfig,
    seed: i64,
    device: Device,
    model_kind: Kind,
) -> Result<LoraAdapter> {
    config.validate()?;
    // As PEFT: a target that names no module of the model is an error, not
    // a silently smaller adapter.
    if let Some(missing) = config
        .target_modules
        .iter()
        .find(|t| !sites.iter().any(|s| s.name == t.as_str()))
    {
        let mut names: Vec<&str> = sites.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        return Err(ModelError::InvalidInput(format!(
            "LoRA target module `{missing}` of {:?} is not a module of this model (its modules: {})",
            config.target_modules,
            names.join(", ")
        )));
    }
    let _lock = seeded_init_lock();
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let scale = config.scale();
    let mut attached = Vec::new();
    for site in sites {
        if !config.targets(site.name) {
            site.linear.lora = None;
            continue;
        }
        let size = site.linear.weight.size();
        let (out_dim, in_dim) = (size[0], size[1]);
        let mut lp = root.clone();
        for part in site.key.split('.') {
            lp = &lp / part;
        }
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
        let b = (&lp / "lora_B").var("weight", &[out_dim, config.r as i64], nn::Init::Const(0.));
        site.linear.lora = Some(LoraFactors {
            a,
            b,
            scale,
            dropout: config.dropout,
        });
        attached.push((site.key, site.linear));
    }
    if model_kind == Kind::Double {
        vs.double();
    }
    vs.set_device(device);
    // Moving the store replaced its tensors: point the layers at them again.
    let vars = vs.variables();
    for (key, linear) in attached {
        if let Some(l) = &mut linear.lora {
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
    Ok(LoraAdapter {
        config: config.clone(),
        vs,
    })
}

/// Loads the PEFT adapter directory `dir` into `sites`: the config is read,
/// every factor's shape is checked against the file before anything is
/// allocated, the factors are attached and filled, and a tensor in the file
/// that no site expects is an error.
pub fn load_lora_into(
    sites: Vec<LoraSite<'_>>,
    dir: &Path,
    device: Device,
    model_kind: Kind,
) -> Result<LoraAdapter> {
    let config = LoraConfig::from_peft_file(&dir.join("adapter_config.json"))?;
    let path = dir.join("adapter_model.safetensors");
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path,
            what: "PEFT adapter weights".into(),
        });
    }
    let weights = WeightFiles::open_file(&path)?;
    // `r` comes from the config file and sizes the adapter: check the file's
    // factors before allocating it.
    let r = i64::try_from(config.r).map_err(|_| ModelError::Config {
        path: dir.join("adapter_config.json"),
        message: format!("field `r`: {} is too large", config.r),
    })?;
    for site in &sites {
        if !config.targets(site.name) {
            continue;
        }
        let size = site.linear.weight.size();
        let key = &site.key;
        weights.check_shape(&format!("{key}.lora_A.weight"), &[r, size[1]])?;
        weights.check_shape(&format!("{key}.lora_B.weight"), &[size[0], r])?;
    }
    let adapter = attach_lora(sites, &config, 0, device, model_kind)?;
    let params = adapter.parameters();
    let _guard = tch::no_grad_guard();
    for (name, var) in &params {
        let t = weights.load(name, &var.size(), var.kind(), device)?;
        var.shallow_clone().f_copy_(&t)?;
    }
    let expected: std::collections::HashSet<&str> =
        params.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = weights.names().find(|n| !expected.contains(n)) {
        return Err(ModelError::Safetensors {
            path,
            message: format!(
                "unexpected tensor `{extra}` (not a LoRA factor of the configured target modules)"
            ),
        });
    }
    Ok(adapter)
}

/// Folds each site's LoRA branch into its weight (`W += scale·B·A`) and
/// removes the branch.
pub fn merge_lora_sites(sites: Vec<LoraSite<'_>>) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for site in sites {
        if let Some(l) = site.linear.lora.take() {
            let delta = (l.b.matmul(&l.a) * l.scale).to_kind(site.linear.weight.kind());
            let _ = site.linear.weight.f_add_(&delta)?;
        }
    }
    Ok(())
}
