//! Selection outputs, all written atomically: the kept ids (one per line),
//! a scored JSONL for auditing what was cut, and a JSON summary.
//!
//! The kept-set hash is the one `shared/data/README.md` gives for the
//! official SEAL selectors (Shen et al., ICLR 2025;
//! <https://github.com/hanshen95/SEAL>): SHA-256 of the kept positions,
//! sorted ascending, joined by commas.

use crate::error::{Result, SelectError};
use crate::selection::{Objective, Selection, SelectionInput};
use seal_data::fsutil;
use seal_data::Label;
use serde::Serialize;
use std::path::Path;

pub use seal_data::ranking::kept_set_sha256;

/// One line of the scored JSONL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredLine<'a> {
    /// The sample id.
    pub id: &'a str,
    /// Its source, when the samples are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    /// Its label, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// The rule's score (`null` when not finite, e.g. a DSIR example below
    /// the minimum length).
    pub score: f64,
    /// 1-based rank in the rule's order.
    pub rank: usize,
    /// Whether the sample is kept.
    pub kept: bool,
    /// Training weight, for weighting rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// The scored lines of a selection, in input order.
pub fn scored_lines<'a>(
    input: &SelectionInput<'a>,
    selection: &Selection,
) -> Result<Vec<ScoredLine<'a>>> {
    if selection.len() != input.len() {
        return Err(SelectError::input(
            selection.rule.as_str(),
            format!(
                "the selection has {} entries for {} samples",
                selection.len(),
                input.len()
            ),
        ));
    }
    let samples = input.samples();
    Ok(input
        .ids()
        .iter()
        .zip(&selection.entries)
        .enumerate()
        .map(|(i, (id, e))| {
            let sample = samples.and_then(|s| s.get(i));
            ScoredLine {
                id: id.as_str(),
                source: sample.map(|s| s.source.as_str()),
                label: sample.and_then(|s| s.label),
                score: e.score,
                rank: e.rank,
                kept: e.kept,
                weight: e.weight,
            }
        })
        .collect())
}

/// Writes the scored JSONL (one [`ScoredLine`] per input sample, in input
/// order) to `path`, atomically.
pub fn write_scored_jsonl(
    path: &Path,
    input: &SelectionInput,
    selection: &Selection,
) -> Result<()> {
    let lines = scored_lines(input, selection)?;
    fsutil::write_atomic_with(path, |w| {
        for line in &lines {
            serde_json::to_writer(&mut *w, line).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes ids one per line to `path`, atomically.
pub fn write_kept_ids(path: &Path, ids: &[&str]) -> Result<()> {
    if let Some(id) = ids.iter().find(|id| id.contains('\n') || id.contains('\r')) {
        return Err(SelectError::File {
            path: path.to_path_buf(),
            message: format!("id {id:?} contains a line break and cannot be written one per line"),
        });
    }
    fsutil::write_atomic_with(path, |w| {
        for id in ids {
            w.write_all(id.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Reads a kept-ids file (one id per line; blank lines ignored). A
/// duplicate id is an error naming it and its line.
pub fn read_kept_ids(path: &Path) -> Result<Vec<String>> {
    let bytes = fsutil::read_bytes(path)?;
    let text = fsutil::utf8(path, &bytes)?;
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let id = line.trim_end_matches('\r');
        if id.trim().is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(id.to_string(), no + 1) {
            return Err(SelectError::File {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: duplicate id `{id}` (first on line {first})",
                    no + 1
                ),
            });
        }
        out.push(id.to_string());
    }
    Ok(out)
}

/// A summary of a selection, for logs and `--summary` files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The rule.
    pub rule: String,
    /// Number of input samples.
    pub total: usize,
    /// Number of kept input samples.
    pub kept: usize,
    /// Number of added samples (SafeInstr).
    pub added: usize,
    /// Kept samples per label (`none` for unlabelled), when samples are known.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kept_by_label: std::collections::BTreeMap<String, usize>,
    /// Cut samples per label, when samples are known.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cut_by_label: std::collections::BTreeMap<String, usize>,
    /// How to fine-tune on the selection.
    pub objective: Objective,
    /// [`kept_set_sha256`] of the kept positions.
    pub kept_sha256: String,
}

impl Summary {
    /// Summarises `selection` of `input`.
    pub fn new(input: &SelectionInput, selection: &Selection) -> Self {
        let mut kept_by_label = std::collections::BTreeMap::new();
        let mut cut_by_label = std::collections::BTreeMap::new();
        if let Some(samples) = input.samples() {
            for (s, e) in samples.iter().zip(&selection.entries) {
                let key = s.label.map_or("none", Label::as_str).to_string();
                let map = if e.kept {
                    &mut kept_by_label
                } else {
                    &mut cut_by_label
                };
                *map.entry(key).or_insert(0) += 1;
            }
        }
        Self {
            rule: selection.rule.clone(),
            total: selection.len(),
            kept: selection.num_kept(),
            added: selection.added.len(),
            kept_by_label,
            cut_by_label,
            objective: selection.objective,
            kept_sha256: kept_set_sha256(&selection.kept_indices()),
        }
    }

    /// Writes the summary as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| SelectError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        fsutil::write_atomic(path, &text)?;
        Ok(())
    }
}
