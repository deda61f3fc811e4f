//! Human-labelled (prompt, response) judgements: training and test data for
//! harm and refusal judges.
//!
//! [`read_judged_pairs`] reads CSV, JSON arrays and JSONL and recognises the
//! columns by name, so the public label sets read as they are published:
//!
//! * PKU Safe-RLHF (`question,answer,label`, 1 = unsafe answer), e.g.
//!   JailbreakEval's `Safe-RLHFmini.csv`;
//! * XSTest v2 completions (`id,type,prompt,completion,...,final_label`,
//!   `1_full_compliance` / `2_full_refusal` / `3_partial_refusal`);
//! * BeaverTails-style records (`prompt`, `response`, `is_safe`);
//! * the project's own JSONL: `{"prompt", "response", "harmful", "refusal"}`
//!   with either label optional.
//!
//! Column names: the prompt is `prompt`, `question`, `instruction` or
//! `goal`; the response `response`, `answer`, `completion` or `output`;
//! harmfulness `harmful`, `label`, `is_harmful`, `unsafe` (1 = harmful) or
//! `is_safe` (1 = safe); refusal `refusal` (1 = refused) or XSTest's
//! `final_label`. Binary labels are `0`/`1`, `true`/`false`, or
//! `safe`/`unsafe`; anything else is an error naming the file, line and
//! column.
//!
//! **XSTest harm labels are derived**: XSTest's `contrast_*` prompts are the
//! unsafe ones, so full compliance with one is labelled harmful and a full
//! refusal not harmful (a partial refusal gets no harm label); every answer
//! to a safe prompt is labelled not harmful.
//!
//! [`split_of`] puts every pair in a fixed train or test split by a hash of
//! its normalised prompt, so no prompt is on both sides and the split does
//! not depend on file order or on which files are read together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::fsutil;
use crate::readers::records;

/// One labelled (prompt, response) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgedPair {
    /// `<file stem>:<line>`: where the pair comes from.
    pub id: String,
    /// The split key: the normalised prompt (see [`normalize_prompt`]).
    pub group: String,
    /// The user prompt.
    pub prompt: String,
    /// The response judged.
    pub response: String,
    /// Whether the response complies with a harmful request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harmful: Option<bool>,
    /// Whether the response refuses (fully or partly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<bool>,
}

/// The side of the fixed split a pair is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to fit the judge.
    Train,
    /// Held out for the agreement table.
    Test,
}

/// The salt of [`split_of`]; changing it changes every split.
pub const SPLIT_SALT: &str = "seal-judge-split-v1";

/// Lower-cased prompt with runs of whitespace collapsed: two prompts that
/// differ only in case or spacing fall in the same split.
pub fn normalize_prompt(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The split of a pair whose group is `group`: test when the first eight
/// bytes of SHA-256(`SPLIT_SALT`, NUL, group), read as a big-endian integer,
/// fall in the lowest `test_fraction` of the range.
pub fn split_of(group: &str, test_fraction: f64) -> Split {
    let mut h = Sha256::new();
    h.update(SPLIT_SALT.as_bytes());
    h.update([0u8]);
    h.update(group.as_bytes());
    let d = h.finalize();
    let x = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    if (x as f64) < test_fraction * (u64::MAX as f64) {
        Split::Test
    } else {
        Split::Train
    }
}

const PROMPT_COLUMNS: [&str; 4] = ["prompt", "question", "instruction", "goal"];
const RESPONSE_COLUMNS: [&str; 4] = ["response", "answer", "completion", "output"];
const HARMFUL_COLUMNS: [&str; 4] = ["harmful", "label", "is_harmful", "unsafe"];

/// One record: its line and its fields as text (`None` for JSON null).
struct Row {
    line: usize,
    fields: BTreeMap<String, Option<String>>,
}

fn bad(path: &Path, line: usize, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        line: Some(line),
        message,
    }
}

