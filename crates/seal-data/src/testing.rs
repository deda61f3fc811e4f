//! Small, self-contained tokenizers and templates for tests (here and in
//! the crates that depend on seal-data), so that no test needs a model
//! download.

use crate::chat::ChatTemplate;
use crate::error::{DataError, Result};
use crate::tokenizer::TextTokenizer;

/// A ChatML template like SmolLM2's (`<|im_start|>role\n...<|im_end|>\n`).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A byte-level BPE tokenizer without merges: one token per byte (ids
/// 0..256, in the GPT-2 byte-to-unicode order), plus the special tokens
/// `<|endoftext|>` (256), `<|im_start|>` (257) and `<|im_end|>` (258).
/// Encoding and decoding round-trip any text exactly, so tests can compare
/// decoded spans with the original strings.
pub fn byte_level_tokenizer() -> Result<tokenizers::Tokenizer> {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let vocab: serde_json::Map<String, serde_json::Value> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let n = alphabet.len();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(n, "<|endoftext|>"), special(n + 1, "<|im_start|>"),
            special(n + 2, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    json.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| DataError::Tokenizer {
            path: None,
            message: e.to_string(),
        })
}

/// [`byte_level_tokenizer`] with [`CHATML_TEMPLATE`] (or `template`), eos
/// `<|im_end|>` and pad `<|endoftext|>`.
pub fn chatml_tokenizer(template: Option<ChatTemplate>) -> Result<TextTokenizer> {
    let tok = byte_level_tokenizer()?;
    let id = |t: &str| {
        tok.token_to_id(t).ok_or_else(|| DataError::Tokenizer {
            path: None,
            message: format!("test tokenizer lacks {t}"),
        })
    };
    let (eos, pad) = (id("<|im_end|>")?, id("<|endoftext|>")?);
    let template = match template {
        Some(t) => t,
        None => ChatTemplate::new(CHATML_TEMPLATE, None, Some("<|im_end|>".into()))?,
    };
    Ok(TextTokenizer::from_parts(
        tok,
        Some(template),
        None,
        vec![eos],
        Some(pad),
    ))
}
