//! The model interface the rest of seal-rs codes against.
//!
//! SEAL weights fine-tuning samples by their loss, so the central quantity is
//! [`CausalLm::per_sample_nll`]: for each sequence of a padded batch, the mean
//! negative log-likelihood of its response tokens (prompt and padding
//! excluded). The trait is object-safe: solvers can hold `&dyn CausalLm`.

use crate::error::{ModelError, Result};
use tch::{Device, Kind, Tensor};

/// A padded batch of token sequences with loss masks.
///
/// All three tensors are `[B, L]`. `loss_mask[b, t] = 1` marks token `t` of
/// row `b` as a label: it is predicted from position `t - 1` and its NLL is
/// counted. Position 0 can never be a label.
#[derive(Debug)]
pub struct LmBatch {
    /// Token ids, `Int64`.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding (any integer or bool dtype).
    pub attention_mask: Tensor,
    /// 1 where the token's NLL counts (the response), else 0.
    pub loss_mask: Tensor,
}

impl LmBatch {
    /// Builds a right-padded batch from token rows and the index where each
    /// row's response starts (tokens from there on carry the loss).
    pub fn from_rows(rows: &[Vec<u32>], response_starts: &[usize], pad_id: u32) -> Result<Self> {
        if rows.len() != response_starts.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} rows but {} response starts",
                rows.len(),
                response_starts.len()
            )));
        }
        if rows.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let l = rows.iter().map(Vec::len).max().unwrap_or(0);
        let b = rows.len();
        let mut ids = vec![pad_id as i64; b * l];
        let mut att = vec![0i64; b * l];
        let mut lm = vec![0i64; b * l];
        for (i, (row, &start)) in rows.iter().zip(response_starts).enumerate() {
            for (t, &tok) in row.iter().enumerate() {
                ids[i * l + t] = tok as i64;
                att[i * l + t] = 1;
                lm[i * l + t] = i64::from(t >= start.max(1));
            }
        }
        let shape = [b as i64, l as i64];
        Ok(Self {
            input_ids: Tensor::from_slice(&ids).view(shape),
            attention_mask: Tensor::from_slice(&att).view(shape),
            loss_mask: Tensor::from_slice(&lm).view(shape),
        })
    }

    /// Batch size.
    pub fn batch_size(&self) -> i64 {
        self.input_ids.size().first().copied().unwrap_or(0)
    }

    /// Number of real (non-padding) tokens.
    pub fn num_tokens(&self) -> i64 {
        self.attention_mask
            .to_kind(Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[])
    }

    /// Checks shapes and that labels only sit on real tokens.
    pub fn validate(&self) -> Result<()> {
        let s = self.input_ids.size();
        if s.len() != 2 {
            return Err(ModelError::InvalidInput(format!(
                "input_ids must be [B, L], got {s:?}"
            )));
        }
        for (name, t) in [
            ("attention_mask", &self.attention_mask),
            ("loss_mask", &self.loss_mask),
        ] {
            if t.size() != s {
                return Err(ModelError::InvalidInput(format!(
                    "{name} has shape {:?}, input_ids {s:?}",
                    t.size()
                )));
            }
        }
        let stray = self
            .loss_mask
            .to_kind(Kind::Bool)
            .logical_and(&self.attention_mask.to_kind(Kind::Bool).logical_not())
            .any()
            .int64_value(&[]);
        if stray != 0 {
            return Err(ModelError::InvalidInput(
                "loss_mask covers padding positions".into(),
            ));
        }
        Ok(())
    }

    /// Moves the batch to a device.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            loss_mask: self.loss_mask.to_device(device),
        }
    }
}