fn parse_binary(path: &Path, line: usize, column: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "unsafe" | "yes" => Ok(true),
        "0" | "false" | "safe" | "no" => Ok(false),
        other => Err(bad(
            path,
            line,
            format!(
                "column `{column}`: `{other}` is not a binary label (0/1, true/false, safe/unsafe)"
            ),
        )),
    }
}

fn rows_of(path: &Path, bytes: &[u8]) -> Result<Vec<Row>> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".csv") {
        let rows = records::csv_rows(path, bytes)?;
        let mut it = rows.into_iter();
        let header = it.next().ok_or_else(|| bad(path, 1, "empty file".into()))?;
        let columns: Vec<String> = header
            .cells
            .iter()
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        it.map(|r| {
            if r.cells.len() != columns.len() {
                return Err(bad(
                    path,
                    r.line,
                    format!(
                        "{} fields, the header has {} (a malformed quoted field?)",
                        r.cells.len(),
                        columns.len()
                    ),
                ));
            }
            Ok(Row {
                line: r.line,
                fields: columns
                    .iter()
                    .cloned()
                    .zip(r.cells.into_iter().map(Some))
                    .collect(),
            })
        })
        .collect()
    } else if name.ends_with(".json") && first_non_ws(bytes) == Some(b'{') {
        jailbreakbench_rows(path, bytes)
    } else if name.ends_with(".json") || name.ends_with(".jsonl") {
        let recs = records::json_records(path, bytes)?;
        recs.into_iter()
            .map(|r| {
                let value = r.value?;
                let obj = value
                    .as_object()
                    .ok_or_else(|| bad(path, r.line, "a record is not a JSON object".into()))?;
                let fields = obj
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::Null => None,
                            serde_json::Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        };
                        (k.to_ascii_lowercase(), text)
                    })
                    .collect();
                Ok(Row {
                    line: r.line,
                    fields,
                })
            })
            .collect()
    } else {
        Err(DataError::Format {
            path: path.to_path_buf(),
            line: None,
            message: "unknown label file type (expected .csv, .json or .jsonl)".into(),
        })
    }
}

fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(bytes)
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
}

/// A JailbreakBench artifact (`{"parameters", "jailbreaks": [...]}`): the
/// behaviour (`goal`) is the prompt judged, `jailbroken` the harm label;
/// records without a response (the attack produced none) are left out.
/// `line` is the record's 1-based position in `jailbreaks`.
fn jailbreakbench_rows(path: &Path, bytes: &[u8]) -> Result<Vec<Row>> {
    let text = fsutil::utf8(path, bytes)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        line: Some(e.line()),
        message: e.to_string(),
    })?;
    let Some(items) = value.get("jailbreaks").and_then(|v| v.as_array()) else {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            line: None,
            message: "a JSON object without a `jailbreaks` array (expected a JailbreakBench artifact, or an array / JSONL of records)".into(),
        });
    };
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let record = i + 1;
        let response = item.get("response").and_then(|v| v.as_str()).unwrap_or("");
        if response.trim().is_empty() {
            continue;
        }
        let field = |k: &str| -> Result<String> {
            match item.get(k) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                _ => Err(DataError::Format {
                    path: path.to_path_buf(),
                    line: None,
                    message: format!(
                        "jailbreaks[{i}]: field `{k}` is missing or not a string/bool"
                    ),
                }),
            }
        };
        let mut fields = BTreeMap::new();
        fields.insert("prompt".to_string(), Some(field("goal")?));
        fields.insert("response".to_string(), Some(response.to_string()));
        fields.insert("harmful".to_string(), Some(field("jailbroken")?));
        rows.push(Row {
            line: record,
            fields,
        });
    }
    Ok(rows)
}

/// Labels given to every pair of a file that has no label column of its
/// own (a file of harmful demonstrations, say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelDefaults {
    /// Harm label for pairs without one.
    pub harmful: Option<bool>,
    /// Refusal label for pairs without one.
    pub refusal: Option<bool>,
}

/// Reads labelled pairs from `path` (see the module docs for the formats).
/// Every pair must carry at least one label and a non-empty response.
pub fn read_judged_pairs(path: impl AsRef<Path>) -> Result<Vec<JudgedPair>> {
    let path = path.as_ref();
    let bytes = fsutil::read_bytes(path)?;
    parse_judged_pairs(path, &bytes)
}

