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

/// The environment variable naming the resources a test run must have:
/// a comma-separated list of `model` (the SmolLM2 GGUF of `cargo xtask
/// setup`), `data` (`../shared/data`), `python` (the reference tools of
/// the parity tests) and `gpu`, or `all`.
pub const REQUIRE_ENV: &str = "SEAL_REQUIRE";

/// Whether `$SEAL_REQUIRE` names `resource` (or `all`).
pub fn required(resource: &str) -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|r| r == resource || r == "all")
    })
}

/// Called where a test cannot run because `resource` is missing: prints
/// why and returns (the test then returns early), unless `$SEAL_REQUIRE`
/// names the resource; then it panics, so that a run that must exercise
/// the real model or data cannot pass without them.
pub fn skip(resource: &str, reason: &str) {
    if required(resource) {
        panic!("{reason}, and {REQUIRE_ENV} requires `{resource}`");
    }
    eprintln!("skipping: {reason} (set {REQUIRE_ENV}={resource} to make this a failure)");
}

/// The shared real-data directory (`$SEAL_SHARED_DATA`, or `../shared/data`
/// beside the workspace), or `None` after reporting the skip ([`skip`])
/// when it is absent.
pub fn shared_data_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SEAL_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    if dir.join("gsm8k").is_dir() {
        Some(dir)
    } else {
        skip(
            "data",
            &format!(
                "shared data not found at {} (set SEAL_SHARED_DATA)",
                dir.display()
            ),
        );
        None
    }
}