/// Per-layer key/value cache for incremental decoding, usable by any
/// [`CausalLm`].
///
/// One decoding step of a model with a cache goes through three calls:
///
/// 1. [`KvCache::step_mask`] turns the new tokens' attention mask `[B, L]`
///    into the mask of every cached position plus the new ones,
///    `[B, T + L]` (positions and padding of the whole sequence follow from
///    it); [`KvCache::seq_len`] is `T`, the offset of the new positions;
/// 2. each block calls [`KvCache::append`] with its new keys and values
///    `[B, kv_heads, L, head_dim]` and attends over the views it returns;
/// 3. [`KvCache::commit`] records the step's full mask.
///
/// Rows can be dropped between steps with [`KvCache::select_rows`].
/// [`crate::generate::generate`] refuses a model whose `last_logits` leaves
/// the cache unchanged, rather than decoding with a one-token context.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Keys and values per layer.
    layers: Vec<Option<LayerKv>>,
    /// Attention mask of every cached position, `[B, T]`.
    mask: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            mask: None,
        }
    }

    /// Number of blocks the cache holds keys and values for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Number of cached positions.
    pub fn seq_len(&self) -> i64 {
        self.mask.as_ref().map(|m| m.size()[1]).unwrap_or(0)
    }

    /// Batch size of the cached sequences (0 when empty).
    pub fn batch_size(&self) -> i64 {
        self.mask.as_ref().map(|m| m.size()[0]).unwrap_or(0)
    }

    /// Attention mask `[B, T]` of every cached position (1 = token, 0 =
    /// padding); `None` while the cache is empty.
    pub fn mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    /// Positions of block `layer` filled so far (0 for an unknown block).
    pub fn layer_len(&self, layer: usize) -> i64 {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .map_or(0, |c| c.len)
    }

    /// The attention mask of the cached positions followed by the new
    /// tokens' `new_mask` `[B, L]`: `[B, T + L]`, on `new_mask`'s device.
    /// An error if the batch differs from the cached one.
    pub fn step_mask(&self, new_mask: &Tensor) -> Result<Tensor> {
        let size = new_mask.size();
        if size.len() != 2 {
            return Err(ModelError::InvalidInput(format!(
                "KvCache::step_mask: the new mask must be [B, L], got {size:?}"
            )));
        }
        let new_mask = new_mask.to_kind(Kind::Int64);
        match &self.mask {
            None => Ok(new_mask),
            Some(past) => {
                if past.size()[0] != size[0] {
                    return Err(ModelError::InvalidInput(format!(
                        "cache holds batch {}, input has {}",
                        past.size()[0],
                        size[0]
                    )));
                }
                Ok(Tensor::cat(
                    &[past.to_device(new_mask.device()), new_mask],
                    1,
                ))
            }
        }
    }

    /// Appends block `layer`'s new keys and values `[B, kv_heads, L,
    /// head_dim]` and returns views of all its cached keys and values, the
    /// new positions included. Buffers grow geometrically, so a decoding
    /// step copies one position rather than the whole cache.
    pub fn append(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let num_layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "KvCache::append: block {layer} does not exist (the cache has {num_layers})"
            ))
        })?;
        let (ks, vs) = (keys.size(), values.size());
        if ks.len() != 4 || ks != vs {
            return Err(ModelError::InvalidInput(format!(
                "KvCache::append (block {layer}): keys {ks:?} and values {vs:?} must both be [B, kv_heads, L, head_dim]"
            )));
        }
        if let Some(c) = slot.as_ref() {
            let cs = c.keys.size();
            if cs[0] != ks[0] || cs[1] != ks[1] || cs[3] != ks[3] || c.keys.kind() != keys.kind() {
                return Err(ModelError::InvalidInput(format!(
                    "KvCache::append (block {layer}): new keys {ks:?} {:?} do not match the cached [{}, {}, _, {}] {:?}",
                    keys.kind(),
                    cs[0],
                    cs[1],
                    cs[3],
                    c.keys.kind()
                )));
            }
        }
        Ok(LayerKv::append(slot, keys, values))
    }

    /// Ends a step: records `full_mask` (the [`KvCache::step_mask`] of the
    /// step) as the mask of every cached position. An error if a block
    /// holds another number of positions than the mask covers.
    pub fn commit(&mut self, full_mask: Tensor) -> Result<()> {
        let size = full_mask.size();
        if size.len() != 2 {
            return Err(ModelError::InvalidInput(format!(
                "KvCache::commit: the mask must be [B, T], got {size:?}"
            )));
        }
        if let Some((i, c)) = self
            .layers
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.as_ref().filter(|c| c.len != size[1]).map(|c| (i, c)))
        {
            return Err(ModelError::InvalidInput(format!(
                "KvCache::commit: block {i} holds {} positions, the mask covers {}",
                c.len, size[1]
            )));
        }
        self.mask = Some(full_mask);
        Ok(())
    }

    /// Keeps only the given batch rows (e.g. drop finished sequences).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for layer in self.layers.iter_mut().flatten() {
            layer.keys = layer.keys.index_select(0, rows);
            layer.values = layer.values.index_select(0, rows);
        }
        if let Some(m) = &mut self.mask {
            *m = m.index_select(0, rows);
        }
    }

    /// Stacks the rows of `a` and then those of `b` into one cache, so that
    /// sequences prefilled apart decode together from then on (continuous
    /// batching). The shorter cache is left-padded along time with zero keys
    /// and values under mask 0; positions follow the mask (a cumulative sum,
    /// see [`crate::layers::step_masks`]), so every row decodes exactly as
    /// it would have without the other cache's rows. An empty cache (nothing
    /// committed) leaves the other one as it is.
    ///
    /// An error if the caches have different numbers of blocks, if a block
    /// is filled in one cache only or with other head counts, head sizes,
    /// dtypes or devices, or if a block holds another number of positions
    /// than its cache's mask (a step appended but not committed).
    pub fn concat_rows(a: KvCache, b: KvCache) -> Result<KvCache> {
        if a.layers.len() != b.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "KvCache::concat_rows: the caches have {} and {} blocks",
                a.layers.len(),
                b.layers.len()
            )));
        }
        a.check_committed("concat_rows")?;
        b.check_committed("concat_rows")?;
        let (Some(mask_a), Some(mask_b)) = (&a.mask, &b.mask) else {
            return Ok(if a.mask.is_none() { b } else { a });
        };
        let (ta, tb) = (a.seq_len(), b.seq_len());
        let (ba, bb) = (a.batch_size(), b.batch_size());
        let t = ta.max(tb);
        let mut layers = Vec::with_capacity(a.layers.len());
        for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
            let (la, lb) = match (la, lb) {
                (None, None) => {
                    layers.push(None);
                    continue;
                }
                (Some(la), Some(lb)) => (la, lb),
                _ => {
                    return Err(ModelError::InvalidInput(format!(
                        "KvCache::concat_rows: block {i} is filled in one cache only"
                    )))
                }
            };
            let (sa, sb) = (la.keys.size(), lb.keys.size());
            if sa[1] != sb[1]
                || sa[3] != sb[3]
                || la.keys.kind() != lb.keys.kind()
                || la.keys.device() != lb.keys.device()
            {
                return Err(ModelError::InvalidInput(format!(
                    "KvCache::concat_rows (block {i}): keys [_, {}, _, {}] {:?} on {:?} and [_, {}, _, {}] {:?} on {:?} do not match",
                    sa[1],
                    sa[3],
                    la.keys.kind(),
                    la.keys.device(),
                    sb[1],
                    sb[3],
                    lb.keys.kind(),
                    lb.keys.device()
                )));
            }
            // Zeros, not `empty`: a masked key gets attention weight 0, and
            // 0 × NaN of uninitialised memory would still be NaN.
            let shape = [ba + bb, sa[1], t + 64, sa[3]];
            let options = (la.keys.kind(), la.keys.device());
            let keys = Tensor::zeros(shape, options);
            let values = Tensor::zeros(shape, options);
            for (rows, len, src) in [(0..ba, ta, la), (ba..ba + bb, tb, lb)] {
                let n = rows.end - rows.start;
                keys.narrow(0, rows.start, n)
                    .narrow(2, t - len, len)
                    .copy_(&src.keys.narrow(2, 0, len));
                values
                    .narrow(0, rows.start, n)
                    .narrow(2, t - len, len)
                    .copy_(&src.values.narrow(2, 0, len));
            }
            layers.push(Some(LayerKv {
                keys,
                values,
                len: t,
            }));
        }
        let device = mask_a.device();
        let padded = |mask: &Tensor, rows: i64, len: i64| {
            Tensor::cat(
                &[
                    Tensor::zeros([rows, t - len], (Kind::Int64, device)),
                    mask.to_device(device).to_kind(Kind::Int64),
                ],
                1,
            )
        };
        let mask = Tensor::cat(&[padded(mask_a, ba, ta), padded(mask_b, bb, tb)], 0);
        Ok(KvCache {
            layers,
            mask: Some(mask),
        })
    }

    /// Drops the leading time columns that are padding (mask 0) in every
    /// row, e.g. once the longest rows of a merged batch have finished and
    /// [`KvCache::select_rows`] removed them; returns how many were
    /// dropped. Positions follow the mask, so the remaining rows decode
    /// exactly as before. The buffers are narrowed in place (no copy); the
    /// memory returns at the next growth or row selection.
    pub fn trim_left(&mut self) -> Result<i64> {
        self.check_committed("trim_left")?;
        let Some(mask) = &self.mask else {
            return Ok(0);
        };
        let t = mask.size()[1];
        if t == 0 || mask.size()[0] == 0 {
            return Ok(0);
        }
        let used = Vec::<i64>::try_from(
            mask.ne(0)
                .sum_dim_intlist(0, false, Kind::Int64)
                .to_device(Device::Cpu),
        )?;
        let lead = used.iter().position(|&n| n > 0).unwrap_or(used.len()) as i64;
        if lead == 0 {
            return Ok(0);
        }
        for layer in self.layers.iter_mut().flatten() {
            let capacity = layer.keys.size()[2];
            layer.keys = layer.keys.narrow(2, lead, capacity - lead);
            layer.values = layer.values.narrow(2, lead, capacity - lead);
            layer.len -= lead;
        }
        self.mask = Some(mask.narrow(1, lead, t - lead));
        Ok(lead)
    }

    /// An error naming `what` if a block holds another number of positions
    /// than the mask covers (keys appended, step not committed).
    fn check_committed(&self, what: &str) -> Result<()> {
        let t = self.seq_len();
        match self
            .layers
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.as_ref().filter(|c| c.len != t).map(|c| (i, c.len)))
        {
            Some((i, len)) => Err(ModelError::InvalidInput(format!(
                "KvCache::{what}: block {i} holds {len} positions, the mask covers {t} (a step \
                 was not committed)"
            ))),
            None => Ok(()),
        }
    }
}

