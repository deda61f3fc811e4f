//! Chat-templated tokenisation with response-only loss masks.
//!
//! For a sample whose last message is the assistant response, the
//! conversation is rendered with the chat template (the model's own, from
//! [`TextTokenizer::template`], or one given in [`TokenizeConfig::template`],
//! e.g. [`ChatTemplate::plain`] with the official `"Human: {}\nAssistant: "`).
//! The rendered text is cut in three at the response's character span:
//!
//! * the prompt (everything before the response, including the
//!   template's assistant cue), encoded as it would be at generation time;
//! * the response, encoded on its own;
//! * the end of the turn: the template's text after the response up to and
//!   including the first end-of-turn token (an id of
//!   [`TextTokenizer::eos_token_ids`]); the rest (e.g. a trailing newline) is
//!   dropped. If the template writes no end token, the first eos id is
//!   appended.
//!
//! A sample's [`Sample::prefill`] (the start of the response given as
//! context) is encoded with the prompt, so the loss starts after it.
//!
//! The loss covers exactly the response tokens and the end token, which are a
//! suffix of the sequence: a [`TokenizedSample`] stores where it starts
//! ([`TokenizedSample::response_start`]). Encoding the parts separately makes
//! the mask boundary exact (no token straddles prompt and response) and makes
//! the prompt tokens identical to those the model sees when it generates.
//!
//! Samples longer than [`TokenizeConfig::max_len`] follow an explicit
//! [`OverLengthPolicy`]; the counts appear in the [`TokenizeSummary`].

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chat::{ChatTemplate, Message};
use crate::error::{DataError, Result};
use crate::sample::{Label, Sample};
use crate::tokenizer::TextTokenizer;

/// What to do with a sample longer than `max_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverLengthPolicy {
    /// Leave the sample out (counted in [`TokenizeSummary::dropped_too_long`]).
    Drop,
    /// Cut the prompt from the left until the sample fits (counted in
    /// [`TokenizeSummary::truncated`]); samples whose response alone does not
    /// fit (leaving at least one prompt token) are dropped and counted in
    /// [`TokenizeSummary::dropped_response_too_long`].
    #[default]
    TruncateLeft,
}

impl std::str::FromStr for OverLengthPolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drop" => Ok(Self::Drop),
            "truncate-left" | "truncate" => Ok(Self::TruncateLeft),
            other => Err(DataError::Invalid {
                what: "over-length policy".into(),
                message: format!("`{other}` (expected drop or truncate-left)"),
            }),
        }
    }
}

/// Settings of [`tokenize_samples`].
///
/// Marked `#[non_exhaustive]`: build it from [`Default`] and set its fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenizeConfig {
    /// Maximum sequence length in tokens.
    pub max_len: usize,
    /// What to do with longer samples.
    pub policy: OverLengthPolicy,
    /// A template to use instead of the tokenizer's own.
    pub template: Option<ChatTemplate>,
    /// Apply the tokenizer's post-processor (e.g. a BOS) to the prompt.
    /// Chat templates write their special tokens themselves (transformers'
    /// semantics), so this is off by default; turn it on with a plain
    /// template on models that expect a BOS.
    pub add_special_tokens: bool,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        Self {
            max_len: 1024,
            policy: OverLengthPolicy::default(),
            template: None,
            add_special_tokens: false,
        }
    }
}

/// A tokenised training sample. The loss covers `input_ids[response_start..]`
/// (the response and its end token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedSample {
    /// The sample's stable id.
    pub id: String,
    /// Position of the sample in the slice given to [`tokenize_samples`]
    /// (the ranker slot when that slice is the fine-tuning pool).
    pub index: usize,
    /// The sample's label.
    pub label: Option<Label>,
    /// Prompt, response and end-token ids.
    pub input_ids: Vec<u32>,
    /// First position covered by the loss; always `>= 1` and `< len()`.
    pub response_start: usize,
}

impl TokenizedSample {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the sample has no tokens (never true for tokenised samples).
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of tokens covered by the loss.
    pub fn response_len(&self) -> usize {
        self.input_ids.len().saturating_sub(self.response_start)
    }

    /// The loss mask: `true` on response and end tokens.
    pub fn loss_mask(&self) -> Vec<bool> {
        (0..self.input_ids.len())
            .map(|i| i >= self.response_start)
            .collect()
    }

    /// The prompt ids.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.input_ids[..self.response_start.min(self.input_ids.len())]
    }

    /// The ids covered by the loss.
    pub fn response_ids(&self) -> &[u32] {
        &self.input_ids[self.response_start.min(self.input_ids.len())..]
    }
}

