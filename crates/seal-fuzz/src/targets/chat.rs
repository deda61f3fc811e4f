//! Chat templates: `ChatTemplate::from_tokenizer_config` on a mutated
//! `tokenizer_config.json` (or a sibling `chat_template.jinja`), rendered
//! over mutated messages, and `ChatTemplate::plain`. Seeds are templates
//! in the styles of common models; mutations splice Jinja constructs that
//! stress loops, recursion, big strings and odd arguments.

use std::path::Path;

use seal_data::{ChatTemplate, Message};
use serde_json::{json, Value};

use super::{Case, Pool, Target};
use crate::mutate::{havoc, mutate_json, Rng, JSON_DICT};

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const FANCY: &str = "{%- set ns = namespace(sys='') -%}{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.sys = m.content -%}{%- endif -%}{%- endfor -%}Date: {{ strftime_now('%Y-%m-%d %H:%M') }}\n{{ messages | tojson(indent=2) }}{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content.strip() }}{% endgeneration %}{% elif loop.last %}{% break %}{% else %}<|{{ m.role }}|>{{ m['content'] | replace('a', 'b') }}{{ unk_token }}{{ pad_token }}{% endif %}{% endfor %}";

/// Jinja snippets spliced into templates.
const JINJA: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{% endfor %}",
    "{% endif %}",
    "{% for x in range(100000) %}{% for y in range(100000) %}{{ x }}{% endfor %}{% endfor %}",
    "{% for x in range(100000) %}{% for y in range(100000) %}{% for z in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{{ messages * 1000000 }}",
    // Printed whole, a huge repeated list is refused by the formatter.
    "{{ messages * 10**10 }}",
    "{{ (messages | tojson) * 100000000 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(1) }}",
    // Not here: `{% set ns.a = ns.a ~ ns.a %}` in a loop doubles a string
    // per iteration (a few instructions, so fuel does not stop it) until
    // memory runs out; minijinja has no size limit on `~`. Known, unfixed.
    "{{ raise_exception('boom') }}",
    "{{ raise_exception() }}",
    "{{ strftime_now('%Q%') }}",
    "{{ strftime_now(1) }}",
    "{{ messages | tojson(indent=99999999) }}",
    "{{ messages | tojson(indent=-1) }}",
    "{% break %}",
    "{% generation %}",
    "{% endgeneration %}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ 1 % 0 }}",
    "{{ (2 ** 62) * (2 ** 62) }}",
    "{{ 10 ** 10 ** 10 }}",
    "{{ 'a'.ljust(999999999) }}",
    "{{ 'x'.center(1099511627776) }}",
    "{{ 'abc'[::-1] }}",
    "{{ 'abc'[1:999999999999:0] }}",
    "{{ messages[99999999999999999999] }}",
    "{{ messages[-9223372036854775808] }}",
    "{{ range(-9223372036854775808, 9223372036854775807) | length }}",
    "{{ range(0, 10, 0) | list }}",
    "{{ [1, 2] | batch(0) | list }}",
    "{{ [1] | slice(0) | list }}",
    "{{ '%s %s' % (1,) }}",
    "{{ message.content.split('') | list }}",
    "{{ 'a'.replace('', 'bb', -1) }}",
    "{{ messages | map(attribute='content') | join('x' * 100000) }}",
    "{{ loop.cycle() }}",
    "{{ 'a' | indent(1099511627776) }}",
    "{{ 'abc' | truncate(-1) }}",
    "{{ 'abc' | wordwrap(0) }}",
    "{{ x.y.z }}",
    "{{ none.foo() }}",
    "{{ messages | sort(attribute='role') | first }}",
    "{{ messages | groupby('role') }}",
    "{% filter upper %}{{ bos_token }}{% endfilter %}",
    "{% include 'x' %}",
    "{% extends 'chat_template' %}",
    "{% import 'chat_template' as t %}",
];

const STRINGS: &[&str] = &[
    "chat_template",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "content",
    "name",
    "template",
    "default",
    "tool_use",
    "role",
    "system",
    "user",
    "assistant",
    "tool",
    "<s>",
    "</s>",
    "{{",
    "{%",
    "{{ bos_token }}",
    "{% for m in messages %}{{ m.content }}{% endfor %}",
];