/// One layer's cached keys and values: buffers `[B, n_kv_heads, capacity,
/// head_dim]` whose first `len` positions are filled. New positions are
/// written in place; the buffers grow geometrically, so a decode step copies
/// one position instead of the whole cache (as `cat` would).
#[derive(Debug)]
struct LayerKv {
    keys: Tensor,
    values: Tensor,
    len: i64,
}

impl LayerKv {
    /// Appends `[B, n_kv_heads, L, head_dim]` keys and values to `slot` and
    /// returns views of everything cached so far, new positions included.
    fn append(slot: &mut Option<LayerKv>, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let l = k.size()[2];
        let needed = slot.as_ref().map_or(0, |c| c.len) + l;
        if slot.as_ref().is_none_or(|c| needed > c.keys.size()[2]) {
            *slot = Some(Self::grown(slot.take(), k, v, needed));
        }
        let c = slot.get_or_insert_with(|| Self::grown(None, k, v, needed));
        c.keys.narrow(2, c.len, l).copy_(k);
        c.values.narrow(2, c.len, l).copy_(v);
        c.len += l;
        (c.keys.narrow(2, 0, c.len), c.values.narrow(2, 0, c.len))
    }

    /// New buffers shaped like `k` and `v` with room for `needed` positions
    /// (64 more than the old capacity at least, doubling beyond that),
    /// holding the old cache's filled positions.
    fn grown(old: Option<LayerKv>, k: &Tensor, v: &Tensor, needed: i64) -> LayerKv {
        let capacity = old.as_ref().map_or(0, |c| c.keys.size()[2]);
        let mut shape = k.size();
        shape[2] = needed.max(2 * capacity).max(capacity + 64);
        let keys = Tensor::empty(shape.as_slice(), (k.kind(), k.device()));
        let values = Tensor::empty(shape.as_slice(), (v.kind(), v.device()));
        let len = old.map_or(0, |old| {
            keys.narrow(2, 0, old.len)
                .copy_(&old.keys.narrow(2, 0, old.len));
            values
                .narrow(2, 0, old.len)
                .copy_(&old.values.narrow(2, 0, old.len));
            old.len
        });
        LayerKv { keys, values, len }
    }
}

