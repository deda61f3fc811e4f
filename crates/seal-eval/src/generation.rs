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
        // Checked here, before any generation, to name the sample.
        if let Err(e) = options.prompt_limit.apply(&ids, "the prompt") {
            return Err(EvalError::Sample {
                id: s.id.clone(),
                message: e.to_string(),
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

/// What [`regenerate_responses`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regenerated {
    /// Samples whose response was replaced by the model's own.
    pub replaced: usize,
    /// Selected samples that kept their response because the generation
    /// reached the token limit without an end-of-sequence token (training
    /// on a cut answer would teach the model to stop mid-sentence).
    pub truncated: usize,
    /// Selected samples that kept their response because the model
    /// answered with nothing.
    pub empty: usize,
    /// Samples left alone (not selected, or without a response to replace).
    pub untouched: usize,
}

/// Self-distillation of a dataset: the samples for which `select` holds get
/// the model's own greedy answer to their prompt as their response; every
/// other sample is returned unchanged, in the same order.
///
/// Used for the alignment stage, where benign instructions answered in the
/// base model's own words act as a retain set: their loss starts near the
/// model's own entropy, so the gradient they carry mostly resists drift
/// (towards refusing them) instead of teaching someone else's style.
/// Generations cut at `options.max_new_tokens` and empty ones keep the
/// original response (counted in [`Regenerated`]).
pub fn regenerate_responses(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    select: impl Fn(&Sample) -> bool,
    options: &GenerationOptions,
    batch_size: usize,
) -> Result<(Vec<Sample>, Regenerated)> {
    let chosen: Vec<usize> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.response().is_some() && select(s))
        .map(|(i, _)| i)
        .collect();
    let prompts: Vec<Sample> = chosen.iter().map(|&i| samples[i].clone()).collect();
    let answers = generate_responses(model, tokenizer, &prompts, options, batch_size)?;
    let mut out = samples.to_vec();
    let mut stats = Regenerated {
        untouched: samples.len() - chosen.len(),
        ..Regenerated::default()
    };
    for (&i, answer) in chosen.iter().zip(answers) {
        let text = answer.response.trim();
        if answer.new_tokens >= options.max_new_tokens {
            stats.truncated += 1;
        } else if text.is_empty() {
            stats.empty += 1;
        } else if let Some(last) = out[i].messages.last_mut() {
            last.content = text.to_string();
            stats.replaced += 1;
        }
    }
    Ok((out, stats))
}
