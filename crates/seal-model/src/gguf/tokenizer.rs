//! The `tokenizers` BPE tokenizer rebuilt from the GGUF vocabulary, merges and pre-tokenizer.

use super::*;

use serde_json::{json, Value as Json};

use crate::error::Result;

/// GPT-2's reversible byte → printable-char table (`bytes_to_unicode`).
pub(super) fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The token strings of the GGUF vocabulary plus the special tokens.
pub(super) struct GgufVocab {
    pub(super) tokens: Vec<String>,
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
    pub(super) pad: Option<u32>,
    pub(super) unk: Option<u32>,
    pub(super) add_bos: bool,
    pub(super) add_eos: bool,
}

impl GgufVocab {
    pub(super) fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }
}

impl GgufFile {
    pub(super) fn string_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))?
            .as_array()
            .ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}`: expected an array of strings"
                ))
            })?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    self.err(format!(
                        "metadata key `{key}` [{i}]: expected a string, found {}",
                        v.type_name()
                    ))
                })
            })
            .collect()
    }

    pub(super) fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        match self.meta_usize(key)? {
            None => Ok(None),
            Some(id) if id < n_tokens => Ok(Some(id as u32)),
            Some(id) => Err(self.err(format!(
                "metadata key `{key}`: token id {id} is outside the vocabulary ({n_tokens} tokens)"
            ))),
        }
    }

    /// Builds the HF `tokenizer.json` (as JSON) from the GGUF vocabulary.
    pub(super) fn build_tokenizer_json(&self) -> Result<(Json, GgufVocab)> {
        match self.meta_str("tokenizer.ggml.model")? {
            Some("gpt2") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "metadata key `tokenizer.ggml.model`: tokenizer model `{other}` is not supported (only gpt2 byte-level BPE)"
                )))
            }
            None => return Err(self.err("metadata key `tokenizer.ggml.model` is missing".into())),
        }
        let pre = self.meta_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level
            ]}),
            "default" | "gpt2" => byte_level,
            other => {
                return Err(self.err(format!(
                    "metadata key `tokenizer.ggml.pre`: pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, default)"
                )))
            }
        };

        let raw_tokens = self.string_array("tokenizer.ggml.tokens")?;
        let n = raw_tokens.len();
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(v) => {
                let arr = v.as_array().ok_or_else(|| {
                    self.err(
                        "metadata key `tokenizer.ggml.token_type`: expected an array of integers"
                            .into(),
                    )
                })?;
                if arr.len() != n {
                    return Err(self.err(format!(
                        "metadata key `tokenizer.ggml.token_type`: {} entries for {n} tokens",
                        arr.len()
                    )));
                }
                arr.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().ok_or_else(|| {
                            self.err(format!("metadata key `tokenizer.ggml.token_type` [{i}]: expected an integer"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let merges_raw = match self.get("tokenizer.ggml.merges") {
            Some(_) => self.string_array("tokenizer.ggml.merges")?,
            None => return Err(self.err("metadata key `tokenizer.ggml.merges` is missing".into())),
        };

        // Byte-level vocabularies spell every token in the byte alphabet;
        // re-spell any token that is not (as transformers does).
        let alphabet = byte_level_alphabet();
        let in_alphabet: std::collections::HashSet<char> = alphabet.iter().copied().collect();
        let spelled = |t: &str| t.chars().all(|c| in_alphabet.contains(&c));
        let tokens: Vec<String> = raw_tokens
            .iter()
            .map(|t| {
                if spelled(t) {
                    t.clone()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                }
            })
            .collect();

        let mut vocab = serde_json::Map::new();
        for (id, t) in tokens.iter().enumerate() {
            if vocab.contains_key(t) {
                tracing::warn!(token = %t, id, "duplicate token in GGUF vocabulary; keeping the first id");
                continue;
            }
            vocab.insert(t.clone(), json!(id));
        }
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                self.err(format!("metadata key `tokenizer.ggml.merges` [{i}]: `{m}` is not two tokens separated by a space"))
            })?;
            merges.push(json!([a, b]));
        }

        let mut added = Vec::new();
        for (id, (raw, ty)) in raw_tokens.iter().zip(&types).enumerate() {
            let special = match *ty {
                3 if spelled(raw) => true,
                4 => false,
                _ => continue,
            };
            added.push(json!({
                "id": id, "content": raw, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special
            }));
        }

        let v = GgufVocab {
            bos: self.token_id("tokenizer.ggml.bos_token_id", n)?,
            eos: self.token_id("tokenizer.ggml.eos_token_id", n)?,
            pad: self.token_id("tokenizer.ggml.padding_token_id", n)?,
            unk: self.token_id("tokenizer.ggml.unknown_token_id", n)?,
            add_bos: self
                .get("tokenizer.ggml.add_bos_token")
                .and_then(GgufValue::as_bool)
                .unwrap_or(false),
            add_eos: self
                .get("tokenizer.ggml.add_eos_token")
                .and_then(GgufValue::as_bool)
                .unwrap_or(false),
            tokens,
        };

        let post_processor = if (v.add_bos && v.bos.is_some()) || (v.add_eos && v.eos.is_some()) {
            let mut single = Vec::new();
            let mut pair = Vec::new();
            let mut specials = serde_json::Map::new();
            let bos = v
                .bos
                .filter(|_| v.add_bos)
                .zip(v.token(v.bos).map(str::to_string));
            let eos = v
                .eos
                .filter(|_| v.add_eos)
                .zip(v.token(v.eos).map(str::to_string));
            for (seq, type_id) in [("A", 0), ("B", 1)] {
                let mut items = Vec::new();
                if let Some((_, t)) = &bos {
                    items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                }
                items.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
                if let Some((_, t)) = &eos {
                    items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                }
                if seq == "A" {
                    single.extend(items.clone());
                }
                pair.extend(items);
            }
            for (id, t) in bos.iter().chain(eos.iter()) {
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
        } else {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        };

        let tok = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges
            }
        });
        Ok((tok, v))
    }
}
