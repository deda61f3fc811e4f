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
    let size = hidden.size();
    let (b, l, width) = (size[0], size[1], size[2]);
    let device = hidden.device();
    if l < 2 {
        return Ok(Tensor::zeros([b], (loss_kind, device)));
    }
    let h = hidden.narrow(1, 0, l - 1).reshape([-1, width]);
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
    let counts = mask.sum_dim_intlist(1, false, loss_kind);
    let logits = head(&h.index_select(0, &flat)).to_kind(loss_kind);
    let token_nll = logits.f_cross_entropy_loss::<Tensor>(
        &targets.index_select(0, &flat),
        None,
        tch::Reduction::None,
        -100,
        0.0,
    )?;
    let rows = flat.divide_scalar_mode(l - 1, "floor");
    let sums = Tensor::zeros([b], (loss_kind, device)).index_add(0, &rows, &token_nll);
    Ok(sums / counts.clamp_min(1.0))
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