/// Per-sample mean response-token NLL `[B]` from final hidden states
/// `[B, L, H]` of `batch` (rows without labels get 0): the shared tail of
/// every family's [`CausalLm::per_sample_nll`]. Only positions that carry a
/// label go through `head` (the LM head), which saves most of its cost on
/// prompt-heavy rows. `loss_kind` is the dtype the loss is computed in.
pub fn response_nll(
    hidden: &Tensor,
    batch: &LmBatch,
    loss_kind: Kind,
    head: &dyn Fn(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let Some(tokens) = ResponseTokens::of(hidden, batch, loss_kind) else {
        return Ok(Tensor::zeros(
            [hidden.size()[0]],
            (loss_kind, hidden.device()),
        ));
    };
    let logits = head(&tokens.hidden).to_kind(loss_kind);
    let token_nll = logits.f_cross_entropy_loss::<Tensor>(
        &tokens.labels,
        None,
        tch::Reduction::None,
        -100,
        0.0,
    )?;
    Ok(tokens.per_sample_mean(&token_nll))
}

/// The positions of a batch whose next token carries a loss, shared by
/// [`response_nll`] and [`chunked_response_nll`].
struct ResponseTokens {
    /// Their final hidden states `[N, H]`.
    hidden: Tensor,
    /// Their labels (the next token) `[N]`.
    labels: Tensor,
    /// The batch row of each `[N]`.
    rows: Tensor,
    /// Labelled tokens per row `[B]`, in the loss dtype.
    counts: Tensor,
}

impl ResponseTokens {
    /// `None` for rows shorter than two tokens (nothing to predict).
    fn of(hidden: &Tensor, batch: &LmBatch, loss_kind: Kind) -> Option<Self> {
        let size = hidden.size();
        let (l, width) = (size[1], size[2]);
        if l < 2 {
            return None;
        }
        let device = hidden.device();
        let targets = batch
            .input_ids
            .to_device(device)
            .narrow(1, 1, l - 1)
            .reshape([-1]);
        let mask = batch
            .loss_mask
            .to_device(device)
            .narrow(1, 1, l - 1)
            .to_kind(Kind::Bool);
        let flat = mask.reshape([-1]).nonzero().squeeze_dim(1);
        Some(Self {
            hidden: hidden
                .narrow(1, 0, l - 1)
                .reshape([-1, width])
                .index_select(0, &flat),
            labels: targets.index_select(0, &flat),
            rows: flat.divide_scalar_mode(l - 1, "floor"),
            counts: mask.sum_dim_intlist(1, false, loss_kind),
        })
    }

    /// Per-row mean `[B]` of per-token values `[N]` (0 for rows without labels).
    fn per_sample_mean(&self, token_values: &Tensor) -> Tensor {
        let rows = self.counts.size()[0];
        let sums = Tensor::zeros([rows], (token_values.kind(), token_values.device())).index_add(
            0,
            &self.rows,
            token_values,
        );
        sums / self.counts.clamp_min(1.0)
    }
}

/// Elements of one chunk of [`chunked_response_nll`]'s logits: about 16 MB
/// in f32 on the CPU, where a chunk that stays in cache is what makes the
/// fused loss faster; CUDA takes larger chunks (fewer kernel launches).
fn loss_chunk_rows(vocab: i64, device: Device) -> i64 {
    let elements: i64 = if device.is_cuda() { 1 << 26 } else { 1 << 22 };
    (elements / vocab.max(1)).clamp(16, 4096)
}

/// [`response_nll`] for a frozen linear LM head (`weight` `[V, H]`, no
/// bias), computed in chunks of response tokens so that no
/// `[tokens, V]` buffer outlives its chunk: the loss of every fine-tuning
/// and ranking step without the full-vocabulary logits, their f32 copy,
/// `log_softmax` and its backward (docs/performance.md, "The fused loss").
///
/// Each chunk computes its tokens' NLL and, when `hidden` requires grad,
/// their gradient with respect to the hidden state,
/// `g_t = (softmax(z_t) - onehot(y_t)) W`, under `no_grad`. The returned
/// per-sample NLLs carry `nll_t + <h_t, g_t> - <h_t, g_t>.detach()`: the same
/// values, and for any weighting of the samples (the ranker's, a mean) the
/// same first-order gradient with respect to everything below the head.
/// It is **not twice differentiable** (the softmax curvature is absent),
/// and it does not train `weight`: callers fall back to [`response_nll`]
/// for double backward (Hessian-vector products, [`crate::AttentionImpl::Math`])
/// or when `weight` requires grad (full fine-tuning, tied embeddings).
/// Values agree with [`response_nll`] up to float rounding (tested).
pub fn chunked_response_nll(
    hidden: &Tensor,
    batch: &LmBatch,
    loss_kind: Kind,
    weight: &Tensor,
) -> Result<Tensor> {
    let (width, device) = (hidden.size()[2], hidden.device());
    let Some(tokens) = ResponseTokens::of(hidden, batch, loss_kind) else {
        return Ok(Tensor::zeros([hidden.size()[0]], (loss_kind, device)));
    };
    let wsize = weight.size();
    if wsize.len() != 2 || wsize[1] != width {
        return Err(ModelError::InvalidInput(format!(
            "chunked_response_nll: LM head weight {wsize:?} does not map hidden width {width}"
        )));
    }
    let vocab = wsize[0];
    let (h, labels) = (&tokens.hidden, &tokens.labels);
    let n = h.size()[0];
    if n > 0
        && labels
            .ge(vocab)
            .logical_or(&labels.lt(0))
            .any()
            .int64_value(&[])
            != 0
    {
        return Err(ModelError::InvalidInput(format!(
            "chunked_response_nll: a label is outside the vocabulary of {vocab} tokens"
        )));
    }
    let with_grad = h.requires_grad();
    let (token_nll, grad) = {
        let _no_grad = tch::no_grad_guard();
        let hd = h.detach();
        let wd = weight.detach();
        let nll = Tensor::empty([n], (loss_kind, device));
        let grad = with_grad.then(|| Tensor::empty([n, width], (h.kind(), device)));
        let rows = loss_chunk_rows(vocab, device);
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let y = labels.narrow(0, start, len).unsqueeze(1);
            let mut z = hd
                .narrow(0, start, len)
                .linear::<&Tensor>(&wd, None)
                .to_kind(loss_kind);
            let max = z.amax([1].as_slice(), true);
            let picked = z.gather(1, &y, false);
            let _ = z.g_sub_(&max).exp_();
            let sum = z.sum_dim_intlist(1, true, loss_kind);
            // -log_softmax(z)[y] = log Σ exp(z - max) - (z_y - max)
            let token = (sum.log() - (picked - &max)).squeeze_dim(1);
            nll.narrow(0, start, len).copy_(&token);
            if let Some(grad) = &grad {
                let _ = z.g_div_(&sum);
                let _ = z.scatter_add_(1, &y, &Tensor::full([len, 1], -1.0, (loss_kind, device)));
                grad.narrow(0, start, len)
                    .copy_(&z.to_kind(wd.kind()).matmul(&wd));
            }
            start += len;
        }
        (nll, grad)
    };
    let token_nll = match grad {
        Some(grad) => {
            let dot = (h.to_kind(loss_kind) * grad.to_kind(loss_kind))
                .sum_dim_intlist(1, false, loss_kind);
            token_nll + (&dot - dot.detach())
        }
        None => token_nll,
    };
    Ok(tokens.per_sample_mean(&token_nll))
}