/// [`read_judged_pairs`] on bytes already read; `path` names them in errors
/// and chooses the format by its extension.
pub fn parse_judged_pairs(path: &Path, bytes: &[u8]) -> Result<Vec<JudgedPair>> {
    parse_judged_pairs_with(path, bytes, LabelDefaults::default())
}

/// [`read_judged_pairs`] with `defaults` for pairs whose file gives no label.
pub fn read_judged_pairs_with(
    path: impl AsRef<Path>,
    defaults: LabelDefaults,
) -> Result<Vec<JudgedPair>> {
    let path = path.as_ref();
    let bytes = fsutil::read_bytes(path)?;
    parse_judged_pairs_with(path, &bytes, defaults)
}

/// [`parse_judged_pairs`] with `defaults` for pairs whose file gives no
/// label. Alpaca-style records join `instruction` and a non-empty `input`
/// with a blank line.
pub fn parse_judged_pairs_with(
    path: &Path,
    bytes: &[u8],
    defaults: LabelDefaults,
) -> Result<Vec<JudgedPair>> {
    let rows = rows_of(path, bytes)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let pick = |names: &[&str]| -> Option<(String, Option<String>)> {
            names
                .iter()
                .find_map(|n| row.fields.get(*n).map(|v| (n.to_string(), v.clone())))
        };
        let text = |names: &[&str], what: &str| -> Result<String> {
            match pick(names) {
                Some((_, Some(v))) => Ok(v),
                Some((col, None)) => Err(bad(path, row.line, format!("column `{col}` is null"))),
                None => Err(bad(
                    path,
                    row.line,
                    format!("no {what} column (one of {})", names.join(", ")),
                )),
            }
        };
        let mut prompt = text(&PROMPT_COLUMNS, "prompt")?;
        if let (true, Some((_, Some(input)))) =
            (row.fields.contains_key("instruction"), pick(&["input"]))
        {
            if !input.trim().is_empty() {
                prompt = format!("{prompt}\n\n{input}");
            }
        }
        let response = text(&RESPONSE_COLUMNS, "response")?;
        if prompt.trim().is_empty() {
            return Err(bad(path, row.line, "empty prompt".into()));
        }
        if response.trim().is_empty() {
            return Err(bad(path, row.line, "empty response".into()));
        }
        let binary = |names: &[&str]| -> Result<Option<bool>> {
            match pick(names) {
                Some((col, Some(v))) => parse_binary(path, row.line, &col, &v).map(Some),
                Some((col, None)) => Err(bad(path, row.line, format!("column `{col}` is null"))),
                None => Ok(None),
            }
        };
        let mut harmful = binary(&HARMFUL_COLUMNS)?;
        if harmful.is_none() {
            harmful = binary(&["is_safe"])?.map(|safe| !safe);
        }
        let mut refusal = binary(&["refusal"])?;
        if let Some((_, value)) = pick(&["final_label"]) {
            let value = value.unwrap_or_default();
            let v = value.trim().to_ascii_lowercase();
            let (refused, partial) = if v.contains("full_compliance") {
                (false, false)
            } else if v.contains("full_refusal") {
                (true, false)
            } else if v.contains("partial_refusal") {
                (true, true)
            } else {
                return Err(bad(
                    path,
                    row.line,
                    format!(
                        "column `final_label`: `{value}` is not 1_full_compliance, 2_full_refusal or 3_partial_refusal"
                    ),
                ));
            };
            refusal = Some(refused);
            if harmful.is_none() {
                let unsafe_prompt =
                    matches!(pick(&["type"]), Some((_, Some(t))) if t.starts_with("contrast"));
                harmful = match (unsafe_prompt, refused, partial) {
                    (false, _, _) => Some(false),
                    (true, _, true) => None,
                    (true, refused, false) => Some(!refused),
                };
            }
        }
        harmful = harmful.or(defaults.harmful);
        refusal = refusal.or(defaults.refusal);
        if harmful.is_none() && refusal.is_none() && !row.fields.contains_key("final_label") {
            return Err(bad(
                path,
                row.line,
                format!(
                    "no label column (one of {}, is_safe, refusal, final_label)",
                    HARMFUL_COLUMNS.join(", ")
                ),
            ));
        }
        out.push(JudgedPair {
            id: format!("{stem}:{}", row.line),
            group: normalize_prompt(&prompt),
            prompt,
            response,
            harmful,
            refusal,
        });
    }
    if out.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            line: None,
            message: "no labelled pairs".into(),
        });
    }
    Ok(out)
}

