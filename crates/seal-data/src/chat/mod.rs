//! Conversations and Hugging Face chat templates.
//!
//! [`ChatTemplate`] renders a conversation the way transformers'
//! `tokenizer.apply_chat_template(..., tokenize=False)` does. transformers
//! compiles templates with Jinja2 in a sandboxed environment configured with
//! `trim_blocks=True`, `lstrip_blocks=True` and the `loopcontrols` extension,
//! adds the `raise_exception` and `strftime_now` globals and a `tojson` filter
//! that is `json.dumps(..., ensure_ascii=False)`, and passes the conversation
//! as `messages` together with `add_generation_prompt`, `tools=None`,
//! `documents=None` and the tokenizer's special tokens (`bos_token`,
//! `eos_token`, ...). This module sets up minijinja the same way:
//!
//! * trim/lstrip blocks, no trailing newline kept (Jinja2's default);
//! * `{% break %}` / `{% continue %}` (minijinja's `loop_controls`);
//! * Python string/list/dict methods (`.strip()`, `.startswith()`,
//!   `.items()`, ...) via `minijinja_contrib::pycompat`;
//! * a `tojson` filter that writes JSON exactly as Python's `json.dumps`
//!   (separators `", "` / `": "`, `indent`, `sort_keys`, `ensure_ascii`);
//! * `raise_exception(message)` that fails the render with that message;
//! * `strftime_now(format)` (UTC; `%Y %y %m %d %e %b %B %a %A %H %I %M %S %p %j %%`);
//! * `{% generation %}` / `{% endgeneration %}` (transformers'
//!   assistant-mask extension) are accepted and render their body.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

mod python;
#[cfg(test)]
use python::format_utc;
use python::{raise_exception, strftime_now, tojson_filter};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A system turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Name under which the template is compiled inside its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one render may execute. Real templates need a few dozen
/// per message; a template from a downloaded `tokenizer_config.json` with
/// nested `range(100000)` loops would otherwise never finish.
const RENDER_FUEL: u64 = 20_000_000;

/// A template error with minijinja's debug context (the offending source
/// line), or without it when building that context fails: minijinja's
/// line arithmetic can panic on odd sources, and an error message must
/// never crash the program.
fn describe(e: &JinjaError) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| format!("{e:#}")))
        .unwrap_or_else(|_| e.to_string())
}

/// The most items a template may print as one value.
const MAX_PRINTED_ITEMS: usize = 100_000;
/// Largest rendered text: fuel does not count work inside one expression
/// (`{{ messages * 1000000 }}` prints tens of MB).
const MAX_RENDER_BYTES: usize = 16 << 20;
/// Largest `indent` / `tojson(indent=...)` width: the indentation is
/// allocated up front, so `indent(1099511627776)` would abort the process.
const MAX_INDENT: usize = 4096;

/// A compiled Hugging Face (Jinja) chat template plus the special-token
/// strings templates refer to (`bos_token`, `eos_token`, ...).
///
/// Cloning is cheap (the compiled environment is shared).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Further special tokens passed to the template (`unk_token`, `pad_token`).
    extra_tokens: BTreeMap<String, String>,
    /// The file the template came from, for error messages.
    origin: Option<PathBuf>,
    env: Arc<Environment<'static>>,
}