/// Counts from one tokenisation run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeSummary {
    /// Samples given.
    pub total: usize,
    /// Samples kept.
    pub kept: usize,
    /// Samples cut from the left to fit `max_len`.
    pub truncated: usize,
    /// Samples dropped for being too long (policy `drop`).
    pub dropped_too_long: usize,
    /// Samples dropped because the response alone does not fit.
    pub dropped_response_too_long: usize,
    /// Samples whose template wrote no end token (one was appended).
    pub appended_end_token: usize,
    /// Tokens in kept samples.
    pub tokens: usize,
    /// Loss-bearing tokens in kept samples.
    pub response_tokens: usize,
    /// Longest kept sample.
    pub max_tokens: usize,
    /// `max_len` used.
    pub max_len: usize,
}

impl fmt::Display for TokenizeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean = if self.kept > 0 {
            self.tokens as f64 / self.kept as f64
        } else {
            0.0
        };
        write!(
            f,
            "{} samples: {} kept, {} truncated (left), {} dropped as too long, {} dropped \
             (response alone exceeds max_len {}); {} tokens ({} in responses), mean {:.1}, max {}",
            self.total,
            self.kept,
            self.truncated,
            self.dropped_too_long,
            self.dropped_response_too_long,
            self.max_len,
            self.tokens,
            self.response_tokens,
            mean,
            self.max_tokens
        )?;
        if self.appended_end_token > 0 {
            write!(
                f,
                "; end token appended to {} samples",
                self.appended_end_token
            )?;
        }
        Ok(())
    }
}

/// A tokenised dataset: kept samples, in input order, and the run's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedDataset {
    /// Kept samples, in input order.
    pub samples: Vec<TokenizedSample>,
    /// Counts.
    pub summary: TokenizeSummary,
}

impl TokenizedDataset {
    /// Sequence lengths, in sample order.
    pub fn lengths(&self) -> Vec<usize> {
        self.samples.iter().map(TokenizedSample::len).collect()
    }
}

enum Outcome {
    Kept {
        sample: TokenizedSample,
        truncated: bool,
        appended: bool,
    },
    TooLong,
    ResponseTooLong,
}

/// A sample's rendered conversation, tokenised in three parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedParts {
    /// Everything before the response (with the assistant cue), and the
    /// sample's prefill if it has one.
    pub prompt: Vec<u32>,
    /// The response.
    pub response: Vec<u32>,
    /// The end of the turn, up to and including the end token.
    pub end: Vec<u32>,
    /// Whether the end token was appended (the template wrote none).
    pub appended_end: bool,
}

/// Renders and tokenises one sample's parts (see the module docs).
pub fn encode_parts(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    sample: &Sample,
    add_special_tokens: bool,
) -> Result<EncodedParts> {
    let ctx = |e: DataError| match e {
        DataError::Template(m) => DataError::Template(format!("sample {}: {m}", sample.id)),
        DataError::Tokenizer { path, message } => DataError::Tokenizer {
            path,
            message: format!("sample {}: {message}", sample.id),
        },
        other => other,
    };
    let response = sample.response().ok_or_else(|| DataError::Invalid {
        what: format!("sample {}", sample.id),
        message: "no assistant response to train on (the last message is not an assistant turn)"
            .into(),
    })?;
    let render = |msgs: &[Message], gen: bool| -> Result<String> {
        match template {
            Some(t) => t.render(msgs, gen),
            None => tok.apply_chat_template(msgs, gen),
        }
    };
    let prompt_text = render(sample.prompt_messages(), true).map_err(ctx)?;
    let full = render(&sample.messages, false).map_err(ctx)?;
    let search_from = if full.starts_with(&prompt_text) {
        prompt_text.len()
    } else {
        0
    };
    let trimmed = response.trim();
    if trimmed.is_empty() {
        return Err(DataError::Invalid {
            what: format!("sample {}", sample.id),
            message: "empty assistant response".into(),
        });
    }
    // After the rendered prompt the response is the first match; without a
    // prompt prefix it is the last (earlier turns may repeat it).
    let locate = |needle: &str| {
        if search_from > 0 {
            full[search_from..].find(needle).map(|p| search_from + p)
        } else {
            full.rfind(needle)
        }
    };
    let (start, len) = match locate(response) {
        Some(p) => (p, response.len()),
        None => match locate(trimmed) {
            Some(p) => (p, trimmed.len()),
            None => {
                return Err(DataError::Template(format!(
                    "sample {}: the rendered conversation does not contain the response text \
                     (the template rewrites it), so the loss mask cannot be located",
                    sample.id
                )))
            }
        },
    };
    let end = start + len;
    // A prefill moves the loss boundary past it: it is encoded with the
    // prompt, as a prefilled generation would see it.
    let loss_start = match sample.prefill.as_deref() {
        None => start,
        Some(prefill) => {
            let span = &full[start..end];
            let cut = if span.starts_with(prefill) {
                prefill.len()
            } else if span.starts_with(prefill.trim_start()) {
                prefill.trim_start().len()
            } else {
                return Err(DataError::Template(format!(
                    "sample {}: the rendered response does not start with its prefill",
                    sample.id
                )));
            };
            if span[cut..].trim().is_empty() {
                return Err(DataError::Invalid {
                    what: format!("sample {}", sample.id),
                    message: "the prefill covers the whole response, leaving nothing to train on"
                        .into(),
                });
            }
            start + cut
        }
    };
    let prompt_ids = tok
        .encode(&full[..loss_start], add_special_tokens)
        .map_err(ctx)?;
    let response_ids = tok.encode(&full[loss_start..end], false).map_err(ctx)?;
    let rest_ids = tok.encode(&full[end..], false).map_err(ctx)?;
    let eos = tok.eos_token_ids();
    let (end_ids, appended) = match rest_ids.iter().position(|t| eos.contains(t)) {
        Some(p) => (rest_ids[..=p].to_vec(), false),
        None => match eos.first() {
            Some(&e) => (vec![e], true),
            None => (Vec::new(), false),
        },
    };
    Ok(EncodedParts {
        prompt: prompt_ids,
        response: response_ids,
        end: end_ids,
        appended_end: appended,
    })
}

