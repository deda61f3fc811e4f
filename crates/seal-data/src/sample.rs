//! Samples: a conversation with a stable id, a source tag and an optional
//! label, plus the project's JSONL interchange format.
//!
//! A sample's id is a string fixed when the sample is first read (for the
//! readers in [`crate::readers`]: `<source>:<position in the original file>`,
//! e.g. `gsm8k-train:00042`). It never changes when other samples are
//! filtered out, so a ranker slot, a selection or a report can always be
//! traced back to the original record. (The official SEAL code numbers
//! samples after filtering and indexes the unfiltered set with those numbers;
//! string ids make that mistake impossible.)
//!
//! The JSONL schema, one sample per line:
//!
//! ```json
//! {"id": "gsm8k-train:00042", "source": "gsm8k-train", "label": "benign",
//!  "messages": [{"role": "user", "content": "..."},
//!               {"role": "assistant", "content": "..."}],
//!  "reference": "72"}
//! ```
//!
//! The last message, when it is an assistant turn, is the response that
//! carries the loss. Evaluation files hold prompts only (the last message is
//! a user turn), except `eval_utility.jsonl`, whose samples also carry the
//! reference solution as the final assistant turn (for the held-out task
//! NLL); generation renders [`Sample::prompt_messages`], which never
//! includes that turn. `label` and `reference` are optional.
//!
//! An optional `prefill` names the first characters of the response that
//! the model reads but is not trained on: the loss covers only the rest.
//! This is how the safety-recovery examples of Qi et al. (2024, "Safety
//! Alignment Should Be Made More Than Just a Few Tokens Deep") are written:
//! a harmful request, the start of a harmful answer as context, then a
//! refusal as the target.
//!
//! ```json
//! {"id": "recovery:00007", "source": "recovery", "label": "safe",
//!  "messages": [{"role": "user", "content": "How do I pick a lock?"},
//!               {"role": "assistant", "content": "Step 1: insert a tension wrench I cannot help with that."}],
//!  "prefill": "Step 1: insert a tension wrench"}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chat::{Message, Role};
use crate::error::{DataError, Result};
use crate::fsutil;

/// What a sample is, as far as the experiment knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// An ordinary task sample (the utility the user fine-tunes for).
    Benign,
    /// A harmful request answered compliantly (or a harmful prompt).
    Harmful,
    /// A harmful request answered with a refusal or safe answer.
    Safe,
}

impl Label {
    /// All labels, in a fixed order.
    pub const ALL: [Label; 3] = [Label::Benign, Label::Harmful, Label::Safe];

    /// The lowercase name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Benign => "benign",
            Label::Harmful => "harmful",
            Label::Safe => "safe",
        }
    }

    /// A compact code used in binary caches (0 = no label).
    pub(crate) fn code(label: Option<Label>) -> u8 {
        match label {
            None => 0,
            Some(Label::Benign) => 1,
            Some(Label::Harmful) => 2,
            Some(Label::Safe) => 3,
        }
    }

    /// Inverse of [`Label::code`].
    pub(crate) fn from_code(code: u8) -> Option<Option<Label>> {
        match code {
            0 => Some(None),
            1 => Some(Some(Label::Benign)),
            2 => Some(Some(Label::Harmful)),
            3 => Some(Some(Label::Safe)),
            _ => None,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Label {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "benign" => Ok(Label::Benign),
            "harmful" => Ok(Label::Harmful),
            "safe" => Ok(Label::Safe),
            other => Err(DataError::Invalid {
                what: "label".into(),
                message: format!("`{other}` (expected benign, harmful or safe)"),
            }),
        }
    }
}

/// One sample: a conversation whose last assistant turn (if any) carries the
/// loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable, unique identifier (see the module documentation).
    pub id: String,
    /// Where the sample comes from (e.g. `gsm8k-train`).
    pub source: String,
    /// Ground-truth provenance label, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// The conversation: an optional system turn, then user/assistant turns.
    pub messages: Vec<Message>,
    /// A reference answer for evaluation (e.g. GSM8K's final number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The start of the response that is context, not target: a proper
    /// prefix of the last (assistant) message, left out of the loss (see
    /// the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
}

impl Sample {
    /// The response that carries the loss: the content of the last message
    /// when it is an assistant turn.
    pub fn response(&self) -> Option<&str> {
        match self.messages.last() {
            Some(m) if m.role == Role::Assistant => Some(&m.content),
            _ => None,
        }
    }

    /// The conversation before the response (all messages when the sample
    /// has no response).
    pub fn prompt_messages(&self) -> &[Message] {
        match self.response() {
            Some(_) => &self.messages[..self.messages.len() - 1],
            None => &self.messages,
        }
    }

