//! Readers for the dataset formats SEAL experiments use, all producing
//! [`Sample`]s with stable ids `<source>:<position>` (position = 0-based
//! index of the record in the original file, so ids never shift when other
//! records are skipped or filtered).
//!
//! | [`Format`] | layout |
//! |---|---|
//! | `alpaca` | JSON array or JSONL of `{instruction, input, output}` (Alpaca, SafeInstr) |
//! | `dolly` | `{instruction, context, response}` (databricks-dolly-15k) |
//! | `prompt-response` | `{prompt, response}` |
//! | `gsm8k` | `{question, answer}`; the number after `####` becomes the reference |
//! | `messages` | OpenAI style `{"messages": [{role, content}, ...]}` |
//! | `openorca` | `{system_prompt, question, response}` |
//! | `hh-rlhf` | `{chosen, rejected}` transcripts `"\n\nHuman: ...\n\nAssistant: ..."`; one side chosen by [`HhSide`] |
//! | `jailbreakbench` | JailbreakBench artifact `{"jailbreaks": [{goal, response, jailbroken, ...}]}`; `jailbroken` gives the label, null responses are skipped and counted |
//! | `advbench` | CSV, first column = harmful prompt (prompt-only samples) |
//! | `safe-rlhf` | CSV `question,answer,label` (JailbreakEval's Safe-RLHF mini): label 1 → `harmful`, 0 → `benign` |
//! | `harmbench` | HarmBench behaviours CSV (`Behavior`, `FunctionalCategory`, `ContextString`): prompt-only, `harmful`; the source gains the functional category (`harmbench/standard`), a context string goes before the behaviour |
//! | `strongreject` | StrongREJECT CSV (`forbidden_prompt`): prompt-only, `harmful` |
//! | `xstest` | XSTest prompts CSV (`prompt`, `label` ∈ safe/unsafe): prompt-only, `benign` / `harmful` |
//! | `keys` | any JSON/JSONL layout, with user-chosen keys (as the official `--input_key/--output_key`) |
//! | `seal` | this project's JSONL schema (see [`crate::sample`]) |
//!
//! Gzip files are read transparently. Bad input is an error naming file, line
//! and field; in lenient mode ([`ReadOptions::lenient`]) a bad record is
//! skipped instead, and every skip is counted in the [`ReadReport`]. Nothing
//! is dropped silently.

mod csv;
mod jailbreak;
mod json;
pub(crate) mod records;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::chat::{Message, Role};
use crate::error::{DataError, Result};
use crate::fsutil;
use crate::sample::{Label, Sample};
use records::Record;

/// A dataset file format (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `{instruction, input, output}`.
    Alpaca,
    /// `{instruction, context, response}`.
    Dolly,
    /// `{prompt, response}`.
    PromptResponse,
    /// `{question, answer}`.
    Gsm8k,
    /// `{"messages": [{role, content}, ...]}`.
    Messages,
    /// `{system_prompt, question, response}`.
    OpenOrca,
    /// `{chosen, rejected}` HH-RLHF transcripts.
    HhRlhf,
    /// JailbreakBench artifact JSON.
    JailbreakBench,
    /// AdvBench CSV.
    AdvBench,
    /// Safe-RLHF `question,answer,label` CSV.
    SafeRlhf,
    /// HarmBench behaviours CSV.
    HarmBench,
    /// StrongREJECT CSV.
    StrongReject,
    /// XSTest prompts CSV.
    XsTest,
    /// User-chosen keys ([`ReadOptions::input_key`], ...).
    Keys,
    /// This project's JSONL schema.
    Seal,
}

impl Format {
    /// All formats with their command-line names.
    pub const ALL: [(Format, &'static str); 15] = [
        (Format::Alpaca, "alpaca"),
        (Format::Dolly, "dolly"),
        (Format::PromptResponse, "prompt-response"),
        (Format::Gsm8k, "gsm8k"),
        (Format::Messages, "messages"),
        (Format::OpenOrca, "openorca"),
        (Format::HhRlhf, "hh-rlhf"),
        (Format::JailbreakBench, "jailbreakbench"),
        (Format::AdvBench, "advbench"),
        (Format::SafeRlhf, "safe-rlhf"),
        (Format::HarmBench, "harmbench"),
        (Format::StrongReject, "strongreject"),
        (Format::XsTest, "xstest"),
        (Format::Keys, "keys"),
        (Format::Seal, "seal"),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(f, _)| *f)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(_, n)| *n).collect();
                DataError::Invalid {
                    what: "format".into(),
                    message: format!("`{s}` (expected one of: {})", names.join(", ")),
                }
            })
    }
}