impl ChatTemplate {
    /// Compiles a template from its Jinja `source`; `bos_token` and
    /// `eos_token` are the strings the template sees under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        Self::build(source.into(), bos_token, eos_token, BTreeMap::new(), None)
    }

    fn build(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
        extra_tokens: BTreeMap<String, String>,
        origin: Option<PathBuf>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_fuel(Some(RENDER_FUEL));
        // A value printed whole (`{{ messages * 10**10 }}`) is formatted item
        // by item outside the fuel budget: refuse huge ones before printing.
        env.set_formatter(|out, state, value| {
            let collection = matches!(
                value.kind(),
                ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
            );
            // Strings (a long message) print in one piece and are fine.
            if collection && value.len().is_some_and(|n| n > MAX_PRINTED_ITEMS) {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "printing a value of {} items (more than {MAX_PRINTED_ITEMS})",
                        value.len().unwrap_or_default()
                    ),
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_filter("indent", indent_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let compiled = rewrite_generation_tags(&source);
        env.add_template_owned(TEMPLATE_NAME, compiled)
            .map_err(|e| {
                DataError::Template(format!(
                    "{}: cannot compile: {}",
                    origin_label(origin.as_deref()),
                    describe(&e)
                ))
            })?;
        Ok(Self {
            source,
            bos_token,
            eos_token,
            extra_tokens,
            origin,
            env: Arc::new(env),
        })
    }

    /// Reads `chat_template`, `bos_token`, `eos_token` (and `unk_token`,
    /// `pad_token`) from a Hugging Face `tokenizer_config.json`.
    ///
    /// `chat_template` may be a string or a list of `{name, template}`
    /// objects (the one named `default` is taken). When the config has no
    /// template, a sibling `chat_template.jinja` (as transformers ≥ 4.43
    /// saves it) is used. Returns `Ok(None)` when there is no template at all.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DataError::Json {
                path: path.to_path_buf(),
                line: None,
                message: e.to_string(),
            })?;
        let field_err = |field: &str, message: &str| DataError::Field {
            path: path.to_path_buf(),
            line: None,
            field: field.to_string(),
            message: message.to_string(),
        };
        let (source, origin) =
            match config.get("chat_template") {
                None | Some(serde_json::Value::Null) => {
                    let sibling = path.with_file_name("chat_template.jinja");
                    if sibling.is_file() {
                        let source =
                            std::fs::read_to_string(&sibling).map_err(|source| DataError::Io {
                                path: sibling.clone(),
                                source,
                            })?;
                        (source, sibling)
                    } else {
                        return Ok(None);
                    }
                }
                Some(serde_json::Value::String(s)) => (s.clone(), path.to_path_buf()),
                Some(serde_json::Value::Array(list)) => {
                    let mut found = None;
                    for entry in list {
                        let name = entry.get("name").and_then(|v| v.as_str());
                        let template = entry.get("template").and_then(|v| v.as_str());
                        match (name, template) {
                            (Some("default"), Some(t)) => found = Some(t.to_string()),
                            (Some(_), Some(_)) => {}
                            _ => return Err(field_err(
                                "chat_template",
                                "list entries must be objects with string `name` and `template`",
                            )),
                        }
                    }
                    match found {
                        Some(t) => (t, path.to_path_buf()),
                        None => {
                            return Err(field_err(
                                "chat_template",
                                "list of templates has no entry named `default`",
                            ))
                        }
                    }
                }
                Some(_) => {
                    return Err(field_err(
                        "chat_template",
                        "expected a string or a list of templates",
                    ))
                }
            };
        let bos_token = special_token_string(&config, "bos_token", path)?;
        let eos_token = special_token_string(&config, "eos_token", path)?;
        let mut extra = BTreeMap::new();
        for key in ["unk_token", "pad_token"] {
            if let Some(t) = special_token_string(&config, key, path)? {
                extra.insert(key.to_string(), t);
            }
        }
        Self::build(source, bos_token, eos_token, extra, Some(origin)).map(Some)
    }

    /// The plain (template-free) prompt format of the official SEAL code.
    ///
    /// `prompt_format` contains exactly one `{}`, replaced by a user turn's
    /// content (e.g. `"Human: {}\nAssistant: "`). Assistant turns render as
    /// their content followed by `eos_token` when given; system turns render
    /// as their content followed by a newline. The format already ends with
    /// the cue for the answer, so `add_generation_prompt` adds nothing.
    pub fn plain(prompt_format: &str, eos_token: Option<String>) -> Result<Self> {
        let mut parts = prompt_format.split("{}");
        let (prefix, suffix) = match (parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(s), None) => (p, s),
            _ => {
                return Err(DataError::Template(format!(
                    "plain prompt format {prompt_format:?} must contain exactly one `{{}}`"
                )))
            }
        };
        // JSON string literals are valid Jinja string literals (minijinja
        // unescapes \n, \t, \", \\ and \uXXXX).
        let lit = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let source = format!(
            "{{% for message in messages %}}\
             {{% if message['role'] == 'user' %}}{{{{ {p} + message['content'] + {s} }}}}\
             {{% elif message['role'] == 'assistant' %}}{{{{ message['content'] }}}}{{% if eos_token %}}{{{{ eos_token }}}}{{% endif %}}\
             {{% else %}}{{{{ message['content'] + {nl} }}}}\
             {{% endif %}}{{% endfor %}}",
            p = lit(prefix),
            s = lit(suffix),
            nl = lit("\n"),
        );
        Self::new(source, None, eos_token)
    }

    /// Renders `messages`; with `add_generation_prompt` the template appends
    /// the cue that starts an assistant turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| {
            DataError::Template(format!(
                "{}: {}",
                origin_label(self.origin.as_deref()),
                describe(&e)
            ))
        })?;
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
        ];
        if let Some(t) = &self.bos_token {
            ctx.push(("bos_token".into(), Value::from(t.as_str())));
        }
        if let Some(t) = &self.eos_token {
            ctx.push(("eos_token".into(), Value::from(t.as_str())));
        }
        for (k, v) in &self.extra_tokens {
            ctx.push((k.clone(), Value::from(v.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        // minijinja panics on a few odd constructs (`loop.cycle()` with no
        // arguments divides by zero); a template from a downloaded file must
        // give an error, not abort the run.
        let mut out = LimitedWriter(Vec::new());
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            template.render_captured_to(ctx, &mut out).map(|_| ())
        }))
        .map_err(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            DataError::Template(format!(
                "{}: render failed: the template engine crashed ({what})",
                origin_label(self.origin.as_deref())
            ))
        })?;
        rendered.map_err(|e| {
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("").to_string(),
                _ => describe(&e),
            };
            DataError::Template(format!(
                "{}: render failed: {detail}",
                origin_label(self.origin.as_deref())
            ))
        })?;
        // minijinja writes whole `str` pieces, so the bytes are UTF-8
        String::from_utf8(out.0).map_err(|e| {
            DataError::Template(format!(
                "{}: render failed: {e}",
                origin_label(self.origin.as_deref())
            ))
        })
    }

    /// The template's Jinja source, as given (before any internal rewriting).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` string the template sees.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The `eos_token` string the template sees.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The file the template was read from, if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }
}

