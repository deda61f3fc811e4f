//! Building a [`Llama`]: random initialisation, HF checkpoints (shapes
//! checked before anything is allocated) and the rotary frequencies.

use super::*;

pub(super) fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f64> {
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
pub(super) fn check_base_shapes(c: &LlamaConfig, weights: &WeightFiles) -> Result<()> {
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

    pub(super) fn build(
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
    pub(super) fn rebind_base(&mut self) -> Result<()> {
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
}
