//! The LoRA adapter of a [`Llama`], its settings and saving, and
//! [`LoraLm`].

use super::*;

impl Llama {
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

    pub(super) fn lora_sites(&mut self) -> Vec<LoraSite<'_>> {
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
        hf.torch_dtype = Some(torch_dtype_name(self.kind).into());
        write_json_atomic(&dir.join("config.json"), &hf)
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