fn tokenize_one(
    tok: &TextTokenizer,
    cfg: &TokenizeConfig,
    index: usize,
    sample: &Sample,
) -> Result<Outcome> {
    let EncodedParts {
        mut prompt,
        response,
        end,
        appended_end: appended,
    } = encode_parts(tok, cfg.template.as_ref(), sample, cfg.add_special_tokens)?;
    let tail = response.len() + end.len();
    if tail == 0 {
        return Err(DataError::Invalid {
            what: format!("sample {}", sample.id),
            message: "the response encodes to no tokens".into(),
        });
    }
    let mut truncated = false;
    if prompt.len() + tail > cfg.max_len {
        match cfg.policy {
            OverLengthPolicy::Drop => return Ok(Outcome::TooLong),
            OverLengthPolicy::TruncateLeft => {
                if tail + 1 > cfg.max_len {
                    return Ok(Outcome::ResponseTooLong);
                }
                let keep = cfg.max_len - tail;
                prompt.drain(..prompt.len() - keep);
                truncated = true;
            }
        }
    }
    if prompt.is_empty() {
        return Err(DataError::Invalid {
            what: format!("sample {}", sample.id),
            message: "the prompt encodes to no tokens".into(),
        });
    }
    let response_start = prompt.len();
    let mut input_ids = prompt;
    input_ids.reserve(tail);
    input_ids.extend_from_slice(&response);
    input_ids.extend_from_slice(&end);
    Ok(Outcome::Kept {
        sample: TokenizedSample {
            id: sample.id.clone(),
            index,
            label: sample.label,
            input_ids,
            response_start,
        },
        truncated,
        appended,
    })
}

/// Tokenises `samples` in parallel (rayon). Every sample must have an
/// assistant response. The first error (in sample order) is returned.
pub fn tokenize_samples(
    tok: &TextTokenizer,
    samples: &[Sample],
    cfg: &TokenizeConfig,
) -> Result<TokenizedDataset> {
    if cfg.max_len < 2 {
        return Err(DataError::Invalid {
            what: "max_len".into(),
            message: format!("{} (must be at least 2)", cfg.max_len),
        });
    }
    if cfg.template.is_none() && tok.template().is_none() {
        return Err(DataError::Template(
            "the tokenizer has no chat template; give one (e.g. a plain prompt format)".into(),
        ));
    }
    let outcomes: Vec<Result<Outcome>> = samples
        .par_iter()
        .enumerate()
        .map(|(i, s)| tokenize_one(tok, cfg, i, s))
        .collect();
    let mut summary = TokenizeSummary {
        total: samples.len(),
        max_len: cfg.max_len,
        ..Default::default()
    };
    let mut kept = Vec::with_capacity(samples.len());
    for o in outcomes {
        match o? {
            Outcome::Kept {
                sample,
                truncated,
                appended,
            } => {
                summary.truncated += usize::from(truncated);
                summary.appended_end_token += usize::from(appended);
                summary.tokens += sample.len();
                summary.response_tokens += sample.response_len();
                summary.max_tokens = summary.max_tokens.max(sample.len());
                kept.push(sample);
            }
            Outcome::TooLong => summary.dropped_too_long += 1,
            Outcome::ResponseTooLong => summary.dropped_response_too_long += 1,
        }
    }
    summary.kept = kept.len();
    Ok(TokenizedDataset {
        samples: kept,
        summary,
    })
}

/// Tokenises a prompt for generation: the conversation before the response
/// (or all of it for prompt-only samples), rendered with the generation cue.
pub fn tokenize_prompt(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    sample: &Sample,
    add_special_tokens: bool,
) -> Result<Vec<u32>> {
    let msgs = sample.prompt_messages();
    let text = match template {
        Some(t) => t.render(msgs, true),
        None => tok.apply_chat_template(msgs, true),
    }
    .map_err(|e| DataError::Template(format!("sample {}: {e}", sample.id)))?;
    tok.encode(&text, add_special_tokens)
}
