//! Tokenising the pool, the safe set and the anchors for the stages.

use super::*;

/// Tokenises `samples` with the chat template (response-only loss), warning
/// about samples too long for `max_len`.
pub fn tokenize(
    tokenizer: &TextTokenizer,
    name: &str,
    samples: &[Sample],
    max_len: usize,
) -> Result<Vec<TokenizedSample>> {
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = max_len;
    let d = tokenize_samples(tokenizer, samples, &cfg)?;
    let dropped = d.summary.total - d.summary.kept;
    if dropped > 0 {
        tracing::warn!(
            "{name}: {dropped} of {} samples longer than max_len {max_len} are left out",
            d.summary.total
        );
    }
    Ok(d.samples)
}

/// Tokenises the fine-tuning pool ([`tokenize`]); a pool with no sample
/// that fits `max_len` is an error.
pub fn tokenize_pool(
    tokenizer: &TextTokenizer,
    pool: &[Sample],
    max_len: usize,
) -> Result<Vec<TokenizedSample>> {
    let tokens = tokenize(tokenizer, "fine-tuning pool", pool, max_len)?;
    if tokens.is_empty() {
        return Err(PipelineError::stage(
            "data",
            format!("every pool sample is longer than max_len {max_len}"),
        ));
    }
    Ok(tokens)
}