/// The per-sample NLL of a linear LM head without bias (`weight` `[V, H]`):
/// [`chunked_response_nll`] under single-backward attention
/// ([`crate::AttentionImpl::Sdpa`]) with a frozen head, else the
/// twice-differentiable [`response_nll`]. Every built-in family's
/// [`CausalLm::per_sample_nll`] ends here; a user's model can do the same.
pub fn linear_head_nll(
    hidden: &Tensor,
    batch: &LmBatch,
    loss_kind: Kind,
    weight: &Tensor,
    attention: crate::AttentionImpl,
) -> Result<Tensor> {
    if attention == crate::AttentionImpl::Sdpa && !weight.requires_grad() {
        chunked_response_nll(hidden, batch, loss_kind, weight)
    } else {
        response_nll(hidden, batch, loss_kind, &|h| {
            h.linear::<&Tensor>(weight, None)
        })
    }
}

/// A causal language model as SEAL needs it.
pub trait CausalLm {
    /// Vocabulary size (width of the logits).
    fn vocab_size(&self) -> usize;
    /// Device of the weights.
    fn device(&self) -> Device;
    /// Dtype of the weights.
    fn kind(&self) -> Kind;
    /// Number of decoder blocks (size of a [`KvCache`]).
    fn num_layers(&self) -> usize;
    /// Full logits `[B, L, V]` of a padded batch (left or right padding).
    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor>;
    /// Logits `[B, V]` (f32) at the last position of the new tokens, extending
    /// `cache` when given: the step function of generation.
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;
    /// Per-sample mean response-token NLL, `[B]`; rows without any label get 0.
    fn per_sample_nll(&self, batch: &LmBatch) -> Result<Tensor>;
    /// Parameters an optimiser should update (LoRA factors, or every weight
    /// under full fine-tuning), by name.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;
    /// A fresh, empty KV cache.
    fn new_cache(&self) -> KvCache;
    /// Residual-stream hidden states `[B, L, H]` after each of `layers`
    /// (1-based blocks, 0 = embeddings), for feature-based judges and
    /// probes. Models that cannot expose them keep this default, an
    /// [`crate::ModelError::Unsupported`] error.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        let _ = (input_ids, attention_mask, layers);
        Err(crate::ModelError::Unsupported(
            "this model does not expose hidden states".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::Llama;

    fn model() -> Llama {
        Llama::random(&LlamaConfig::tiny(40), Device::Cpu, Kind::Float, 5).unwrap()
    }

    /// Prefills left-padded `prompts` into a fresh cache: last logits, cache.
    fn prefill(model: &Llama, prompts: &[Vec<i64>]) -> (Tensor, KvCache) {
        let l = prompts.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for p in prompts {
            ids.extend(std::iter::repeat_n(0, l - p.len()).chain(p.iter().copied()));
            mask.extend((0..l).map(|t| i64::from(t >= l - p.len())));
        }
        let shape = [prompts.len() as i64, l as i64];
        let mut cache = model.new_cache();
        let logits = model
            .last_logits(
                &Tensor::from_slice(&ids).view(shape),
                Some(&Tensor::from_slice(&mask).view(shape)),
                Some(&mut cache),
            )
            .unwrap();
        (logits, cache)
    }

    fn argmax(logits: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap()
    }

    fn step(model: &Llama, tokens: &[i64], cache: &mut KvCache) -> Tensor {
        let ids = Tensor::from_slice(tokens).view([tokens.len() as i64, 1]);
        model.last_logits(&ids, None, Some(cache)).unwrap()
    }

    /// Greedy tokens and their logits for `prompt` decoded alone.
    fn alone(model: &Llama, prompt: &[i64], steps: usize) -> (Vec<i64>, Vec<Tensor>) {
        let (mut logits, mut cache) = prefill(model, &[prompt.to_vec()]);
        let (mut tokens, mut all) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            let t = argmax(&logits)[0];
            tokens.push(t);
            all.push(logits.get(0));
            logits = step(model, &[t], &mut cache);
        }
        (tokens, all)
    }

    /// Decodes `target` merged with a running batch of two other rows
    /// (which decoded `head_start` tokens first), drops the others after
    /// `others_last_step` more steps and trims the cache; `target_first`
    /// puts the target's cache first in the merge.
    fn merged(
        model: &Llama,
        target: &[i64],
        others: &[Vec<i64>],
        head_start: usize,
        others_last_step: usize,
        target_first: bool,
        steps: usize,
    ) -> (Vec<i64>, Vec<Tensor>) {
        let (mut logits_o, mut cache_o) = prefill(model, others);
        for _ in 0..head_start {
            let next = argmax(&logits_o);
            logits_o = step(model, &next, &mut cache_o);
        }
        let (logits_t, cache_t) = prefill(model, &[target.to_vec()]);
        let (mut cache, mut logits, mut row) = if target_first {
            let cache = KvCache::concat_rows(cache_t, cache_o).unwrap();
            (cache, Tensor::cat(&[logits_t, logits_o], 0), 0)
        } else {
            let cache = KvCache::concat_rows(cache_o, cache_t).unwrap();
            (cache, Tensor::cat(&[logits_o, logits_t], 0), others.len())
        };
        assert_eq!(cache.batch_size(), others.len() as i64 + 1);
        // Positions follow the mask: the target's next position is its length.
        let masks =
            crate::layers::step_masks(None, cache.batch_size(), 1, Some(&cache), Device::Cpu)
                .unwrap();
        assert_eq!(
            masks.positions.get(row as i64).int64_value(&[0]),
            target.len() as i64
        );
        let (mut tokens, mut all) = (Vec::new(), Vec::new());
        for s in 0..steps {
            let mut next = argmax(&logits);
            tokens.push(next[row]);
            all.push(logits.get(row as i64));
            if s == others_last_step {
                cache.select_rows(&Tensor::from_slice(&[row as i64]));
                let before = cache.seq_len();
                let dropped = cache.trim_left().unwrap();
                assert_eq!(cache.seq_len(), before - dropped);
                next = vec![next[row]];
                row = 0;
            }
            logits = step(model, &next, &mut cache);
        }
        (tokens, all)
    }

    #[test]
    fn a_row_decodes_the_same_alone_or_merged_into_a_batch() {
        let m = model();
        let target = vec![3, 7, 11, 2, 9];
        let (expected, expected_logits) = alone(&m, &target, 10);
        let check = |(tokens, logits): (Vec<i64>, Vec<Tensor>)| {
            assert_eq!(tokens, expected);
            for (a, b) in logits.iter().zip(&expected_logits) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "logits differ by {diff}");
            }
        };
        // Others longer than the target (the target's cache is padded) ...
        let long = vec![(1..=12).collect::<Vec<i64>>(), vec![4, 5]];
        check(merged(&m, &target, &long, 3, 2, false, 10));
        check(merged(&m, &target, &long, 3, 4, true, 10));
        // ... and shorter (the running batch's cache is padded).
        let short = vec![vec![8], vec![6, 1]];
        check(merged(&m, &target, &short, 0, 1, false, 10));
        check(merged(&m, &target, &short, 1, 5, true, 10));
    }

    #[test]
    fn concat_rows_and_trim_left_edge_cases() {
        let m = model();
        let (_, cache) = prefill(&m, &[vec![1, 2, 3]]);
        // An empty cache is the identity on either side.
        let cache = KvCache::concat_rows(m.new_cache(), cache).unwrap();
        let mut cache = KvCache::concat_rows(cache, m.new_cache()).unwrap();
        assert_eq!((cache.batch_size(), cache.seq_len()), (1, 3));
        assert_eq!(cache.trim_left().unwrap(), 0);
        // A different number of blocks is an error, as is a step not committed.
        assert!(KvCache::concat_rows(KvCache::new(1), m.new_cache()).is_err());
        let mut open = m.new_cache();
        let kv = Tensor::zeros([1, 2, 1, 8], (Kind::Float, Device::Cpu));
        let _ = open.append(0, &kv, &kv).unwrap();
        assert!(KvCache::concat_rows(open, m.new_cache()).is_err());
        // Rows merged from a long and a short prompt: once the long one is
        // gone, the short one's padding columns are trimmed.
        let (_, long) = prefill(&m, &[vec![1, 2, 3, 4, 5, 6]]);
        let (_, short) = prefill(&m, &[vec![7, 8]]);
        let mut both = KvCache::concat_rows(long, short).unwrap();
        assert_eq!((both.batch_size(), both.seq_len()), (2, 6));
        assert_eq!(
            Vec::<i64>::try_from(both.mask().unwrap().get(1)).unwrap(),
            [0, 0, 0, 0, 1, 1]
        );
        both.select_rows(&Tensor::from_slice(&[1i64]));
        assert_eq!(both.trim_left().unwrap(), 4);
        assert_eq!(both.seq_len(), 2);
        assert_eq!(both.layer_len(0), 2);
    }
}
