//! The language-model lower level: SEAL's setting.
//!
//! Per-sample losses are the mean response-token NLL
//! ([`seal_model::CausalLm::per_sample_nll`]), exactly the official trainer's
//! `batch_GPTLMLoss(..., sequence_reduce="mean")` (Shen et al., ICLR 2025;
//! <https://github.com/hanshen95/SEAL>, `seal/models/loss.py`). The model
//! can carry a LoRA adapter (SEAL's default, q_proj and v_proj) or train
//! every weight; the auxiliary copy of the full penalty method is a second
//! LoRA over the same frozen base ([`seal_model::Llama::fork_with_lora`]).
//!
//! Batches are length-aware without changing which samples share a step:
//! [`grouped_nll`] splits a step's rows into groups of similar length
//! ([`length_groups`]), each padded only to its own longest row.

use crate::error::{BilevelError, Result};
use crate::problem::LowerLevel;
use seal_data::batch::length_groups;
use seal_data::tokenize::TokenizedSample;
use seal_model::{CausalLm, DynLm, Llama, LmBatch, LoraConfig, LoraLm};
use std::sync::Arc;
use tch::{Device, Tensor};

/// A causal LM that can make the auxiliary lower-level copy.
pub trait ForkableLm: CausalLm + Sized {
    /// A second trainable copy over the same frozen weights.
    fn fork_lm(&self, seed: i64) -> Result<Self>;
}

/// The adapter the auxiliary copy gets: the model's own, which needs a LoRA
/// over a frozen base.
fn fork_config<M: LoraLm + ?Sized>(model: &M) -> Result<LoraConfig> {
    let config = model.lora_config().cloned().ok_or_else(|| {
        BilevelError::invalid(
            "solver",
            "the full penalty method needs a LoRA adapter (the auxiliary copy is a second LoRA over the frozen base)",
        )
    })?;
    if model.trainable_parameters().len() != model.lora_parameters().len() {
        return Err(BilevelError::invalid(
            "solver",
            "the full penalty method cannot fork a fully fine-tuned model (the base must stay frozen)",
        ));
    }
    Ok(config)
}

impl ForkableLm for Llama {
    fn fork_lm(&self, seed: i64) -> Result<Self> {
        Ok(self.fork_with_lora(&fork_config(self)?, seed)?)
    }
}

/// A model of any registered family (see `seal_model::family`).
impl ForkableLm for DynLm {
    fn fork_lm(&self, seed: i64) -> Result<Self> {
        Ok(self.fork_lora(&fork_config(self.as_ref())?, seed)?)
    }
}

pub use seal_data::ranking::dataset_fingerprint;

/// The batch of `rows` of `data`, padded with `pad_id`, with the response-only
/// loss mask.
pub fn lm_batch(data: &[TokenizedSample], rows: &[usize], pad_id: u32) -> Result<LmBatch> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut starts = Vec::with_capacity(rows.len());
    for &r in rows {
        let s = data.get(r).ok_or_else(|| {
            BilevelError::invalid("batch", format!("row {r} of {} samples", data.len()))
        })?;
        seqs.push(s.input_ids.clone());
        starts.push(s.response_start);
    }
    Ok(LmBatch::from_rows(&seqs, &starts, pad_id)?)
}

/// The fixed cost of one more forward pass, in token equivalents, with
/// which [`grouped_nll`] splits a batch by length on `device`: on the CPU a
/// forward costs about the same per token whatever its shape, so splitting
/// pays as soon as it saves a few dozen padded positions; on an accelerator
/// the 135M models are launch-bound at these sizes, so a batch stays whole
/// (`None`) until that trade-off is measured there.
pub fn default_group_overhead(device: Device) -> Option<usize> {
    match device {
        Device::Cpu => Some(32),
        _ => None,
    }
}