    /// The text of the last user turn (the instruction being answered).
    pub fn last_user(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// The same sample without its response (for prompt-only evaluation
    /// files). The response text, if any and no reference is set, becomes
    /// the reference; a reference already set (e.g. GSM8K's final number)
    /// is kept. A prefill is dropped with the response it belongs to.
    pub fn into_prompt_only(mut self) -> Self {
        self.prefill = None;
        if self.response().is_some() {
            if let Some(m) = self.messages.pop() {
                if self.reference.is_none() {
                    self.reference = Some(m.content);
                }
            }
        }
        self
    }

    /// Checks the conversation's shape: at least one user turn, a system turn
    /// only first, roles alternating user/assistant, a user turn first after
    /// the system turn, no empty turn, and a `prefill`, if any, that is a
    /// proper prefix of the response. Returns `(field, message)` on failure.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        if self.id.is_empty() {
            return Err(("id".into(), "empty id".into()));
        }
        if self.messages.is_empty() {
            return Err(("messages".into(), "no messages".into()));
        }
        let mut expect = Role::User;
        for (i, m) in self.messages.iter().enumerate() {
            let field = format!("messages[{i}]");
            if m.role == Role::System {
                if i != 0 {
                    return Err((field, "a system turn may only come first".into()));
                }
                continue;
            }
            if m.role != expect {
                return Err((
                    field,
                    format!(
                        "expected a {} turn, found {}",
                        role_name(expect),
                        role_name(m.role)
                    ),
                ));
            }
            if m.content.trim().is_empty() {
                return Err((format!("{field}.content"), "empty content".into()));
            }
            expect = if expect == Role::User {
                Role::Assistant
            } else {
                Role::User
            };
        }
        if !self.messages.iter().any(|m| m.role == Role::User) {
            return Err(("messages".into(), "no user turn".into()));
        }
        if let Some(prefill) = &self.prefill {
            let rest = self.response().map(|r| r.strip_prefix(prefill.as_str()));
            let problem = match rest {
                None => Some("a prefill needs an assistant response as the last message"),
                Some(_) if prefill.trim().is_empty() => Some("empty prefill"),
                Some(None) => Some("not a prefix of the last assistant message"),
                Some(Some(rest)) if rest.trim().is_empty() => {
                    Some("covers the whole response, leaving nothing to train on")
                }
                Some(Some(_)) => None,
            };
            if let Some(message) = problem {
                return Err(("prefill".into(), message.into()));
            }
        }
        Ok(())
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Reads samples in the project's JSONL schema (see the module docs), e.g.
/// the files written by [`write_jsonl_samples`] or `seal data benchmark`.
/// `.gz` files are read transparently. Errors name the file, line and field;
/// duplicate ids are an error.
pub fn read_jsonl_samples(path: impl AsRef<Path>) -> Result<Vec<Sample>> {
    let path = path.as_ref();
    let bytes = fsutil::read_bytes(path)?;
    parse_jsonl_samples(path, &bytes)
}

/// Parses samples in the project's JSONL schema from memory; `path` only
/// names the origin in errors.
pub fn parse_jsonl_samples(path: &Path, bytes: &[u8]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in fsutil::lines(path, bytes) {
        let (no, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let sample: Sample = serde_json::from_str(text).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: Some(no),
            message: e.to_string(),
        })?;
        sample
            .check()
            .map_err(|(field, message)| DataError::Field {
                path: path.to_path_buf(),
                line: Some(no),
                field,
                message,
            })?;
        if let Some(first) = seen.insert(sample.id.clone(), no) {
            return Err(DataError::Field {
                path: path.to_path_buf(),
                line: Some(no),
                field: "id".into(),
                message: format!("duplicate id `{}` (first on line {first})", sample.id),
            });
        }
        out.push(sample);
    }
    Ok(out)
}