fn origin_label(origin: Option<&Path>) -> String {
    origin
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<inline template>".to_string())
}

/// A special token in tokenizer_config.json is a string, an AddedToken
/// object `{"content": ...}`, or null.
fn special_token_string(
    config: &serde_json::Value,
    key: &str,
    path: &Path,
) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(obj @ serde_json::Value::Object(_)) => match obj.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(DataError::Field {
                path: path.to_path_buf(),
                line: None,
                field: key.to_string(),
                message: "token object has no string `content`".into(),
            }),
        },
        Some(_) => Err(DataError::Field {
            path: path.to_path_buf(),
            line: None,
            field: key.to_string(),
            message: "expected a string, a token object or null".into(),
        }),
    }
}

/// Collects rendered text, failing past [`MAX_RENDER_BYTES`].
struct LimitedWriter(Vec<u8>);

impl std::io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDER_BYTES {
            return Err(std::io::Error::other(format!(
                "the rendered text exceeds {} MiB",
                MAX_RENDER_BYTES >> 20
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// minijinja's `indent`, with the width bounded by [`MAX_INDENT`].
fn indent_filter(
    value: minijinja::value::StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let w = match width {
        Some(w) => Some(w),
        None => kwargs.peek::<Option<usize>>("width")?,
    };
    if let Some(w) = w.filter(|&w| w > MAX_INDENT) {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("indent width {w} exceeds {MAX_INDENT}"),
        ));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` tags
/// into `{% if true %}` / `{% endif %}`, keeping whitespace-control markers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // `%}` is searched after the `{%`: in `{%}` they overlap.
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_inserts_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, None, None).unwrap();
        let s = t.render(&[Message::user("hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t
            .render(
                &[
                    Message::system("Be brief."),
                    Message::user("hi"),
                    Message::assistant("Hello!"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(
            t.render(&[Message::user("a"), Message::user("b")], false)
                .unwrap(),
            "[a]\n[b]\n"
        );
    }

    #[test]
    fn raise_exception_fails_with_message() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let err = t
            .render(&[Message::assistant("x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Conversations must start with a user turn"),
            "{err}"
        );
        assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "ok");
    }

    #[test]
    fn pycompat_methods_loop_controls_and_tokens() {
        let src = "{{ bos_token }}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.content.startswith('skip') %}{% continue %}{% endif %}{{ m.content.strip().upper() }}|{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())).unwrap();
        let msgs = [
            Message::user("  a "),
            Message::user("skip me"),
            Message::user("c"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "<s>A|</s>");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages | tojson }}", None, None).unwrap();
        assert_eq!(
            t.render(&[Message::user("café \"q\" <b>\n")], false)
                .unwrap(),
            r#"[{"role": "user", "content": "café \"q\" <b>\n"}]"#
        );
        let t = ChatTemplate::new("{{ messages[0] | tojson(indent=2) }}", None, None).unwrap();
        assert_eq!(
            t.render(&[Message::user("x")], false).unwrap(),
            "{\n  \"role\": \"user\",\n  \"content\": \"x\"\n}"
        );
        let t = ChatTemplate::new(
            "{{ {'b': 1.5, 'a': [1, none, true]} | tojson(sort_keys=true) }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, null, true], "b": 1.5}"#
        );
    }

    #[test]
    fn generation_tags_are_accepted() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%}{{ m.content }}{%- endgeneration -%}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(
            t.render(&[Message::user("u"), Message::assistant("A")], false)
                .unwrap(),
            "A"
        );
        assert_eq!(t.source(), src);
    }

    #[test]
    fn plain_seal_format() {
        let t = ChatTemplate::plain("Human: {}\nAssistant: ", Some("</s>".into())).unwrap();
        let s = t
            .render(
                &[Message::user("Why \"x\"?"), Message::assistant("Because.")],
                false,
            )
            .unwrap();
        assert_eq!(s, "Human: Why \"x\"?\nAssistant: Because.</s>");
        assert_eq!(
            t.render(&[Message::user("q")], true).unwrap(),
            "Human: q\nAssistant: "
        );
        assert!(ChatTemplate::plain("no placeholder", None).is_err());
        assert!(ChatTemplate::plain("{} and {}", None).is_err());
    }

    #[test]
    fn compile_error_is_reported() {
        let err = ChatTemplate::new("{% for x in %}", None, None).unwrap_err();
        assert!(matches!(err, DataError::Template(_)), "{err}");
    }

    #[test]
    fn odd_templates_are_errors_not_panics() {
        // `{%}`: the `%}` overlapping the `{%` made the generation-tag
        // rewriter slice backwards.
        assert!(ChatTemplate::new("{%}{{ 1 }}", None, None).is_err());
        assert_eq!(rewrite_generation_tags("a{%}b"), "a{%}b");
        // minijinja divides by zero in `loop.cycle()` without arguments.
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ loop.cycle() }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let e = t.render(&[Message::user("hi")], false).unwrap_err();
        assert!(e.to_string().contains("render failed"), "{e}");
    }

    #[test]
    fn huge_outputs_and_indents_are_errors() {
        // `indent(2^40)` allocated 1 TiB up front and aborted the process,
        // `tojson(indent=99999999)` several GB; a repeated list printed
        // without bound.
        for src in [
            "{{ 'a' | indent(1099511627776) }}",
            "{{ 'a' | indent(width=1099511627776) }}",
            "{{ messages * 1000000 }}",
            "{{ messages | tojson(indent=99999999) }}",
        ] {
            let t = ChatTemplate::new(src, None, None).unwrap();
            let e = t.render(&[Message::user("hi")], false).unwrap_err();
            assert!(e.to_string().contains("render failed"), "{src}: {e}");
        }
        let t = ChatTemplate::new("{{ 'a\nb' | indent(2) }}", None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "a\n  b");
    }

    #[test]
    fn runaway_template_runs_out_of_fuel() {
        // 10^10 loop iterations: without a fuel limit this never returns.
        let t = ChatTemplate::new(
            "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let start = std::time::Instant::now();
        let e = t.render(&[Message::user("hi")], false).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        assert!(start.elapsed().as_secs() < 60);
    }

    #[test]
    fn from_tokenizer_config_variants() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &p,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}{{ pad_token }}"}],
                "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": "<pad>"}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>D</s><pad>");
        assert_eq!(t.bos_token(), Some("<s>"));

        std::fs::write(&p, r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(ChatTemplate::from_tokenizer_config(&p).unwrap().is_none());
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let t = ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "J</s>");

        std::fs::write(&p, r#"{"chat_template": 3}"#).unwrap();
        let err = ChatTemplate::from_tokenizer_config(&p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chat_template") && err.contains("tokenizer_config.json"),
            "{err}"
        );
        let missing = dir.path().join("nope.json");
        let err = ChatTemplate::from_tokenizer_config(&missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.json"), "{err}");
    }

    #[test]
    fn utc_formatting() {
        // 2024-07-26 13:05:09 UTC was a Friday, day 208 of a leap year
        assert_eq!(
            format_utc(
                1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9,
                "%d %b %Y %A %H:%M:%S %j %%"
            ),
            "26 Jul 2024 Friday 13:05:09 208 %"
        );
    }

    /// Templates exercising the Jinja features chat templates use.
    const REFERENCE_TEMPLATES: [&str; 4] = [
        SMOLLM2,
        "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] | trim %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if system_message %}\n<<SYS>>{{ system_message }}<</SYS>>\n{%- endif %}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('Conversation roles must alternate user/assistant') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n[INST] {{ message['content'].strip() }} [/INST]\n    {%- else %}\n {{ message['content'] | trim }}{{ eos_token }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n {% endif %}\n",
        "{% for message in messages %}\n    {% if message.role == 'system' %}\nSystem: {{ message.content }}\n    {% elif message.role == 'user' %}\nUser: {{ message.content }}\n    {% else %}\nAssistant: {{ message.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nAssistant:\n{% endif %}\n",
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.content.startswith('#') %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m.role.upper() }}|{{ m.content.replace('a', 'A').split(' ') | join(',') }}|{{ m | tojson }}|{{ m.content.lstrip() | length }}|{% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %}{{ loop.last }}\n{% if ns.n >= 3 %}{% break %}{% endif %}{% endfor %}{{ messages | tojson(indent=2) }}{{ {'x': [1, 2.5, none, true, 'é\"\\n']} | tojson }}{{ messages[-1].content.endswith('?') }}{{ messages | length }}",
    ];

    fn reference_conversations() -> Vec<(Vec<Message>, bool)> {
        vec![
            (vec![Message::user("hi")], true),
            (
                vec![
                    Message::system("  Be brief.\n"),
                    Message::user(" What is 2+2?  "),
                    Message::assistant("4 "),
                    Message::user("And café \"naïve\" 日本 🦀?"),
                ],
                false,
            ),
            (
                vec![
                    Message::user("# hidden\ta"),
                    Message::user("a b  c"),
                    Message::assistant("line1\nline2\n"),
                    Message::user("x"),
                    Message::user("why?"),
                ],
                true,
            ),
            // roles do not alternate: the second template raises
            (
                vec![Message::assistant("first"), Message::assistant("second")],
                false,
            ),
        ]
    }

    /// Renders every template × conversation with transformers (via
    /// scripts/render_chat_reference.py) and compares. Skips when the venv is
    /// missing; the reference is cached under $SEAL_CACHE_DIR.
    #[test]
    fn matches_transformers_rendering() {
        use sha2::Digest;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = std::env::var_os("SEAL_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv"));
        let python = venv.join("bin/python");
        if !python.is_file() {
            eprintln!(
                "skipping: no Python environment at {} (run `cargo xtask setup`)",
                venv.display()
            );
            return;
        }
        let mut cases: Vec<(&str, Vec<Message>, bool)> = Vec::new();
        for template in REFERENCE_TEMPLATES {
            for (messages, add_generation_prompt) in reference_conversations() {
                cases.push((template, messages, add_generation_prompt));
            }
        }
        // Serialize messages from the structs so keys keep their order
        // (role, content), as in real datasets; Python's dicts keep it too.
        let encoded: Vec<String> = cases
            .iter()
            .map(|(template, messages, gen)| {
                format!(
                    r#"{{"template": {}, "messages": {}, "add_generation_prompt": {gen}, "bos_token": "<s>", "eos_token": "</s>"}}"#,
                    serde_json::to_string(template).unwrap(),
                    serde_json::to_string(messages).unwrap()
                )
            })
            .collect();
        let cases_json = format!("[{}]", encoded.join(", "));
        let script = root.join("scripts/render_chat_reference.py");
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&script).unwrap());
        h.update(cases_json.as_bytes());
        let key: String = h
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let cache = std::env::var_os("SEAL_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/seal-cache"));
        std::fs::create_dir_all(&cache).unwrap();
        let out = cache.join(format!("chat-reference-{key}.json"));
        if !out.is_file() {
            let tmp = tempfile::tempdir().unwrap();
            let cases_path = tmp.path().join("cases.json");
            std::fs::write(&cases_path, &cases_json).unwrap();
            let status = std::process::Command::new(&python)
                .arg(&script)
                .arg("--cases")
                .arg(&cases_path)
                .arg("--out")
                .arg(&out)
                .status()
                .unwrap();
            assert!(status.success(), "{} failed", script.display());
        }
        let reference: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(reference.len(), cases.len());
        let mut compared = 0;
        let mut raised = 0;
        for ((source, messages, gen), expected) in cases.iter().zip(&reference) {
            let template =
                ChatTemplate::new(*source, Some("<s>".into()), Some("</s>".into())).unwrap();
            let ours = template.render(messages, *gen);
            match (expected.get("rendered").and_then(|v| v.as_str()), ours) {
                (Some(want), Ok(got)) => {
                    assert_eq!(got, want, "template {source:?}\nmessages {messages:?}");
                    compared += 1;
                }
                (None, Err(e)) => {
                    let msg = expected["error"].as_str().unwrap();
                    assert!(
                        e.to_string().contains(msg),
                        "ours: {e}\ntransformers: {msg}"
                    );
                    raised += 1;
                }
                (want, got) => panic!("transformers: {want:?}, ours: {got:?}, template {source:?}"),
            }
        }
        // the alternation check of the second template fires for conversations 3 and 4
        assert_eq!((compared, raised), (cases.len() - 2, 2));
    }

    #[test]
    fn printing_a_huge_repeated_list_is_an_error_not_a_hang() {
        let t = ChatTemplate::new("{{ messages * 10**10 }}", None, None).unwrap();
        let start = std::time::Instant::now();
        let err = t.render(&[Message::user("hi")], false).unwrap_err();
        assert!(err.to_string().contains("items"), "{err}");
        assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    }

    #[test]
    fn a_syntax_error_that_trips_minijinja_line_arithmetic_is_an_error() {
        // Found by the fuzzer: formatting this compile error's source
        // context overflowed inside minijinja.
        let src = "{{ bos_token }}{% for in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% break %}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{% filter upper %}{{ bos_token }}{% endfilter %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
        let result = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()))
            .and_then(|t| t.render(&[Message::user("hi")], true));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("render failed"), "{err}");
    }

    #[test]
    fn a_long_message_still_renders() {
        let t = ChatTemplate::new("{{ messages[0]['content'] }}", None, None).unwrap();
        let long = "a".repeat(200_000);
        assert_eq!(
            t.render(&[Message::user(long.clone())], false).unwrap(),
            long
        );
    }
}
