//! Batched response generation for evaluation prompts.
//!
//! Each sample's prompt (its conversation without a trailing assistant
//! turn) is rendered with the tokenizer's chat template and the generation
//! cue, exactly as [`seal_data::tokenize::tokenize_prompt`] renders it. A
//! trailing assistant turn, such as the reference solution that
//! `eval_utility.jsonl` samples carry for the held-out NLL, is never part of
//! the prompt: the model answers the question, not a copy of the answer.
//! Prompts are sorted by length before batching (less left padding), and
//! the responses are returned in the samples' order.

use std::time::Instant;

use seal_data::{Sample, TextTokenizer};
use seal_model::generate::{generate, GenerationOptions};
use seal_model::CausalLm;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// A generated response to one evaluation prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generated {
    /// The sample id.
    pub id: String,
    /// The last user turn (the instruction answered).
    pub prompt: String,
    /// The decoded response (special tokens skipped).
    pub response: String,
    /// Number of new tokens (EOS excluded).
    pub new_tokens: usize,
}

/// Generates one response per sample, `batch_size` prompts at a time.
/// Errors name the sample whose prompt cannot be rendered.
pub fn generate_responses(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    options: &GenerationOptions,
    batch_size: usize,
) -> Result<Vec<Generated>> {
    if batch_size == 0 {
        return Err(EvalError::invalid("batch size", "0 (must be at least 1)"));
    }
    let mut prompts = Vec::with_capacity(samples.len());
    for s in samples {
        let ids = seal_data::tokenize::tokenize_prompt(tokenizer, None, s, false)?;
        if ids.is_empty() {
            return Err(EvalError::Sample {
                id: s.id.clone(),
                message: "the prompt encodes to no tokens".into(),
            });
        }
        prompts.push(ids);
    }
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut outputs: Vec<Option<Vec<u32>>> = vec![None; samples.len()];
    let start = Instant::now();
    let mut done = 0usize;
    for chunk in order.chunks(batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let outs = generate(model, &batch, options)?;
        for (&i, out) in chunk.iter().zip(outs) {
            outputs[i] = Some(out);
        }
        done += chunk.len();
        tracing::info!(
            "generated {done}/{} responses ({:.1} s)",
            samples.len(),
            start.elapsed().as_secs_f64()
        );
    }
    samples
        .iter()
        .zip(outputs)
        .map(|(s, out)| {
            let out = out.unwrap_or_default();
            Ok(Generated {
                id: s.id.clone(),
                prompt: s.last_user().unwrap_or_default().to_string(),
                response: tokenizer.decode(&out, true)?,
                new_tokens: out.len(),
            })
        })
        .collect()
}