/// Per-sample mean response NLLs `[rows.len()]` of `rows` of `data` under
/// `model`, in the order of `rows`, differentiable.
///
/// With `overhead = Some(c)` the rows are split by length
/// ([`length_groups`] with `c` tokens per extra forward) and each group is
/// padded only to its own longest row; `None` runs one forward padded to the
/// longest row. The values are those of each sample alone up to float
/// rounding (the kernels' reduction order depends on the shapes they see;
/// tested against unpadded single-sample forwards), and so is the gradient,
/// since the groups' losses are joined into one tensor.
pub fn grouped_nll<M: CausalLm + ?Sized>(
    model: &M,
    data: &[TokenizedSample],
    rows: &[usize],
    pad_id: u32,
    overhead: Option<usize>,
) -> Result<Tensor> {
    let forward = |rows: &[usize]| -> Result<Tensor> {
        let batch = lm_batch(data, rows, pad_id)?.to_device(model.device());
        Ok(model.per_sample_nll(&batch)?)
    };
    let Some(overhead) = overhead else {
        return forward(rows);
    };
    let lengths = rows
        .iter()
        .map(|&r| data.get(r).map(TokenizedSample::len))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            BilevelError::invalid("batch", format!("a row past the {} samples", data.len()))
        })?;
    let groups = length_groups(&lengths, overhead);
    if groups.len() <= 1 {
        return forward(rows);
    }
    let mut parts = Vec::with_capacity(groups.len());
    // place[i]: where row i's loss lands in the joined groups.
    let mut place = vec![0i64; rows.len()];
    let mut next = 0i64;
    for group in &groups {
        let sub: Vec<usize> = group.iter().map(|&i| rows[i]).collect();
        parts.push(forward(&sub)?);
        for &i in group {
            place[i] = next;
            next += 1;
        }
    }
    let joined = Tensor::cat(&parts, 0);
    let place = Tensor::from_slice(&place).to_device(joined.device());
    Ok(joined.index_select(0, &place))
}

/// A causal LM with tokenised fine-tuning and safe sets.
pub struct LmProblem<M: ForkableLm> {
    /// The model.
    pub model: M,
    finetune: Arc<Vec<TokenizedSample>>,
    safe: Arc<Vec<TokenizedSample>>,
    pad_id: u32,
    group_overhead: Option<usize>,
}

impl<M: ForkableLm> LmProblem<M> {
    /// Wraps a model and the two tokenised sets; `pad_id` fills padding.
    pub fn new(
        model: M,
        finetune: Vec<TokenizedSample>,
        safe: Vec<TokenizedSample>,
        pad_id: u32,
    ) -> Result<Self> {
        if finetune.is_empty() || safe.is_empty() {
            return Err(BilevelError::invalid(
                "data",
                "the fine-tuning and safe sets must both be non-empty",
            ));
        }
        let group_overhead = default_group_overhead(model.device());
        Ok(Self {
            model,
            finetune: Arc::new(finetune),
            safe: Arc::new(safe),
            pad_id,
            group_overhead,
        })
    }

    /// Sets how batches are split by length ([`grouped_nll`]): `Some(c)`
    /// with `c` tokens per extra forward pass, `None` for one forward per
    /// batch. The default is [`default_group_overhead`] of the model's
    /// device.
    pub fn with_group_overhead(mut self, overhead: Option<usize>) -> Self {
        self.group_overhead = overhead;
        self
    }

    /// How batches are split by length (see [`Self::with_group_overhead`]).
    pub fn group_overhead(&self) -> Option<usize> {
        self.group_overhead
    }

    /// The fine-tuning samples (ranker order).
    pub fn finetune(&self) -> &[TokenizedSample] {
        &self.finetune
    }

    /// The safe samples.
    pub fn safe(&self) -> &[TokenizedSample] {
        &self.safe
    }

    /// The padded batch of `rows` of `data`.
    pub fn batch(&self, data: &[TokenizedSample], rows: &[usize]) -> Result<LmBatch> {
        lm_batch(data, rows, self.pad_id)
    }

    fn losses(&self, data: &[TokenizedSample], rows: &[usize]) -> Result<Tensor> {
        grouped_nll(&self.model, data, rows, self.pad_id, self.group_overhead)
    }
}

impl<M: ForkableLm> LowerLevel for LmProblem<M> {
    fn num_finetune(&self) -> usize {
        self.finetune.len()
    }

    fn num_safe(&self) -> usize {
        self.safe.len()
    }

    fn finetune_lengths(&self) -> Vec<usize> {
        self.finetune.iter().map(TokenizedSample::len).collect()
    }

    fn safe_lengths(&self) -> Vec<usize> {
        self.safe.iter().map(TokenizedSample::len).collect()
    }

    fn finetune_losses(&self, rows: &[usize]) -> Result<Tensor> {
        self.losses(&self.finetune, rows)
    }

    fn safe_losses(&self, rows: &[usize]) -> Result<Tensor> {
        self.losses(&self.safe, rows)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.model.trainable_parameters()
    }

    fn fork(&self, seed: i64) -> Result<Self> {
        Ok(Self {
            model: self.model.fork_lm(seed)?,
            finetune: Arc::clone(&self.finetune),
            safe: Arc::clone(&self.safe),
            pad_id: self.pad_id,
            group_overhead: self.group_overhead,
        })
    }

    fn tokens(&self, finetune_rows: &[usize], safe_rows: &[usize]) -> usize {
        let count = |data: &[TokenizedSample], rows: &[usize]| -> usize {
            rows.iter()
                .filter_map(|&r| data.get(r))
                .map(TokenizedSample::len)
                .sum()
        };
        count(&self.finetune, finetune_rows) + count(&self.safe, safe_rows)
    }
}
