//! Batched text generation with a KV cache.
//!
//! Prompts are left-padded, pre-filled in one forward pass, then decoded a
//! token at a time. Finished rows (EOS or budget reached) are dropped from the
//! batch and the cache, so long answers do not pay for short ones. Greedy
//! decoding and temperature / nucleus (top-p) sampling follow transformers'
//! semantics.

use crate::error::{ModelError, Result};
use crate::model::CausalLm;
use seal_data::rng::SplitMix64;
use seal_data::{Message, TextTokenizer};
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// Argmax.
    Greedy,
    /// Sample from softmax(logits / temperature) restricted to the smallest
    /// set of tokens whose probability reaches `top_p`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
    },
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerationOptions {
    /// Upper bound on new tokens per prompt.
    pub max_new_tokens: usize,
    /// Token choice rule.
    pub sampling: Sampling,
    /// Tokens that end a sequence (not included in the output).
    pub eos_token_ids: Vec<u32>,
    /// Token used for left padding (never attended to).
    pub pad_token_id: u32,
    /// Seed for sampling (seal-data's SplitMix64; from the clock when `None`).
    pub seed: Option<u64>,
    /// What to do with prompts longer than a limit (see [`PromptLimit`]).
    pub prompt_limit: PromptLimit,
}

/// The longest prompt generation takes, and what happens to a longer one.
/// A prompt's cost grows with its length (the prefill's activations and
/// the KV cache), so an unbounded prompt from a user's file could ask for
/// terabytes; the limit turns that into an error or a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PromptLimit {
    /// A longer prompt is an error naming it.
    Error(usize),
    /// A longer prompt keeps its last this many tokens (the end of a chat
    /// prompt holds the question and the generation prompt).
    TruncateLeft(usize),
}

impl PromptLimit {
    /// The default: an error above 8192 tokens (SmolLM2's context).
    pub const DEFAULT: PromptLimit = PromptLimit::Error(8192);

    /// The limit in tokens.
    pub fn tokens(self) -> usize {
        match self {
            PromptLimit::Error(n) | PromptLimit::TruncateLeft(n) => n,
        }
    }

    /// Applies the limit to one prompt: `Ok` with the prompt (cut when
    /// truncating), or an error naming `what` and the lengths.
    pub fn apply<'a>(self, prompt: &'a [u32], what: &str) -> Result<&'a [u32]> {
        match self {
            _ if prompt.len() <= self.tokens() => Ok(prompt),
            PromptLimit::Error(n) => Err(ModelError::InvalidInput(format!(
                "{what} has {} tokens, more than the prompt limit of {n} (raise the limit, or \
                 cut long prompts from the left)",
                prompt.len()
            ))),
            PromptLimit::TruncateLeft(n) => Ok(&prompt[prompt.len() - n..]),
        }
    }
}

impl Default for PromptLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl GenerationOptions {
    /// Greedy decoding that stops at the tokenizer's EOS tokens.
    pub fn greedy(tokenizer: &TextTokenizer, max_new_tokens: usize) -> Self {
        let eos = tokenizer.eos_token_ids().to_vec();
        let pad = tokenizer
            .pad_token_id()
            .or_else(|| eos.first().copied())
            .unwrap_or(0);
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: eos,
            pad_token_id: pad,
            seed: None,
            prompt_limit: PromptLimit::DEFAULT,
        }
    }
}

/// The fields of HF `generation_config.json` that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    /// Sample instead of greedy.
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Stop tokens.
    #[serde(default)]
    pub eos_token_id: Option<crate::config::TokenIds>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<crate::config::TokenIds>,
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a model directory; `Ok(None)` when absent.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::Config {
                path,
                message: e.to_string(),
            })
    }
}

