//! The public KV-cache API from a model outside seal-model: a one-block,
//! one-head attention LM written here decodes through `generate` exactly as
//! its own full forward passes would, and a model that ignores the cache is
//! refused instead of decoding with a one-token context.

use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::{CausalLm, KvCache, LmBatch, ModelError};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 23;
const HIDDEN: i64 = 8;

/// Embedding, one causal attention head over the embeddings (no positions
/// but a learned per-position-free bias), and an output projection.
struct TinyAttentionLm {
    embed: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    out: Tensor,
    /// When false, `last_logits` never touches the cache (the bug the
    /// generation check exists for).
    uses_cache: bool,
}

impl TinyAttentionLm {
    fn new(seed: i64, uses_cache: bool) -> Self {
        tch::manual_seed(seed);
        let opts = (Kind::Double, Device::Cpu);
        Self {
            embed: Tensor::randn([VOCAB, HIDDEN], opts),
            wq: Tensor::randn([HIDDEN, HIDDEN], opts),
            wk: Tensor::randn([HIDDEN, HIDDEN], opts),
            wv: Tensor::randn([HIDDEN, HIDDEN], opts),
            out: Tensor::randn([HIDDEN, VOCAB], opts),
            uses_cache,
        }
    }

    /// Logits `[B, L, V]` of new tokens `ids` attending over `keys` and
    /// `values` `[B, T + L, H]`, whose mask is `full_mask` `[B, T + L]`.
    fn attend(&self, x: &Tensor, keys: &Tensor, values: &Tensor, full_mask: &Tensor) -> Tensor {
        let (l, lk) = (x.size()[1], keys.size()[1]);
        let past = lk - l;
        let q = x.matmul(&self.wq);
        let scores = q.matmul(&keys.transpose(1, 2)) / (HIDDEN as f64).sqrt();
        let k_idx = Tensor::arange(lk, (Kind::Int64, Device::Cpu));
        let q_idx = Tensor::arange(l, (Kind::Int64, Device::Cpu)) + past;
        let causal = k_idx.unsqueeze(0).le_tensor(&q_idx.unsqueeze(1));
        let allowed = causal
            .unsqueeze(0)
            .logical_and(&full_mask.gt(0).unsqueeze(1))
            .logical_or(
                &k_idx
                    .unsqueeze(0)
                    .eq_tensor(&q_idx.unsqueeze(1))
                    .unsqueeze(0),
            );
        let weights = scores
            .masked_fill(&allowed.logical_not(), f64::NEG_INFINITY)
            .softmax(-1, Kind::Double);
        (x + weights.matmul(values)).matmul(&self.out)
    }
}

impl CausalLm for TinyAttentionLm {
    fn vocab_size(&self) -> usize {
        VOCAB as usize
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn kind(&self) -> Kind {
        Kind::Double
    }
    fn num_layers(&self) -> usize {
        1
    }
    fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> seal_model::Result<Tensor> {
        let mask = attention_mask.map_or_else(|| input_ids.ones_like(), Tensor::shallow_clone);
        let x = Tensor::embedding(&self.embed, input_ids, -1, false, false);
        Ok(self.attend(&x, &x.matmul(&self.wk), &x.matmul(&self.wv), &mask))
    }
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> seal_model::Result<Tensor> {
        let new_mask = attention_mask.map_or_else(|| input_ids.ones_like(), Tensor::shallow_clone);
        let x = Tensor::embedding(&self.embed, input_ids, -1, false, false);
        let (k, v) = (x.matmul(&self.wk), x.matmul(&self.wv));
        let logits = match cache {
            Some(cache) if self.uses_cache => {
                let full_mask = cache.step_mask(&new_mask)?;
                // The cache stores [B, kv_heads, L, head_dim]: one head here.
                let (k, v) = cache.append(0, &k.unsqueeze(1), &v.unsqueeze(1))?;
                let logits = self.attend(&x, &k.squeeze_dim(1), &v.squeeze_dim(1), &full_mask);
                cache.commit(full_mask)?;
                logits
            }
            _ => self.attend(&x, &k, &v, &new_mask),
        };
        let l = logits.size()[1];
        Ok(logits
            .narrow(1, l - 1, 1)
            .squeeze_dim(1)
            .to_kind(Kind::Float))
    }
    fn per_sample_nll(&self, _batch: &LmBatch) -> seal_model::Result<Tensor> {
        Err(ModelError::Unsupported("not needed here".into()))
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn new_cache(&self) -> KvCache {
        KvCache::new(1)
    }
}

fn greedy(max_new_tokens: usize) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos_token_ids: vec![],
        pad_token_id: 0,
        seed: Some(1),
        prompt_limit: PromptLimit::Error(64),
    }
}

/// Greedy decoding by a full forward pass over the whole sequence per token.
fn greedy_without_cache(model: &TinyAttentionLm, prompt: &[u32], new: usize) -> Vec<u32> {
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut out = Vec::new();
    for _ in 0..new {
        let logits = model
            .logits(&Tensor::from_slice(&seq).view([1, -1]), None)
            .unwrap();
        let next = logits
            .get(0)
            .get(seq.len() as i64 - 1)
            .argmax(0, false)
            .int64_value(&[]);
        out.push(next as u32);
        seq.push(next);
    }
    out
}

#[test]
fn a_foreign_model_decodes_through_the_public_cache_as_its_full_forward() {
    let model = TinyAttentionLm::new(5, true);
    // Prompts of different lengths: generation left-pads the shorter ones.
    let prompts = vec![vec![3, 9, 14, 2, 7], vec![11, 4], vec![1, 20, 6]];
    let got = generate(&model, &prompts, &greedy(12)).unwrap();
    for (prompt, got) in prompts.iter().zip(&got) {
        assert_eq!(
            got,
            &greedy_without_cache(&model, prompt, 12),
            "prompt {prompt:?}"
        );
    }
}

#[test]
fn a_model_that_ignores_the_cache_is_refused_not_decoded_wrongly() {
    let model = TinyAttentionLm::new(5, false);
    let err = generate(&model, &[vec![3, 9, 14]], &greedy(4)).unwrap_err();
    assert!(err.to_string().contains("must extend the cache"), "{err}");
}

#[test]
fn cache_misuse_names_the_block_and_the_shapes() {
    let mut cache = KvCache::new(2);
    let kv = Tensor::zeros([1, 1, 3, 4], (Kind::Float, Device::Cpu));
    let err = cache.append(2, &kv, &kv).unwrap_err().to_string();
    assert!(err.contains("block 2 does not exist"), "{err}");
    let _ = cache.append(0, &kv, &kv).unwrap();
    assert_eq!(cache.layer_len(0), 3);
    let wider = Tensor::zeros([1, 2, 1, 4], (Kind::Float, Device::Cpu));
    let err = cache.append(0, &wider, &wider).unwrap_err().to_string();
    assert!(err.contains("do not match"), "{err}");
    // The mask must cover every filled block's positions.
    let err = cache
        .commit(Tensor::ones([1, 2], (Kind::Int64, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("block 0 holds 3 positions"), "{err}");
    cache
        .commit(Tensor::ones([1, 3], (Kind::Int64, Device::Cpu)))
        .unwrap();
    assert_eq!(cache.seq_len(), 3);
    let err = cache
        .step_mask(&Tensor::ones([2, 1], (Kind::Int64, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache holds batch 1, input has 2"), "{err}");
}