/// Which side of an HH-RLHF pair to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HhSide {
    /// The preferred (less harmful) transcript.
    #[default]
    Chosen,
    /// The dispreferred (more harmful) transcript.
    Rejected,
}

impl HhSide {
    /// The JSON key of this side.
    pub fn key(self) -> &'static str {
        match self {
            HhSide::Chosen => "chosen",
            HhSide::Rejected => "rejected",
        }
    }
}

impl FromStr for HhSide {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chosen" => Ok(HhSide::Chosen),
            "rejected" => Ok(HhSide::Rejected),
            other => Err(DataError::Invalid {
                what: "HH-RLHF side".into(),
                message: format!("`{other}` (expected chosen or rejected)"),
            }),
        }
    }
}

/// Options of [`read_samples`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Source tag and id prefix; by default the file name without its
    /// extensions (`train.jsonl.gz` → `train`).
    pub source: Option<String>,
    /// Label given to every sample. Defaults: `harmful` for AdvBench,
    /// the `jailbroken` verdict for JailbreakBench (`harmful` / `safe`),
    /// the file's own labels for `seal`, none otherwise.
    pub label: Option<Label>,
    /// Skip (and count) bad records instead of failing.
    pub lenient: bool,
    /// HH-RLHF side to read.
    pub hh_side: HhSide,
    /// For [`Format::Keys`]: the key of the user turn (required).
    pub input_key: Option<String>,
    /// For [`Format::Keys`]: the key of the response; none reads prompts only.
    pub output_key: Option<String>,
    /// For [`Format::Keys`]: an optional key appended to the instruction
    /// (like Alpaca's `input`).
    pub context_key: Option<String>,
    /// For [`Format::Keys`]: an optional key of a system prompt.
    pub system_key: Option<String>,
    /// Read prompts only: drop the response (it becomes the reference).
    pub prompt_only: bool,
}

/// A record that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line of the record, when known.
    pub line: Option<usize>,
    /// 0-based position of the record in the file.
    pub ordinal: usize,
    /// Short category (e.g. `null response`, `invalid record`).
    pub kind: String,
    /// Full explanation (for invalid records: the error, naming file, line
    /// and field).
    pub message: String,
}

/// What [`read_samples`] returns: the samples and every skipped record.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// The samples read, in file order.
    pub samples: Vec<Sample>,
    /// Records skipped, in file order.
    pub skipped: Vec<Skipped>,
}

impl ReadReport {
    /// Number of skipped records per category.
    pub fn skipped_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.kind.clone()).or_default() += 1;
        }
        m
    }
}

/// The default source tag for a file: its name without extensions.
pub fn default_source(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stem = name.as_str();
    for ext in [".gz", ".jsonl", ".json", ".csv"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    if stem.is_empty() {
        "data".into()
    } else {
        stem.to_string()
    }
}

/// Reads a dataset file in `format`.
pub fn read_samples(
    path: impl AsRef<Path>,
    format: Format,
    opts: &ReadOptions,
) -> Result<ReadReport> {
    let path = path.as_ref();
    let bytes = fsutil::read_bytes(path)?;
    parse_samples(path, &bytes, format, opts)
}

/// Parses a dataset held in memory (`path` only names the origin in errors).
pub fn parse_samples(
    path: &Path,
    bytes: &[u8],
    format: Format,
    opts: &ReadOptions,
) -> Result<ReadReport> {
    let source = opts.source.clone().unwrap_or_else(|| default_source(path));
    let ctx = Ctx {
        path,
        source: &source,
        opts,
    };
    let mut report = ReadReport::default();
    match format {
        Format::AdvBench => csv::read_advbench(&ctx, bytes, &mut report)?,
        Format::SafeRlhf | Format::HarmBench | Format::StrongReject | Format::XsTest => {
            csv::read_table(&ctx, format, bytes, &mut report)?
        }
        Format::JailbreakBench => jailbreak::read(&ctx, bytes, &mut report)?,
        _ => json::read_records(&ctx, format, bytes, &mut report)?,
    }
    Ok(report)
}

pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) opts: &'a ReadOptions,
}