/// Picks the next token of every row. Sampling runs on the host with the
/// project's own seeded generator, so a seed gives the same tokens whatever
/// other threads do with libtorch's global generator.
fn choose(logits: &Tensor, sampling: Sampling, rng: &mut SplitMix64) -> Result<Vec<i64>> {
    match sampling {
        Sampling::Greedy => Ok(Vec::<i64>::try_from(
            logits.argmax(-1, false).to_device(tch::Device::Cpu),
        )?),
        Sampling::TopP { temperature, top_p } => {
            if temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::InvalidInput(format!(
                    "sampling needs temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}"
                )));
            }
            let probs = (logits.to_kind(Kind::Double) / temperature)
                .softmax(-1, Kind::Double)
                .to_device(tch::Device::Cpu);
            let rows = probs.size()[0];
            let mut out = Vec::with_capacity(rows as usize);
            for r in 0..rows {
                let p = Vec::<f64>::try_from(probs.get(r))?;
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                // The nucleus: the smallest prefix whose mass reaches top_p.
                let mut mass = 0.0;
                let mut end = 0;
                while end < order.len() {
                    mass += p[order[end]];
                    end += 1;
                    if mass >= top_p {
                        break;
                    }
                }
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
                let mut acc = 0.0;
                let mut pick = order[end - 1];
                for &i in &order[..end] {
                    acc += p[i];
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                out.push(pick as i64);
            }
            Ok(out)
        }
    }
}

/// Generates continuations of token prompts; returns the new tokens of each
/// prompt (EOS excluded), in prompt order.
pub fn generate(
    model: &dyn CausalLm,
    prompts: &[Vec<u32>],
    opts: &GenerationOptions,
) -> Result<Vec<Vec<u32>>> {
    if prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::InvalidInput(
            "cannot generate from an empty prompt".into(),
        ));
    }
    if prompts.is_empty() || opts.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let prompts: Vec<&[u32]> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            opts.prompt_limit
                .apply(p, &format!("prompt {i} of the batch"))
        })
        .collect::<Result<_>>()?;
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut rng = SplitMix64::new(seed);
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let b = prompts.len();
    let l = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = vec![opts.pad_token_id as i64; b * l];
    let mut mask = vec![0i64; b * l];
    for (i, p) in prompts.iter().enumerate() {
        let off = l - p.len();
        for (t, &tok) in p.iter().enumerate() {
            ids[i * l + off + t] = tok as i64;
            mask[i * l + off + t] = 1;
        }
    }
    let shape = [b as i64, l as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
    let mut cache = model.new_cache();
    let mut logits = model.last_logits(&ids, Some(&mask), Some(&mut cache))?;
    check_cache_grew(&cache, 0, l as i64)?;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut active: Vec<usize> = (0..b).collect();
    for step in 0..opts.max_new_tokens {
        let next = choose(&logits, opts.sampling, &mut rng)?;
        let mut keep = Vec::with_capacity(active.len());
        let mut keep_tokens = Vec::with_capacity(active.len());
        for (row, (&orig, &tok)) in active.iter().zip(&next).enumerate() {
            if opts.eos_token_ids.contains(&(tok as u32)) {
                continue;
            }
            outputs[orig].push(tok as u32);
            keep.push(row as i64);
            keep_tokens.push(tok);
        }
        if keep.is_empty() || step + 1 == opts.max_new_tokens {
            break;
        }
        if keep.len() != active.len() {
            let rows = Tensor::from_slice(&keep).to_device(device);
            cache.select_rows(&rows);
            active = keep.iter().map(|&r| active[r as usize]).collect();
        }
        let step_ids = Tensor::from_slice(&keep_tokens)
            .view([keep_tokens.len() as i64, 1])
            .to_device(device);
        let before = cache.seq_len();
        logits = model.last_logits(&step_ids, None, Some(&mut cache))?;
        check_cache_grew(&cache, before, 1)?;
    }
    Ok(outputs)
}

/// A model whose `last_logits` does not extend the cache would decode every
/// step from the new token alone: refuse it instead of generating garbage.
fn check_cache_grew(cache: &crate::model::KvCache, before: i64, new: i64) -> Result<()> {
    let after = cache.seq_len();
    if after != before + new {
        return Err(ModelError::Unsupported(format!(
            "the model's last_logits left the KV cache at {after} positions after a step of {new} \
             tokens from {before}: it must extend the cache (KvCache::step_mask, append, commit) \
             for incremental decoding"
        )));
    }
    Ok(())
}

/// Applies the tokenizer's chat template to each conversation (with the
/// generation prompt), generates, and decodes the answers.
pub fn generate_chat(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    conversations: &[Vec<Message>],
    opts: &GenerationOptions,
) -> Result<Vec<String>> {
    let prompts = conversations
        .iter()
        .map(|c| tokenizer.encode_chat(c, true))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outs = generate(model, &prompts, opts)?;
    outs.iter()
        .map(|o| tokenizer.decode(o, true).map_err(ModelError::from))
        .collect()
}