/// The chat-template target.
pub struct ChatTarget {
    pool: Pool,
}

impl ChatTarget {
    /// A new target.
    pub fn new() -> Self {
        Self {
            pool: Pool::default(),
        }
    }
}

impl Default for ChatTarget {
    fn default() -> Self {
        Self::new()
    }
}

fn mutate_template(rng: &mut Rng, t: &str) -> String {
    let mut s = t.to_string();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        if rng.one_in(4) {
            let mut b = s.into_bytes();
            havoc(rng, &mut b, &[b"{{", b"}}", b"{%", b"%}", b"'", b"|"], None);
            s = String::from_utf8_lossy(&b).into_owned();
            continue;
        }
        let tok = rng.pick(JINJA);
        // Prefer block boundaries so the snippet stays syntactically valid.
        let cuts: Vec<usize> = s
            .match_indices("}}")
            .chain(s.match_indices("%}"))
            .map(|(i, _)| i + 2)
            .collect();
        let at = if !cuts.is_empty() && !rng.one_in(4) {
            *rng.pick(&cuts)
        } else {
            let mut at = rng.below(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        s.insert_str(at, tok);
    }
    s
}

fn seed_messages() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi {{ there }}"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"}
    ])
}

impl Target for ChatTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        if rng.one_in(6) {
            if let Some(c) = self.pool.mutate(rng, JSON_DICT, STRINGS) {
                return c;
            }
        }
        let template = *rng.pick(&[CHATML, LLAMA3, MISTRAL, FANCY]);
        let template = if rng.one_in(5) {
            template.to_string()
        } else {
            mutate_template(rng, template)
        };
        let sibling = rng.one_in(6);
        let mut config = json!({
            "add_bos_token": true,
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "__type": "AddedToken"},
            "unk_token": "<unk>",
            "pad_token": null,
            "model_max_length": 2048,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        if !sibling {
            config["chat_template"] = if rng.one_in(4) {
                json!([{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}])
            } else {
                Value::from(template.clone())
            };
        }
        let mut messages = seed_messages();
        let k = rng.below(4);
        for _ in 0..k {
            if rng.one_in(2) {
                mutate_json(rng, &mut config, STRINGS);
            } else {
                mutate_json(rng, &mut messages, STRINGS);
            }
        }
        let mut config_bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
        if rng.one_in(10) {
            havoc(rng, &mut config_bytes, JSON_DICT, None);
        }
        let opts = json!({
            "add_generation_prompt": rng.one_in(2),
            "plain": if rng.one_in(5) { Value::from(*rng.pick(&["Human: {}\nAssistant: ", "{}", "{}{}", "no braces", "\\u0000{}\u{fffd}"])) } else { Value::Null },
        });
        let mut files = vec![
            ("tokenizer_config.json".to_string(), config_bytes),
            (
                "messages.json".to_string(),
                serde_json::to_vec(&messages).unwrap_or_default(),
            ),
            (
                "opts.json".to_string(),
                serde_json::to_vec(&opts).unwrap_or_default(),
            ),
        ];
        if sibling {
            files.push(("chat_template.jinja".into(), template.into_bytes()));
        }
        Case { files }
    }

    fn run(&mut self, dir: &Path, _scratch: &Path) -> bool {
        let opts: Value = std::fs::read(dir.join("opts.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let gen = opts["add_generation_prompt"].as_bool().unwrap_or(false);
        let messages: Vec<Message> = std::fs::read(dir.join("messages.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| vec![Message::user("Hi"), Message::assistant("Hello")]);
        let mut ok = false;
        if let Ok(Some(t)) = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))
        {
            ok = t.render(&messages, gen).is_ok();
        }
        if let Some(fmt) = opts["plain"].as_str() {
            if let Ok(t) = ChatTemplate::plain(fmt, Some("</s>".into())) {
                let _ = t.render(&messages, gen);
            }
        }
        ok
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.first().map(|f| f.1.len() as u64).unwrap_or(0);
        self.pool.add(case, bits);
    }
}
