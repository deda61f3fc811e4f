//! A `tokenizers` tokenizer paired with its chat template and special token
//! ids, loaded from a Hugging Face model directory.
//!
//! [`TextTokenizer::encode_chat`] follows transformers'
//! `apply_chat_template(..., tokenize=True)`: the template is rendered and
//! the text is encoded *without* adding special tokens again, because the
//! template already writes them.

use std::path::{Path, PathBuf};

use crate::chat::{ChatTemplate, Message};
use crate::error::{DataError, Result};

/// A tokenizer with its chat template and special token ids.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
    /// The `tokenizer.json` it was loaded from, for error messages.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("has_template", &self.template.is_some())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("pad_token_id", &self.pad_token_id)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    })
}

/// The token string of a special token entry of tokenizer_config.json
/// (a string or an AddedToken object).
fn token_string(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        obj => obj.get("content")?.as_str().map(str::to_string),
    }
}

/// Reads an id field that may be an integer, a list of integers or null.
fn id_list(value: Option<&serde_json::Value>, path: &Path, field: &str) -> Result<Vec<u32>> {
    let bad = || DataError::Field {
        path: path.to_path_buf(),
        line: None,
        field: field.to_string(),
        message: "expected a token id, a list of token ids or null".into(),
    };
    let one = |v: &serde_json::Value| -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (chat template and
    /// special tokens) from a Hugging Face model directory, plus
    /// `generation_config.json` (or, failing that, `config.json`) for the
    /// ids that stop generation when present.
    ///
    /// The stop ids are the union of the generation config's `eos_token_id`
    /// (an id or a list) and the id of tokenizer_config's `eos_token`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(DataError::Tokenizer {
                path: Some(tok_path),
                message: "file not found (expected a Hugging Face tokenizer.json)".into(),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| DataError::Tokenizer {
                path: Some(tok_path.clone()),
                message: e.to_string(),
            })?;

        let cfg_path = dir.join("tokenizer_config.json");
        let (template, cfg) = if cfg_path.is_file() {
            (
                ChatTemplate::from_tokenizer_config(&cfg_path)?,
                Some(read_json(&cfg_path)?),
            )
        } else {
            (None, None)
        };
        let lookup = |key: &str| -> Option<u32> {
            let token = token_string(cfg.as_ref()?, key)?;
            tokenizer.token_to_id(&token)
        };
        let mut bos_token_id = lookup("bos_token");
        let mut pad_token_id = lookup("pad_token");
        let mut eos_token_ids: Vec<u32> = Vec::new();

        let gen_path = dir.join("generation_config.json");
        let model_cfg_path = dir.join("config.json");
        let ids_source = if gen_path.is_file() {
            Some(gen_path)
        } else if model_cfg_path.is_file() {
            Some(model_cfg_path)
        } else {
            None
        };
        if let Some(p) = ids_source {
            let g = read_json(&p)?;
            eos_token_ids = id_list(g.get("eos_token_id"), &p, "eos_token_id")?;
            if bos_token_id.is_none() {
                bos_token_id = id_list(g.get("bos_token_id"), &p, "bos_token_id")?
                    .first()
                    .copied();
            }
            if pad_token_id.is_none() {
                pad_token_id = id_list(g.get("pad_token_id"), &p, "pad_token_id")?
                    .first()
                    .copied();
            }
        }
        if let Some(id) = lookup("eos_token") {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let mut out = Self::from_parts(
            tokenizer,
            template,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
        );
        out.path = Some(dir.join("tokenizer.json"));
        Ok(out)
    }

    /// Assembles a tokenizer from its parts.
    pub fn from_parts(
        tokenizer: tokenizers::Tokenizer,
        template: Option<ChatTemplate>,
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
        pad_token_id: Option<u32>,
    ) -> Self {
        Self {
            tokenizer,
            template,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            path: None,
        }
    }

    fn err(&self, message: String) -> DataError {
        DataError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }

    /// Encodes `text`; `add_special_tokens` applies the tokenizer's
    /// post-processor (e.g. a leading BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.err(format!("encode failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts in parallel (the tokenizers crate's rayon pool).
    pub fn encode_batch(
        &self,
        texts: &[String],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encs = self
            .tokenizer
            .encode_batch_fast(inputs, add_special_tokens)
            .map_err(|e| self.err(format!("batch encode failed: {e}")))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Decodes ids to text; `skip_special_tokens` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(format!("decode failed: {e}")))
    }

    /// The chat template, if the tokenizer has one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Replaces the chat template (e.g. with [`ChatTemplate::plain`]).
    pub fn set_template(&mut self, template: Option<ChatTemplate>) {
        self.template = template;
    }

    /// Renders `messages` with the chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(DataError::Template(format!(
                "{}: the tokenizer has no chat template",
                self.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "<tokenizer>".into())
            ))),
        }
    }

    /// Renders `messages` and encodes the text without adding special
    /// tokens again (transformers semantics: the template has them).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// The beginning-of-sequence id, if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// All ids that stop generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The padding id, if any.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Vocabulary size including added tokens (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The id of `token` (a vocabulary or added token), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The token string of `id`, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny word-level tokenizer.json with two special tokens.
    fn write_dir(dir: &Path, generation_config: Option<&str>) {
        let tok = r###"{
          "version": "1.0",
          "truncation": null, "padding": null,
          "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
          "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
          "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4, "user": 5, ":": 6}, "unk_token": "<unk>"}
        }"###;
        std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.role }} : {{ m.content }}{{ eos_token }}{% endfor %}"}"#,
        )
        .unwrap();
        if let Some(g) = generation_config {
            std::fs::write(dir.join("generation_config.json"), g).unwrap();
        }
    }

    #[test]
    fn from_dir_encode_decode_and_chat() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(
            dir.path(),
            Some(r#"{"eos_token_id": [6, 1], "bos_token_id": 0}"#),
        );
        let t = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.encode("hello world", false).unwrap(), vec![3, 4]);
        assert_eq!(t.encode("hello world", true).unwrap(), vec![0, 3, 4]);
        assert_eq!(t.encode("hello zzz", false).unwrap(), vec![3, 2]);
        let batch = t
            .encode_batch(&["world".to_string(), "hello hello".to_string()], false)
            .unwrap();
        assert_eq!(batch, vec![vec![4], vec![3, 3]]);
        assert_eq!(t.decode(&[0, 3, 4, 1], true).unwrap(), "hello world");
        assert_eq!(t.bos_token_id(), Some(0));
        assert_eq!(t.eos_token_ids(), &[6, 1]);
        assert_eq!(t.vocab_size(), 7);
        assert_eq!(t.token_to_id("world"), Some(4));
        // the template writes <s> itself; encode_chat must not add a second one
        let ids = t.encode_chat(&[Message::user("hello")], false).unwrap();
        assert_eq!(ids, vec![0, 5, 6, 3, 1]);
    }

    #[test]
    fn eos_from_tokenizer_config_without_generation_config() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), None);
        let t = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.eos_token_ids(), &[1]);
        assert_eq!(t.pad_token_id(), None);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        write_dir(dir.path(), Some(r#"{"eos_token_id": "x"}"#));
        let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("eos_token_id"),
            "{err}"
        );
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn no_template_is_an_error_for_chat() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), None);
        let mut t = TextTokenizer::from_dir(dir.path()).unwrap();
        t.set_template(None);
        assert!(t
            .apply_chat_template(&[Message::user("hello")], true)
            .is_err());
        t.set_template(Some(
            ChatTemplate::plain("user : {} :", Some("</s>".into())).unwrap(),
        ));
        assert_eq!(
            t.encode_chat(&[Message::user("hello")], true).unwrap(),
            vec![5, 6, 3, 6]
        );
    }
}