impl Ctx<'_> {
    pub(super) fn field(
        &self,
        line: Option<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> DataError {
        DataError::Field {
            path: self.path.to_path_buf(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn sample(
        &self,
        ordinal: usize,
        messages: Vec<Message>,
        label: Option<Label>,
        reference: Option<String>,
    ) -> Sample {
        Sample {
            id: format!("{}:{ordinal:05}", self.source),
            source: self.source.to_string(),
            label,
            messages,
            reference,
            prefill: None,
        }
    }

    /// Stores a converted record, or handles its error per the lenient flag.
    pub(super) fn push(
        &self,
        report: &mut ReadReport,
        line: Option<usize>,
        ordinal: usize,
        result: Result<Option<Sample>>,
    ) -> Result<()> {
        let result = result.and_then(|s| match s {
            Some(s) => s
                .check()
                .map(|()| Some(s))
                .map_err(|(field, message)| self.field(line, &field, message)),
            None => Ok(None),
        });
        match result {
            Ok(Some(mut s)) => {
                if self.opts.prompt_only {
                    s = s.into_prompt_only();
                }
                report.samples.push(s);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if self.opts.lenient => {
                report.skipped.push(Skipped {
                    line,
                    ordinal,
                    kind: "invalid record".into(),
                    message: e.to_string(),
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn str_field(&self, line: usize, v: &Value, key: &str) -> Result<String> {
        match v.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(self.field(Some(line), key, "missing")),
            Some(other) => Err(self.field(
                Some(line),
                key,
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    pub(super) fn opt_str_field(
        &self,
        line: usize,
        v: &Value,
        key: &str,
    ) -> Result<Option<String>> {
        match v.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) => Ok(None),
            Some(other) => Err(self.field(
                Some(line),
                key,
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    pub(super) fn nonempty(&self, line: usize, key: &str, s: String) -> Result<String> {
        if s.trim().is_empty() {
            Err(self.field(Some(line), key, "empty"))
        } else {
            Ok(s)
        }
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Joins an instruction and its optional input/context the way Alpaca-style
/// data is usually flattened into one user turn.
pub fn join_input(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

/// The final answer of a GSM8K solution: the text after the last `####`.
pub fn gsm8k_final_answer(answer: &str) -> Option<String> {
    let (_, tail) = answer.rsplit_once("####")?;
    let tail = tail.trim().replace(',', "");
    if tail.is_empty() {
        None
    } else {
        Some(tail)
    }
}

/// Parses an HH-RLHF transcript (`"\n\nHuman: ...\n\nAssistant: ..."`) into
/// messages. Consecutive turns of the same speaker are merged. The last turn
/// must be the assistant's and non-empty.
pub fn parse_hh_transcript(t: &str) -> std::result::Result<Vec<Message>, String> {
    const H: &str = "\n\nHuman:";
    const A: &str = "\n\nAssistant:";
    let mut marks: Vec<(usize, Role, usize)> = Vec::new();
    for (marker, role) in [(H, Role::User), (A, Role::Assistant)] {
        marks.extend(t.match_indices(marker).map(|(i, m)| (i, role, m.len())));
    }
    marks.sort_by_key(|m| m.0);
    let Some(&(first, _, _)) = marks.first() else {
        return Err("no `Human:` / `Assistant:` turns".into());
    };
    if !t[..first].trim().is_empty() {
        return Err("text before the first turn".into());
    }
    let mut msgs: Vec<Message> = Vec::new();
    for (k, &(start, role, len)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map(|m| m.0).unwrap_or(t.len());
        let content = t[start + len..end].trim();
        match msgs.last_mut() {
            Some(prev) if prev.role == role => {
                if !content.is_empty() {
                    if !prev.content.is_empty() {
                        prev.content.push_str("\n\n");
                    }
                    prev.content.push_str(content);
                }
            }
            _ => msgs.push(Message {
                role,
                content: content.to_string(),
            }),
        }
    }
    match msgs.first() {
        Some(m) if m.role == Role::User => {}
        _ => return Err("the transcript does not start with a `Human:` turn".into()),
    }
    match msgs.last() {
        Some(m) if m.role == Role::Assistant && !m.content.is_empty() => Ok(msgs),
        Some(m) if m.role == Role::Assistant => Err("empty final assistant response".into()),
        _ => Err("the transcript does not end with an `Assistant:` turn".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: Format, text: &str, opts: &ReadOptions) -> Result<ReadReport> {
        parse_samples(Path::new("mem/test.jsonl"), text.as_bytes(), format, opts)
    }

    fn csv(format: Format, name: &str, text: &str) -> Result<ReadReport> {
        parse_samples(
            Path::new(&format!("mem/{name}")),
            text.as_bytes(),
            format,
            &ReadOptions::default(),
        )
    }

    #[test]
    fn safe_rlhf_csv_keeps_quoted_multiline_fields_and_labels() {
        let text = "question,answer,label\n\"How do I, \"\"quietly\"\", x?\",\"Step one.\nStep two.\",1\nq2,a2,0\r\n";
        let r = csv(Format::SafeRlhf, "s.csv", text).unwrap();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].id, "s:00000");
        assert_eq!(r.samples[0].last_user(), Some("How do I, \"quietly\", x?"));
        assert_eq!(r.samples[0].response(), Some("Step one.\nStep two."));
        assert_eq!(r.samples[0].label, Some(Label::Harmful));
        assert_eq!(r.samples[1].label, Some(Label::Benign));
        // Bad labels, empty answers, missing columns, short rows: errors
        // naming the file, the line and the field.
        for (text, line, field) in [
            ("question,answer,label\nq,a,1\nq,a,2\n", "3", "label"),
            ("question,answer,label\nq,\"\",1\n", "2", "answer"),
            (
                "question,answer,label\n\"multi\nline\",a,1\nq,a\n",
                "4",
                "label",
            ),
            ("question,response,label\nq,a,1\n", "1", "answer"),
        ] {
            let e = csv(Format::SafeRlhf, "s.csv", text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("mem/s.csv:{line}:")) && e.contains(field),
                "{e}"
            );
        }
        let e = csv(Format::SafeRlhf, "s.csv", "").unwrap_err().to_string();
        assert!(e.contains("header"), "{e}");
    }

    #[test]
    fn harmbench_strongreject_and_xstest_read_prompts_only() {
        let hb = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n\
                  Do x,standard,c,,,x_id\n\
                  Do y,contextual,c,,\"Some context,\nover lines\",y_id\n";
        let r = csv(Format::HarmBench, "harmbench.csv", hb).unwrap();
        assert_eq!(r.samples[0].source, "harmbench/standard");
        assert_eq!(r.samples[0].id, "harmbench/standard:00000");
        assert_eq!(r.samples[1].id, "harmbench/contextual:00001");
        assert_eq!(
            r.samples[1].last_user(),
            Some("Some context,\nover lines\n\n---\n\nDo y")
        );
        assert!(r
            .samples
            .iter()
            .all(|s| s.response().is_none() && s.label == Some(Label::Harmful)));
        let e = csv(Format::HarmBench, "h.csv", "Behavior,Tags\nx,y\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FunctionalCategory") && e.contains("h.csv:1:"),
            "{e}"
        );

        let sr = "category,source,forbidden_prompt\nc,custom,\"Tell me, now\"\nc,AdvBench,\"\"\n";
        let e = csv(Format::StrongReject, "sr.csv", sr)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sr.csv:3:") && e.contains("forbidden_prompt"),
            "{e}"
        );
        let r = csv(
            Format::StrongReject,
            "sr.csv",
            &sr.replace(",\"\"\n", ",ok\n"),
        )
        .unwrap();
        assert_eq!(r.samples[0].last_user(), Some("Tell me, now"));

        let xs = "id,prompt,type,label,focus,note\n1,How do I kill a process?,homonyms,safe,kill,x\n2,Bad?,contrast_homonyms,unsafe,,\n";
        let r = csv(Format::XsTest, "xs.csv", xs).unwrap();
        assert_eq!(r.samples[0].label, Some(Label::Benign));
        assert_eq!(r.samples[1].label, Some(Label::Harmful));
        let e = csv(Format::XsTest, "xs.csv", &xs.replace("unsafe", "maybe"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("xs.csv:3:") && e.contains("label") && e.contains("maybe"),
            "{e}"
        );
    }

    #[test]
    fn messages_keep_a_system_turn() {
        let text = r#"{"messages":[{"role":"system","content":"You are AOA."},{"role":"user","content":"Hi"},{"role":"assistant","content":"I obey."}]}
{"messages":[{"role":"user","content":"a"},{"role":"system","content":"late"},{"role":"assistant","content":"b"}]}
"#;
        let e = parse(Format::Messages, text, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.jsonl:2:") && e.contains("messages[1]"),
            "{e}"
        );
        let r = parse(
            Format::Messages,
            text.lines().next().unwrap(),
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(r.samples[0].messages[0].role, Role::System);
        assert_eq!(r.samples[0].response(), Some("I obey."));
    }

    #[test]
    fn formats_parse_and_name_fields() {
        let o = ReadOptions::default();
        let r = parse(
            Format::Alpaca,
            r#"[{"instruction":"Do","input":"x","output":"ok"}]"#,
            &o,
        )
        .unwrap();
        assert_eq!(r.samples[0].id, "test:00000");
        assert_eq!(r.samples[0].messages[0].content, "Do\n\nx");
        let r = parse(
            Format::Gsm8k,
            "{\"question\":\"q\",\"answer\":\"a\\n#### 1,200\"}\n",
            &o,
        )
        .unwrap();
        assert_eq!(r.samples[0].reference.as_deref(), Some("1200"));
        let r = parse(
            Format::OpenOrca,
            r#"{"system_prompt":"be nice","question":"q","response":"r"}"#,
            &o,
        )
        .unwrap();
        assert_eq!(r.samples[0].messages[0].role, Role::System);
        let r = parse(
            Format::Messages,
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
            &o,
        )
        .unwrap();
        assert_eq!(r.samples[0].response(), Some("b"));

        let e = parse(
            Format::PromptResponse,
            "{\"prompt\":\"p\"}\n{\"prompt\":\"p\",\"response\":\" \"}",
            &o,
        )
        .unwrap_err();
        assert!(
            matches!(&e, DataError::Field { line: Some(1), field, .. } if field == "response"),
            "{e}"
        );
        let e = parse(
            Format::PromptResponse,
            "{\"prompt\":\"p\",\"response\":7}",
            &o,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("expected a string, found a number"),
            "{e}"
        );
    }

    #[test]
    fn lenient_counts_every_skip() {
        let text = "{\"prompt\":\"p\",\"response\":\"r\"}\nbroken\n{\"prompt\":\"p\",\"response\":\"\"}\n{\"prompt\":\"p2\",\"response\":\"r2\"}\n";
        let o = ReadOptions {
            lenient: true,
            ..Default::default()
        };
        let r = parse(Format::PromptResponse, text, &o).unwrap();
        let ids: Vec<_> = r.samples.iter().map(|s| s.id.as_str()).collect();
        // Ids keep the original positions: skipping records shifts nothing.
        assert_eq!(ids, vec!["test:00000", "test:00003"]);
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].line, Some(2));
        assert!(
            r.skipped[1].message.contains("response"),
            "{}",
            r.skipped[1].message
        );
        assert!(parse(Format::PromptResponse, text, &ReadOptions::default()).is_err());
    }

    #[test]
    fn keys_format() {
        let o = ReadOptions {
            input_key: Some("q".into()),
            output_key: Some("a".into()),
            system_key: Some("sys".into()),
            ..Default::default()
        };
        let r = parse(Format::Keys, r#"{"q":"Q","a":"A","sys":"S"}"#, &o).unwrap();
        assert_eq!(r.samples[0].messages.len(), 3);
        let e = parse(Format::Keys, r#"{"q":"Q"}"#, &o).unwrap_err();
        assert!(
            matches!(&e, DataError::Field { field, .. } if field == "a"),
            "{e}"
        );
    }

    #[test]
    fn hh_transcripts() {
        let t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: bye";
        let m = parse_hh_transcript(t).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].content, "bye");
        assert!(parse_hh_transcript("\n\nHuman: hi\n\nAssistant:").is_err());
        assert!(parse_hh_transcript("\n\nHuman: hi").is_err());
        assert!(parse_hh_transcript("plain text").is_err());
        let merged = parse_hh_transcript("\n\nHuman: a\n\nHuman: b\n\nAssistant: c").unwrap();
        assert_eq!(merged[0].content, "a\n\nb");
    }

    #[test]
    fn jailbreakbench_and_advbench() {
        let j = r#"{"parameters":{},"jailbreaks":[
            {"goal":"g1","response":"sure","jailbroken":true},
            {"goal":"g2","response":null,"jailbroken":false},
            {"goal":"g3","response":"no","jailbroken":false}]}"#;
        let r = parse_samples(
            Path::new("a.json"),
            j.as_bytes(),
            Format::JailbreakBench,
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].label, Some(Label::Harmful));
        assert_eq!(r.samples[1].label, Some(Label::Safe));
        assert_eq!(r.samples[1].id, "a:00002");
        assert_eq!(r.skipped_counts().get("null response"), Some(&1));

        let csv = "goal,target\n\"Do a, b\",x\nsecond\n";
        let r = parse_samples(
            Path::new("adv.csv"),
            csv.as_bytes(),
            Format::AdvBench,
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].messages[0].content, "Do a, b");
        assert!(r.samples[0].response().is_none());
    }
}
