//! Evaluation reports: a [`Report`] of titled sections holding paragraphs,
//! named metrics, tables and SVG figures, rendered as Markdown (for people)
//! and JSON (for scripts), and written atomically.
//!
//! The JSON form is `{"title", "metrics": {"<section>.<metric>": value},
//! "sections": [{"title", "key", "blocks": [...]}]}`: the flat `metrics`
//! map is what comparisons across runs read. Figures are stored next to the
//! report files and referenced by relative path.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};

/// A named value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Machine key, unique within its section (e.g. `attack_success_rate`).
    pub key: String,
    /// Human label (e.g. `Attack success rate`).
    pub label: String,
    /// The value (a number, string, bool or null for "not available").
    pub value: Value,
}

/// A table of JSON cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; its length must match the columns.
    pub fn row(&mut self, cells: Vec<Value>) -> Result<&mut Self> {
        if cells.len() != self.columns.len() {
            return Err(EvalError::invalid(
                "table row",
                format!(
                    "{} cells for {} columns ({})",
                    cells.len(),
                    self.columns.len(),
                    self.columns.join(", ")
                ),
            ));
        }
        self.rows.push(cells);
        Ok(self)
    }
}

/// One element of a section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Block {
    /// Markdown text.
    Paragraph {
        /// The text.
        text: String,
    },
    /// Named values, rendered as a two-column table.
    Metrics {
        /// The values.
        items: Vec<Metric>,
    },
    /// A table.
    Table {
        /// The table.
        table: Table,
    },
    /// An SVG figure written next to the report.
    Figure {
        /// Path of the SVG file relative to the report directory.
        file: String,
        /// Caption.
        caption: String,
        /// The SVG document (written by [`Report::write`]).
        #[serde(skip)]
        svg: String,
    },
}

/// A titled part of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Title.
    pub title: String,
    /// Machine key (the title in lowercase, non-alphanumerics as `_`).
    pub key: String,
    /// Content, in order.
    pub blocks: Vec<Block>,
}

/// The machine key of a title: lowercase ASCII alphanumerics, other runs as
/// one `_`.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

impl Section {
    /// Adds a paragraph of Markdown.
    pub fn paragraph(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Paragraph { text: text.into() });
        self
    }

    /// Adds a metric (consecutive metrics share one table).
    pub fn metric(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        value: impl Into<Value>,
    ) -> &mut Self {
        let m = Metric {
            key: key.into(),
            label: label.into(),
            value: value.into(),
        };
        match self.blocks.last_mut() {
            Some(Block::Metrics { items }) => items.push(m),
            _ => self.blocks.push(Block::Metrics { items: vec![m] }),
        }
        self
    }

    /// Adds a table.
    pub fn table(&mut self, table: Table) -> &mut Self {
        self.blocks.push(Block::Table { table });
        self
    }

    /// Adds an SVG figure stored as `file` (relative to the report
    /// directory, e.g. `scores.svg`).
    pub fn figure(
        &mut self,
        file: impl Into<String>,
        caption: impl Into<String>,
        svg: String,
    ) -> &mut Self {
        self.blocks.push(Block::Figure {
            file: file.into(),
            caption: caption.into(),
            svg,
        });
        self
    }

    /// The section's metrics, in order.
    pub fn metrics(&self) -> impl Iterator<Item = &Metric> {
        self.blocks.iter().flat_map(|b| match b {
            Block::Metrics { items } => items.as_slice(),
            _ => &[],
        })
    }
}

/// An evaluation report (see the module docs).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Title.
    pub title: String,
    /// Sections, in order.
    pub sections: Vec<Section>,
}

/// Formats a value for Markdown: floats with 4 decimals, null as `n/a`.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::Null => "n/a".into(),
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) => format!("{f:.4}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cell(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace("\r\n", "\n")
        .replace('\n', "<br>")
}

fn check_figure_path(file: &str) -> Result<PathBuf> {
    let p = Path::new(file);
    let ok = !file.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && p.extension().is_some_and(|e| e == "svg");
    if !ok {
        return Err(EvalError::invalid(
            "figure file",
            format!(
                "`{file}` (must be a relative path inside the report directory ending in .svg)"
            ),
        ));
    }
    Ok(p.to_path_buf())
}

