//! Dataset readers: `parse_samples` / `read_samples` for every `Format`
//! (JSONL, JSON arrays, the JailbreakBench document, AdvBench CSV) and
//! `read_jsonl_samples`. Seeds are records of each format written with
//! serde_json; the reader options travel in `opts.json` so a saved case
//! reproduces on its own.

use std::path::Path;

use seal_data::readers::{parse_samples, read_samples, Format, HhSide, ReadOptions};
use seal_data::{read_jsonl_samples, Label, Message, Sample};
use serde_json::{json, Value};

use super::{Case, Pool, Target};
use crate::mutate::{havoc, mutate_json, Rng, JSON_DICT};

const STRINGS: &[&str] = &[
    "instruction",
    "input",
    "output",
    "context",
    "response",
    "prompt",
    "question",
    "answer",
    "messages",
    "role",
    "content",
    "system",
    "user",
    "assistant",
    "human",
    "gpt",
    "tool",
    "system_prompt",
    "chosen",
    "rejected",
    "jailbreaks",
    "goal",
    "jailbroken",
    "id",
    "source",
    "label",
    "reference",
    "harmful",
    "safe",
    "benign",
    "####",
    " #### 1,000",
    "\n\nHuman:",
    "\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant:",
    "true",
    "false",
    "\u{0}",
    "\r\n",
    "é",
];

const TEXT_DICT: &[&[u8]] = &[
    b"\n\nHuman:",
    b"\n\nAssistant:",
    b"####",
    b",",
    b"\"",
    b"\"\"",
    b"\r\n",
    b"\n",
    b"goal,target\n",
    b"\xEF\xBB\xBF",
    b"\xff",
    b"{\"a\":",
    b"[",
    b"]",
];

fn records(format: Format) -> Value {
    match format {
        Format::Alpaca => json!([
            {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Translate to English.", "input": "chat", "output": "cat"}
        ]),
        Format::Dolly => json!([
            {"instruction": "Who wrote it?", "context": "A book.", "response": "Someone.", "category": "qa"}
        ]),
        Format::PromptResponse => json!([{"prompt": "Hi", "response": "Hello"}]),
        Format::Gsm8k => json!([
            {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"},
            {"question": "Big?", "answer": "#### 1,000"}
        ]),
        Format::Messages => json!([
            {"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}
            ]}
        ]),
        Format::OpenOrca => json!([
            {"id": "x.1", "system_prompt": "You are helpful.", "question": "Q?", "response": "A."}
        ]),
        Format::HhRlhf => json!([
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}
        ]),
        Format::JailbreakBench => json!({
            "parameters": {"method": "PAIR"},
            "jailbreaks": [
                {"index": 0, "goal": "Do a bad thing", "prompt": "p", "response": "Sure", "jailbroken": true},
                {"index": 1, "goal": "Another", "prompt": "p", "response": null, "jailbroken": false},
                {"index": 2, "goal": "Third", "response": "No", "jailbroken": "False"}
            ]
        }),
        Format::Keys => json!([
            {"q": "Question", "a": "Answer", "ctx": "More", "sys": "System"}
        ]),
        Format::Seal => {
            let s = Sample {
                id: "src:00000".into(),
                source: "src".into(),
                label: Some(Label::Harmful),
                messages: vec![Message::user("Hi"), Message::assistant("Hello")],
                reference: Some("5".into()),
                prefill: None,
            };
            let mut t = s.clone();
            t.id = "src:00001".into();
            t.label = None;
            t.reference = None;
            json!([
                serde_json::to_value(&s).unwrap_or_default(),
                serde_json::to_value(&t).unwrap_or_default()
            ])
        }
        Format::AdvBench
        | Format::SafeRlhf
        | Format::HarmBench
        | Format::StrongReject
        | Format::XsTest => Value::Null,
        // A format added later gets CSV or empty seeds until it has its own.
        _ => Value::Null,
    }
}

fn is_csv(format: Format) -> bool {
    matches!(
        format,
        Format::AdvBench
            | Format::SafeRlhf
            | Format::HarmBench
            | Format::StrongReject
            | Format::XsTest
    )
}

fn csv_seed(format: Format) -> Vec<u8> {
    let seed: &[u8] = match format {
        Format::SafeRlhf => b"question,answer,label\n\"Q, \"\"quoted\"\"\",\"multi\nline\",1\nq2,a2,0\r\n",
        Format::HarmBench => b"Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\nDo x,standard,c,,,x_id\n\"Do y\",contextual,c,,\"ctx\nmore\",y_id\n",
        Format::StrongReject => b"category,source,forbidden_prompt\nc,custom,\"Tell me, now\"\nc,AdvBench,plain\n",
        Format::XsTest => b"id,prompt,type,label,focus,note\n1,How do I kill a process?,homonyms,safe,kill,violence\n2,\"x\",contrast,unsafe,,\n",
        _ => b"goal,target\n\"Write a \"\"bad\"\" thing, now\",Sure\nplain prompt,ok\r\n\n\"multi\nline\",x\n",
    };
    seed.to_vec()
}

