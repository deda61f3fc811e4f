//! Importing the official SEAL selectors and writing per-sample scores.
//!
//! The authors' trained selectors (<https://github.com/hanshen95/SEAL>,
//! `examples/scripts/ckpt/seal_selector_{llama3,phi3}.pt`) are `torch.save`d
//! float32 logit vectors over their RedOrca fine-tuning set. They carry no
//! sample ids, so an imported ranker's ids are the positions `0..N-1`. The
//! activation is read from the archive name (`llama3_softmax` →
//! softmax) unless given.

use crate::error::{BilevelError, Result};
use crate::ranker::{fingerprint_ids, Activation, Ranker};
use crate::torch_pt::read_pt_tensor;
use seal_data::Label;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::Kind;

/// Reads an official selector `.pt` file into a ranker (logits in f32).
pub fn import_selector(pt: &Path, activation: Option<Activation>) -> Result<Ranker> {
    let t = read_pt_tensor(pt)?;
    if t.size.len() != 1 {
        return Err(BilevelError::format(
            pt,
            format!("the selector tensor has shape {:?}, expected [N]", t.size),
        ));
    }
    let n = t.size[0] as usize;
    let activation = activation.unwrap_or(if t.archive_name.ends_with("sigmoid") {
        Activation::Sigmoid
    } else {
        Activation::Softmax
    });
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let fp = fingerprint_ids(&ids);
    let logits = t.tensor.to_kind(Kind::Float);
    let mut r = Ranker::from_logits(ids, fp, activation, &logits)?;
    let bytes = std::fs::read(pt).map_err(|e| BilevelError::io(pt, e))?;
    let name = pt
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    r.source = Some(format!(
        "official SEAL selector {name} (archive `{}`, saved on {}, sha256 {:x})",
        t.archive_name,
        t.location,
        Sha256::digest(&bytes)
    ));
    Ok(r)
}

/// One line of `scores.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreLine<'a> {
    /// The sample id.
    pub id: &'a str,
    /// Its label, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// The ranker logit (higher = keep).
    pub score: f64,
    /// The activation of the logit (the sample weight).
    pub weight: f64,
}

/// Writes `scores.jsonl` atomically: one line per ranker sample, in ranker
/// order, with `labels[i]` when given (same length as the ranker).
pub fn write_scores(path: &Path, ranker: &Ranker, labels: Option<&[Option<Label>]>) -> Result<()> {
    if let Some(l) = labels {
        if l.len() != ranker.len() {
            return Err(BilevelError::invalid(
                "labels",
                format!("{} labels for {} samples", l.len(), ranker.len()),
            ));
        }
    }
    let scores = ranker.logits_vec()?;
    let weights = ranker.weights_vec()?;
    let mut out = String::new();
    for (i, id) in ranker.ids().iter().enumerate() {
        let line = ScoreLine {
            id,
            label: labels.and_then(|l| l[i]),
            score: scores[i],
            weight: weights[i],
        };
        let text =
            serde_json::to_string(&line).map_err(|e| BilevelError::format(path, e.to_string()))?;
        out.push_str(&text);
        out.push('\n');
    }
    seal_model::weights::write_atomic(path, out.as_bytes())?;
    Ok(())
}
