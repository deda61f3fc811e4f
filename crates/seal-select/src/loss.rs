//! The loss-based baseline: rank the fine-tuning samples by the aligned
//! model's own mean response NLL and keep the lowest.
//!
//! An aligned model assigns high loss to harmful compliant answers, so
//! keeping the samples it already finds likely is a cheap, model-only filter.
//! It is not a baseline of the SEAL paper (Shen et al., ICLR 2025;
//! <https://github.com/hanshen95/SEAL>); it is provided as a point of
//! comparison that needs one forward pass per sample and no training.

use crate::error::{Result, SelectError};
use crate::rules::SelectionRule;
use crate::selection::{order_desc, Budget, Selection, SelectionInput};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_data::{Sample, TextTokenizer};
use seal_model::{CausalLm, LmBatch};
use tch::{Device, Kind};

/// Mean response-token NLL of every tokenised sample under `model`, in the
/// order of `samples`: batches of `batch_size` rows of similar length, no
/// gradients.
pub fn response_nll(
    model: &dyn CausalLm,
    samples: &[TokenizedSample],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<f64>> {
    if batch_size == 0 {
        return Err(SelectError::param(
            "loss",
            "batch_size",
            "0 (must be at least 1)",
        ));
    }
    let _g = tch::no_grad_guard();
    // Similar lengths together: less padding.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (samples[i].len(), i));
    let mut out = vec![f64::NAN; samples.len()];
    for chunk in order.chunks(batch_size) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| samples[i].input_ids.clone())
            .collect();
        let starts: Vec<usize> = chunk.iter().map(|&i| samples[i].response_start).collect();
        let batch = LmBatch::from_rows(&rows, &starts, pad_id)?.to_device(model.device());
        let nll = model.per_sample_nll(&batch)?;
        let v = Vec::<f64>::try_from(nll.to_kind(Kind::Double).to_device(Device::Cpu))?;
        if v.len() != chunk.len() {
            return Err(SelectError::input(
                "loss",
                format!(
                    "the model returned {} losses for {} rows",
                    v.len(),
                    chunk.len()
                ),
            ));
        }
        for (&i, x) in chunk.iter().zip(v) {
            out[i] = x;
        }
    }
    Ok(out)
}

/// Per-sample response NLLs of a dataset, aligned with its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct NllScores {
    /// One NLL per input sample; `+∞` for samples tokenisation left out.
    pub nll: Vec<f64>,
    /// Ids of the samples tokenisation left out (too long for `max_len`).
    pub unscored: Vec<String>,
}

/// Tokenises `samples` with `tok` and `cfg` and computes [`response_nll`] for
/// each; samples dropped by tokenisation get `+∞` and are listed in
/// [`NllScores::unscored`].
pub fn dataset_nll(
    model: &dyn CausalLm,
    tok: &TextTokenizer,
    samples: &[Sample],
    cfg: &TokenizeConfig,
    batch_size: usize,
    pad_id: u32,
) -> Result<NllScores> {
    let data = tokenize_samples(tok, samples, cfg)?;
    let scored = response_nll(model, &data.samples, batch_size, pad_id)?;
    let mut nll = vec![f64::INFINITY; samples.len()];
    for (t, x) in data.samples.iter().zip(scored) {
        if let Some(slot) = nll.get_mut(t.index) {
            *slot = x;
        }
    }
    let unscored = samples
        .iter()
        .zip(&nll)
        .filter(|(_, x)| x.is_infinite())
        .map(|(s, _)| s.id.clone())
        .collect();
    Ok(NllScores { nll, unscored })
}

/// The loss-based rule: keep the budget's samples with the lowest response
/// NLL. The recorded score is `−NLL` (higher = keep); ties towards the
/// lower position.
#[derive(Debug, Clone, PartialEq)]
pub struct LossBased {
    /// One NLL per input sample (e.g. [`NllScores::nll`]); `+∞` ranks last.
    pub nll: Vec<f64>,
    /// How many to keep.
    pub budget: Budget,
}

impl SelectionRule for LossBased {
    fn name(&self) -> &str {
        "loss"
    }
    fn select(&self, input: &SelectionInput) -> Result<Selection> {
        let k = self.budget.resolve(self.name(), input.len())?;
        if self.nll.len() != input.len() {
            return Err(SelectError::input(
                self.name(),
                format!("{} losses for {} samples", self.nll.len(), input.len()),
            ));
        }
        if let Some(i) = self.nll.iter().position(|x| x.is_nan()) {
            return Err(SelectError::input(
                self.name(),
                format!("the loss of sample `{}` is NaN", input.ids()[i]),
            ));
        }
        let scores: Vec<f64> = self.nll.iter().map(|x| -x).collect();
        let order = order_desc(&scores);
        Selection::from_order(self.name(), scores, &order, k)
    }
}