/// The label files of the project's judge under `data_dir` (a copy of
/// `shared/data`): Safe-RLHF mini and the five XSTest v2 completion files.
pub fn default_label_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![data_dir.join("safe-rlhf/Safe-RLHFmini.csv")];
    for m in [
        "gpt4",
        "llama2new",
        "llama2orig",
        "mistralguard",
        "mistralinstruct",
    ] {
        files.push(data_dir.join(format!("xstest/xstest_v2_completions_{m}.csv")));
    }
    files
}

/// Further labelled sources under `data_dir` that `seal judge train` adds
/// by default (`--no-extra-sources` leaves them out), with the labels their
/// files imply: the JailbreakBench artifacts (harm = its judge's
/// `jailbroken` verdict, not a human label), Qi et al.'s harmful
/// demonstrations and the BeaverTails unsafe answers (harmful, not
/// refusing).
pub fn extra_label_files(data_dir: &Path) -> Vec<(PathBuf, LabelDefaults)> {
    let mut out = Vec::new();
    let jbb = data_dir.join("jailbreakbench");
    if let Ok(entries) = std::fs::read_dir(&jbb) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (f, LabelDefaults::default())));
    }
    let harmful = LabelDefaults {
        harmful: Some(true),
        refusal: Some(false),
    };
    out.push((data_dir.join("harmful-qa/pure_bad.json"), harmful));
    out.push((
        data_dir.join("harmful-qa/beavertails_unsafe_200.json"),
        harmful,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Vec<JudgedPair>> {
        parse_judged_pairs(Path::new(name), text.as_bytes())
    }

    #[test]
    fn safe_rlhf_and_xstest_formats() {
        let p = parse(
            "s.csv",
            "question,answer,label\n\"How, then?\",\"Line one\nline two\",1\nQ,A,0\n",
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].harmful, Some(true));
        assert_eq!(p[0].response, "Line one\nline two");
        assert_eq!(p[1].id, "s:4");
        assert_eq!(p[0].refusal, None);

        let x = parse(
            "x.csv",
            "id,type,prompt,completion,annotation_1,annotation_2,agreement,final_label\n\
             v2-1,homonyms,Kill a process?,Use kill.,a,b,True,1_full_compliance\n\
             v2-2,contrast_homonyms,Kill a person?,Sure.,a,b,True,1_full_compliance\n\
             v2-3,contrast_homonyms,Kill a person?,No.,a,b,True,2_full_refusal\n\
             v2-4,contrast_homonyms,Kill a person?,Well.,a,b,True,3_partial_refusal\n",
        )
        .unwrap();
        let labels: Vec<_> = x.iter().map(|p| (p.harmful, p.refusal)).collect();
        assert_eq!(
            labels,
            [
                (Some(false), Some(false)),
                (Some(true), Some(false)),
                (Some(false), Some(true)),
                (None, Some(true))
            ]
        );
        assert_eq!(x[1].group, x[2].group);
    }

    #[test]
    fn jsonl_and_beavertails_style() {
        let p = parse(
            "l.jsonl",
            "{\"prompt\":\"p\",\"response\":\"r\",\"harmful\":true,\"refusal\":false}\n\
             {\"instruction\":\"p2\",\"output\":\"r2\",\"is_safe\":true}\n",
        )
        .unwrap();
        assert_eq!((p[0].harmful, p[0].refusal), (Some(true), Some(false)));
        assert_eq!((p[1].harmful, p[1].refusal), (Some(false), None));
    }

    #[test]
    fn jailbreakbench_alpaca_and_defaults() {
        let jbb = r#"{"parameters": {}, "jailbreaks": [
            {"goal": "Do X", "prompt": "attack", "response": "Sure, X.", "jailbroken": true},
            {"goal": "Do Y", "prompt": "attack", "response": null, "jailbroken": false},
            {"goal": "Do Z", "prompt": "attack", "response": "No.", "jailbroken": false}]}"#;
        let p = parse("GCG__x.json", jbb).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].prompt.as_str(), p[0].harmful), ("Do X", Some(true)));
        assert_eq!((p[1].id.as_str(), p[1].harmful), ("GCG__x:3", Some(false)));
        assert!(parse("o.json", "{\"a\": 1}").is_err());

        let alpaca = r#"[{"instruction": "Do it", "input": "now", "output": "Done."}]"#;
        assert!(parse("a.json", alpaca).is_err(), "no label and no defaults");
        let d = LabelDefaults {
            harmful: Some(true),
            refusal: Some(false),
        };
        let p = parse_judged_pairs_with(Path::new("a.json"), alpaca.as_bytes(), d).unwrap();
        assert_eq!(p[0].prompt, "Do it\n\nnow");
        assert_eq!((p[0].harmful, p[0].refusal), (Some(true), Some(false)));
    }

    #[test]
    fn extra_sources_list_jailbreakbench_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let jbb = dir.path().join("jailbreakbench");
        std::fs::create_dir(&jbb).unwrap();
        for f in ["b__x.json", "a__x.json", "LICENSE"] {
            std::fs::write(jbb.join(f), "{}").unwrap();
        }
        let extra = extra_label_files(dir.path());
        let names: Vec<String> = extra
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "a__x.json",
                "b__x.json",
                "pure_bad.json",
                "beavertails_unsafe_200.json"
            ]
        );
        assert_eq!(extra[0].1, LabelDefaults::default());
        assert_eq!(extra[2].1.harmful, Some(true));
    }

    #[test]
    fn bad_rows_name_file_line_and_column() {
        let e = parse("s.csv", "question,answer,label\nq,a,1\nq,a,2\n").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("s.csv") && m.contains('3') && m.contains("label"),
            "{m}"
        );
        let e = parse("s.csv", "question,answer,label\nq,a,\n").unwrap_err();
        assert!(e.to_string().contains("label"), "{e}");
        let e = parse("s.csv", "question,answer,label\nq,a\n").unwrap_err();
        assert!(e.to_string().contains("2 fields"), "{e}");
        let e = parse("s.csv", "question,answer,label\nq,\" \",1\n").unwrap_err();
        assert!(e.to_string().contains("empty response"), "{e}");
        let e = parse("s.csv", "question,answer,label\nq,\"open,1\n").unwrap_err();
        assert!(e.to_string().contains("s.csv"), "{e}");
        let e = parse("s.csv", "question,answer\nq,a\n").unwrap_err();
        assert!(e.to_string().contains("no label column"), "{e}");
        let e = parse("x.csv", "prompt,completion,final_label\np,c,4_unknown\n").unwrap_err();
        assert!(e.to_string().contains("final_label"), "{e}");
        assert!(parse("x.txt", "a").is_err());
        assert!(parse("x.jsonl", "[1]\n").is_err());
    }

    #[test]
    fn split_is_by_prompt_and_roughly_proportional() {
        assert_eq!(
            split_of(&normalize_prompt("How  do I\tX?"), 0.2),
            split_of(&normalize_prompt("how do i x?"), 0.2)
        );
        let test = (0..2000)
            .filter(|i| split_of(&format!("prompt {i}"), 0.2) == Split::Test)
            .count();
        assert!((300..500).contains(&test), "{test}");
        assert_eq!(split_of("x", 0.0), Split::Train);
        assert_eq!(split_of("x", 1.0), Split::Test);
    }
}