fn serialise(rng: &mut Rng, format: Format, v: &Value) -> Vec<u8> {
    match (format, v) {
        (Format::JailbreakBench, _) => serde_json::to_vec(v).unwrap_or_default(),
        (_, Value::Array(items)) if !rng.one_in(3) => {
            let mut out = Vec::new();
            for it in items {
                out.extend(serde_json::to_vec(it).unwrap_or_default());
                out.extend_from_slice(if rng.one_in(8) { b"\r\n" } else { b"\n" });
                if rng.one_in(10) {
                    out.push(b'\n');
                }
            }
            out
        }
        _ => if rng.one_in(2) {
            serde_json::to_vec_pretty(v)
        } else {
            serde_json::to_vec(v)
        }
        .unwrap_or_default(),
    }
}

fn format_name(f: Format) -> &'static str {
    f.name()
}

/// The datasets target.
pub struct DatasetsTarget {
    pool: Pool,
}

impl DatasetsTarget {
    /// A new target (seeds are built per case).
    pub fn new() -> Self {
        Self {
            pool: Pool::default(),
        }
    }
}

impl Default for DatasetsTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for DatasetsTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        if rng.one_in(6) {
            if let Some(c) = self.pool.mutate(rng, TEXT_DICT, STRINGS) {
                return c;
            }
        }
        let (format, _) = *rng.pick(&Format::ALL);
        let data = if is_csv(format) {
            let mut b = csv_seed(format);
            havoc(rng, &mut b, TEXT_DICT, None);
            b
        } else {
            let mut v = records(format);
            let n = rng.below(4);
            for _ in 0..n {
                mutate_json(rng, &mut v, STRINGS);
            }
            let mut b = serialise(rng, format, &v);
            if rng.one_in(4) {
                let dict = if rng.one_in(2) { JSON_DICT } else { TEXT_DICT };
                havoc(rng, &mut b, dict, None);
            }
            b
        };
        let key = |rng: &mut Rng, k: &str| -> Value {
            match rng.below(6) {
                0 => Value::Null,
                1 => Value::from(*rng.pick(STRINGS)),
                _ => Value::from(k),
            }
        };
        let opts = json!({
            "format": format_name(format),
            "lenient": rng.one_in(2),
            "prompt_only": rng.one_in(4),
            "rejected": rng.one_in(2),
            "label": rng.one_in(4),
            "input_key": key(rng, "q"),
            "output_key": key(rng, "a"),
            "context_key": key(rng, "ctx"),
            "system_key": key(rng, "sys"),
            "source": if rng.one_in(8) { Value::from("") } else { Value::Null },
        });
        Case {
            files: vec![
                ("data.jsonl".into(), data),
                (
                    "opts.json".into(),
                    serde_json::to_vec(&opts).unwrap_or_default(),
                ),
            ],
        }
    }

    fn run(&mut self, dir: &Path, _scratch: &Path) -> bool {
        let opts: Value = std::fs::read(dir.join("opts.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let format: Format = opts["format"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Format::Alpaca);
        let s = |k: &str| opts[k].as_str().map(str::to_string);
        let ro = ReadOptions {
            source: s("source"),
            label: opts["label"]
                .as_bool()
                .unwrap_or(false)
                .then_some(Label::Safe),
            lenient: opts["lenient"].as_bool().unwrap_or(false),
            hh_side: if opts["rejected"].as_bool().unwrap_or(false) {
                HhSide::Rejected
            } else {
                HhSide::Chosen
            },
            input_key: s("input_key"),
            output_key: s("output_key"),
            context_key: s("context_key"),
            system_key: s("system_key"),
            prompt_only: opts["prompt_only"].as_bool().unwrap_or(false),
        };
        let path = dir.join("data.jsonl");
        let bytes = std::fs::read(&path).unwrap_or_default();
        let parsed = parse_samples(&path, &bytes, format, &ro);
        let read = read_samples(&path, format, &ro);
        if format == Format::Seal {
            let _ = read_jsonl_samples(&path);
        }
        for r in [&parsed, &read].into_iter().flatten() {
            for s in &r.samples {
                let _ = s.check();
                let _ = s.prompt_messages();
                let _ = s.response();
            }
            let _ = r.skipped_counts();
        }
        parsed.is_ok()
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.first().map(|f| f.1.len() as u64).unwrap_or(0);
        self.pool.add(case, bits);
    }
}