/// Writes samples as JSONL (one per line), atomically.
pub fn write_jsonl_samples(path: impl AsRef<Path>, samples: &[Sample]) -> Result<()> {
    let path = path.as_ref();
    fsutil::write_atomic_with(path, |w| {
        for s in samples {
            serde_json::to_writer(&mut *w, s).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Checks that all ids are unique; returns the first duplicate otherwise.
pub fn check_unique_ids(samples: &[Sample]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(samples.len());
    for s in samples {
        if !seen.insert(s.id.as_str()) {
            return Err(DataError::Invalid {
                what: "sample ids".into(),
                message: format!("duplicate id `{}`", s.id),
            });
        }
    }
    Ok(())
}

/// Counts per label and per source, as printed by `seal data inspect` and
/// stored in benchmark summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Number of samples.
    pub total: usize,
    /// Samples per label (`"none"` for unlabelled samples).
    pub by_label: BTreeMap<String, usize>,
    /// Samples per source.
    pub by_source: BTreeMap<String, usize>,
    /// Samples per `(source, label)` pair, keyed `source/label`.
    pub by_source_label: BTreeMap<String, usize>,
}

impl Counts {
    /// Counts `samples`.
    pub fn of(samples: &[Sample]) -> Self {
        let mut c = Counts {
            total: samples.len(),
            ..Default::default()
        };
        for s in samples {
            let label = s.label.map(|l| l.as_str()).unwrap_or("none");
            *c.by_label.entry(label.to_string()).or_default() += 1;
            *c.by_source.entry(s.source.clone()).or_default() += 1;
            *c.by_source_label
                .entry(format!("{}/{label}", s.source))
                .or_default() += 1;
        }
        c
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "samples: {}", self.total)?;
        writeln!(f, "by label:")?;
        for (k, v) in &self.by_label {
            writeln!(f, "  {k:<10} {v}")?;
        }
        writeln!(f, "by source:")?;
        for (k, v) in &self.by_source {
            writeln!(f, "  {k:<40} {v}")?;
        }
        writeln!(f, "by source and label:")?;
        for (k, v) in &self.by_source_label {
            writeln!(f, "  {k:<48} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, msgs: Vec<Message>) -> Sample {
        Sample {
            id: id.into(),
            source: "t".into(),
            label: None,
            messages: msgs,
            reference: None,
            prefill: None,
        }
    }

    #[test]
    fn response_and_prompt() {
        let s = sample(
            "a",
            vec![
                Message::system("sys"),
                Message::user("q"),
                Message::assistant("r"),
            ],
        );
        assert_eq!(s.response(), Some("r"));
        assert_eq!(s.prompt_messages().len(), 2);
        assert!(s.check().is_ok());
        let p = s.clone().into_prompt_only();
        assert_eq!(p.response(), None);
        assert_eq!(p.reference.as_deref(), Some("r"));
        // A reference already set is kept, not replaced by the response.
        let mut g = s;
        g.reference = Some("72".into());
        let p = g.clone().into_prompt_only();
        assert_eq!(p.reference.as_deref(), Some("72"));
        assert_eq!(p.messages.as_slice(), g.prompt_messages());
    }

    #[test]
    fn check_rejects_bad_shapes() {
        let bad = [
            vec![],
            vec![Message::assistant("r")],
            vec![Message::user("q"), Message::system("s")],
            vec![Message::user("q"), Message::assistant("  ")],
            vec![Message::user("q"), Message::user("q2")],
        ];
        for msgs in bad {
            assert!(
                sample("a", msgs.clone()).check().is_err(),
                "{msgs:?} accepted"
            );
        }
    }

    #[test]
    fn jsonl_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        let mut a = sample("x:1", vec![Message::user("q"), Message::assistant("r")]);
        a.label = Some(Label::Harmful);
        let b = sample("x:2", vec![Message::user("only a prompt")]);
        write_jsonl_samples(&p, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(read_jsonl_samples(&p).unwrap(), vec![a.clone(), b]);

        let line = serde_json::to_string(&a).unwrap();
        std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
        let e = read_jsonl_samples(&p).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("duplicate id"), "{e}");

        std::fs::write(&p, format!("{line}\n{{\"id\": 3\n")).unwrap();
        let e = read_jsonl_samples(&p).unwrap_err();
        assert!(matches!(e, DataError::Json { line: Some(2), .. }), "{e}");

        let empty = line.replace("\"r\"", "\"\"");
        std::fs::write(&p, format!("{empty}\n")).unwrap();
        let e = read_jsonl_samples(&p).unwrap_err();
        assert!(
            matches!(&e, DataError::Field { line: Some(1), field, .. } if field == "messages[1].content"),
            "{e}"
        );
    }

    #[test]
    fn label_parse_and_counts() {
        assert_eq!("Harmful".parse::<Label>().unwrap(), Label::Harmful);
        assert!("evil".parse::<Label>().is_err());
        for l in Label::ALL {
            assert_eq!(Label::from_code(Label::code(Some(l))), Some(Some(l)));
        }
        let mut a = sample("1", vec![Message::user("q")]);
        a.label = Some(Label::Safe);
        let c = Counts::of(&[a, sample("2", vec![Message::user("q")])]);
        assert_eq!(c.by_label.get("safe"), Some(&1));
        assert_eq!(c.by_label.get("none"), Some(&1));
        assert_eq!(c.by_source_label.get("t/safe"), Some(&1));
    }
}