impl Report {
    /// An empty report.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            sections: Vec::new(),
        }
    }

    /// Appends a section and returns it for filling.
    pub fn section(&mut self, title: impl Into<String>) -> &mut Section {
        let title = title.into();
        let key = slug(&title);
        self.sections.push(Section {
            title,
            key,
            blocks: Vec::new(),
        });
        let last = self.sections.len() - 1;
        &mut self.sections[last]
    }

    /// All metrics, keyed `<section key>.<metric key>`. Duplicate keys are
    /// an error.
    pub fn metrics(&self) -> Result<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        for s in &self.sections {
            for m in s.metrics() {
                let key = format!("{}.{}", s.key, m.key);
                if out.insert(key.clone(), m.value.clone()).is_some() {
                    return Err(EvalError::Report(format!("duplicate metric key `{key}`")));
                }
            }
        }
        Ok(out)
    }

    /// The JSON form (see the module docs).
    pub fn to_json(&self) -> Result<Value> {
        let sections =
            serde_json::to_value(&self.sections).map_err(|e| EvalError::Report(e.to_string()))?;
        Ok(serde_json::json!({
            "title": self.title,
            "metrics": self.metrics()?,
            "sections": sections,
        }))
    }

    /// The Markdown form.
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# {}\n", self.title);
        for s in &self.sections {
            md.push_str(&format!("\n## {}\n", s.title));
            for b in &s.blocks {
                md.push('\n');
                match b {
                    Block::Paragraph { text } => {
                        md.push_str(text.trim_end());
                        md.push('\n');
                    }
                    Block::Metrics { items } => {
                        md.push_str("| Metric | Value |\n|---|---:|\n");
                        for m in items {
                            md.push_str(&format!(
                                "| {} | {} |\n",
                                cell(&m.label),
                                cell(&format_value(&m.value))
                            ));
                        }
                    }
                    Block::Table { table } => {
                        let head: Vec<String> = table.columns.iter().map(|c| cell(c)).collect();
                        md.push_str(&format!("| {} |\n", head.join(" | ")));
                        md.push_str(&format!("|{}\n", "---|".repeat(table.columns.len())));
                        for r in &table.rows {
                            let cells: Vec<String> =
                                r.iter().map(|v| cell(&format_value(v))).collect();
                            md.push_str(&format!("| {} |\n", cells.join(" | ")));
                        }
                    }
                    Block::Figure { file, caption, .. } => {
                        md.push_str(&format!("![{}]({file})\n", cell(caption)));
                    }
                }
            }
        }
        md
    }

    /// Writes the figures, then `<stem>.md` and `<stem>.json`, into `dir`
    /// (created if needed), each atomically. Returns the report paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let json = self.to_json()?;
        for s in &self.sections {
            for b in &s.blocks {
                if let Block::Figure { file, svg, .. } = b {
                    let rel = check_figure_path(file)?;
                    seal_model::weights::write_atomic(&dir.join(rel), svg.as_bytes())?;
                }
            }
        }
        let md_path = dir.join(format!("{stem}.md"));
        let json_path = dir.join(format!("{stem}.json"));
        seal_model::weights::write_atomic(&md_path, self.to_markdown().as_bytes())?;
        seal_model::weights::write_json_atomic(&json_path, &json)?;
        Ok((md_path, json_path))
    }
}

/// The first `max_chars` characters of `text`, with `…` when cut.
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        let mut r = Report::new("Eval");
        r.section("Safety (AdvBench)")
            .paragraph("Greedy decoding.")
            .metric("asr", "Attack success rate", 0.25)
            .metric("n", "Prompts", 4)
            .metric("auroc", "AUROC", Option::<f64>::None);
        let mut t = Table::new(["id", "response"]);
        t.row(vec!["a:1".into(), "line1\nx | y <b>".into()])
            .unwrap();
        assert!(t.row(vec!["only one".into()]).is_err());
        r.section("Utility")
            .table(t)
            .figure("plots/s.svg", "Scores", "<svg></svg>".into());
        r
    }

    #[test]
    fn markdown_and_json_agree() {
        let r = sample_report();
        let md = r.to_markdown();
        assert!(md.starts_with("# Eval\n"));
        assert!(md.contains("## Safety (AdvBench)"));
        assert!(md.contains("| Attack success rate | 0.2500 |"));
        assert!(md.contains("| Prompts | 4 |"));
        assert!(md.contains("| AUROC | n/a |"));
        assert!(md.contains("| a:1 | line1<br>x \\| y &lt;b&gt; |"), "{md}");
        assert!(md.contains("![Scores](plots/s.svg)"));
        let j = r.to_json().unwrap();
        assert_eq!(j["metrics"]["safety_advbench.asr"], 0.25);
        assert_eq!(j["metrics"]["safety_advbench.n"], 4);
        assert!(j["metrics"]["safety_advbench.auroc"].is_null());
        assert_eq!(j["sections"][1]["blocks"][0]["type"], "table");
        assert!(j["sections"][1]["blocks"][1].get("svg").is_none());
    }

    #[test]
    fn write_is_complete_and_checks_paths() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample_report();
        let (md, json) = r.write(dir.path(), "report").unwrap();
        assert_eq!(std::fs::read_to_string(md).unwrap(), r.to_markdown());
        let back: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(back, r.to_json().unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("plots/s.svg")).unwrap(),
            "<svg></svg>"
        );
        // no temporary files left behind
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");

        for bad in ["../x.svg", "/tmp/x.svg", "x.png", ""] {
            let mut r = Report::new("t");
            r.section("s").figure(bad, "c", String::new());
            assert!(r.write(dir.path(), "bad").is_err(), "{bad}");
        }
        let mut dup = Report::new("t");
        dup.section("s").metric("a", "A", 1);
        dup.section("S").metric("a", "A", 2);
        assert!(dup.to_json().is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(slug("Safety (AdvBench) — ASR"), "safety_advbench_asr");
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hé", 2), "hé");
    }
}
