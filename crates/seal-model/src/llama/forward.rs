//! The forward pass of a [`Llama`] (padding, KV cache, SDPA or math
//! attention, grouped-query decoding) and [`CausalLm`].

use super::*;

impl Llama {
    pub(super) fn check_ids(&self, input_ids: &Tensor) -> Result<()> {
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
        collect_taps(layers, self.config.num_hidden_layers, |taps| {
            self.forward_impl(input_ids, attention_mask, None, layers, taps)
                .map(|_| ())
        })
    }

    /// The forward pass. With `taps` non-empty, records the residual stream
    /// after those blocks and returns early after the deepest one (its
    /// return value is then that block's output, without the final norm).
    pub(super) fn forward_impl(
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
        let rope_kind = compute_kind(self.kind);
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

    pub(super) fn attention_forward(
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
        // `attend` takes the grouped heads as they are (repeating them where
        // its kernel needs it).
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
    pub(super) fn decode_attention(
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
                (compute_kind(self.kind), self.device),
            ));
        }
        let hidden = self.forward_hidden(&ids, Some(&batch.attention_mask), None)?;
        linear_head_nll(
            &hidden,
            batch,
            compute_kind(self.kind),
            &self.lm_head,
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
