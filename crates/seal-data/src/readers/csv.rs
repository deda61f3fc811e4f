//! CSV formats: AdvBench (`goal,target`) and the header-named tables
//! (PKU-SafeRLHF, HarmBench, StrongREJECT, XSTest).

use super::*;

/// AdvBench: one harmful prompt per row, an optional `goal` header.
pub(super) fn read_advbench(ctx: &Ctx<'_>, bytes: &[u8], report: &mut ReadReport) -> Result<()> {
    let path = ctx.path;
    let opts = ctx.opts;
    for row in records::csv_rows(path, bytes)? {
        let ordinal = report.samples.len() + report.skipped.len();
        let first = row.cells.first().map(|c| c.trim()).unwrap_or("");
        if ordinal == 0 && first.eq_ignore_ascii_case("goal") {
            continue; // the original AdvBench header `goal,target`
        }
        let result = if first.is_empty() {
            Err(ctx.field(Some(row.line), "column 1", "empty prompt"))
        } else {
            let s = ctx.sample(
                ordinal,
                vec![Message::user(first)],
                Some(opts.label.unwrap_or(Label::Harmful)),
                None,
            );
            Ok(Some(s))
        };
        ctx.push(report, Some(row.line), ordinal, result)?;
    }
    Ok(())
}

/// A table whose header names its columns.
pub(super) fn read_table(
    ctx: &Ctx<'_>,
    format: Format,
    bytes: &[u8],
    report: &mut ReadReport,
) -> Result<()> {
    let path = ctx.path;
    let rows = records::csv_rows(path, bytes)?;
    let mut rows = rows.into_iter();
    let header = rows
        .next()
        .ok_or_else(|| ctx.field(Some(1), "(header)", "empty file: no header row"))?;
    let table = CsvTable::new(ctx, format, &header)?;
    for (ordinal, row) in rows.enumerate() {
        let result = table.convert(ctx, format, ordinal, &row).map(Some);
        ctx.push(report, Some(row.line), ordinal, result)?;
    }
    Ok(())
}

/// The columns a headed CSV format reads, found by name in its header.
pub(super) struct CsvTable {
    /// (column name, index) of every column the format needs.
    columns: Vec<(&'static str, usize)>,
    /// Optional columns that are present.
    optional: Vec<(&'static str, usize)>,
}

impl CsvTable {
    fn new(ctx: &Ctx<'_>, format: Format, header: &records::CsvRow) -> Result<Self> {
        let (needed, optional): (&[&'static str], &[&'static str]) = match format {
            Format::SafeRlhf => (&["question", "answer", "label"], &[]),
            Format::HarmBench => (&["Behavior", "FunctionalCategory"], &["ContextString"]),
            Format::StrongReject => (&["forbidden_prompt"], &[]),
            _ => (&["prompt", "label"], &[]),
        };
        let find = |name: &str| {
            header
                .cells
                .iter()
                .position(|c| c.trim().trim_start_matches('\u{feff}') == name)
        };
        let mut columns = Vec::new();
        for &name in needed {
            let i = find(name).ok_or_else(|| {
                ctx.field(
                    Some(header.line),
                    name,
                    format!(
                        "missing column in the {format} header (found: {})",
                        header.cells.join(",")
                    ),
                )
            })?;
            columns.push((name, i));
        }
        let optional = optional
            .iter()
            .filter_map(|&n| find(n).map(|i| (n, i)))
            .collect();
        Ok(Self { columns, optional })
    }

    /// The cell of a needed column (an error when the row is too short).
    fn cell<'r>(&self, ctx: &Ctx<'_>, row: &'r records::CsvRow, name: &str) -> Result<&'r str> {
        let i = self
            .columns
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| *i)
            .unwrap_or(usize::MAX);
        row.cells.get(i).map(String::as_str).ok_or_else(|| {
            ctx.field(
                Some(row.line),
                name,
                format!("missing: the row has {} cells", row.cells.len()),
            )
        })
    }

    fn nonempty<'r>(&self, ctx: &Ctx<'_>, row: &'r records::CsvRow, name: &str) -> Result<&'r str> {
        let v = self.cell(ctx, row, name)?;
        if v.trim().is_empty() {
            Err(ctx.field(Some(row.line), name, "empty"))
        } else {
            Ok(v)
        }
    }

    fn convert(
        &self,
        ctx: &Ctx<'_>,
        format: Format,
        ordinal: usize,
        row: &records::CsvRow,
    ) -> Result<Sample> {
        let line = Some(row.line);
        match format {
            Format::SafeRlhf => {
                let q = self.nonempty(ctx, row, "question")?;
                let a = self.nonempty(ctx, row, "answer")?;
                let label = match self.cell(ctx, row, "label")?.trim() {
                    "1" => Label::Harmful,
                    "0" => Label::Benign,
                    other => {
                        return Err(ctx.field(
                            line,
                            "label",
                            format!(
                                "expected 0 (safe answer) or 1 (unsafe answer), found `{other}`"
                            ),
                        ))
                    }
                };
                Ok(ctx.sample(
                    ordinal,
                    vec![Message::user(q), Message::assistant(a)],
                    Some(label),
                    None,
                ))
            }
            Format::HarmBench => {
                let behaviour = self.nonempty(ctx, row, "Behavior")?;
                let category = self.nonempty(ctx, row, "FunctionalCategory")?.trim();
                let context = self
                    .optional
                    .iter()
                    .find(|(n, _)| *n == "ContextString")
                    .and_then(|(_, i)| row.cells.get(*i))
                    .map(|c| c.trim())
                    .unwrap_or("");
                // HarmBench's own prompt layout for contextual behaviours.
                let prompt = if context.is_empty() {
                    behaviour.to_string()
                } else {
                    format!("{context}\n\n---\n\n{behaviour}")
                };
                let mut s = ctx.sample(
                    ordinal,
                    vec![Message::user(prompt)],
                    Some(ctx.opts.label.unwrap_or(Label::Harmful)),
                    None,
                );
                s.source = format!("{}/{}", ctx.source, category.to_ascii_lowercase());
                s.id = format!("{}:{ordinal:05}", s.source);
                Ok(s)
            }
            Format::StrongReject => {
                let p = self.nonempty(ctx, row, "forbidden_prompt")?;
                Ok(ctx.sample(
                    ordinal,
                    vec![Message::user(p)],
                    Some(ctx.opts.label.unwrap_or(Label::Harmful)),
                    None,
                ))
            }
            _ => {
                let p = self.nonempty(ctx, row, "prompt")?;
                let label = match self.cell(ctx, row, "label")?.trim() {
                    "safe" => Label::Benign,
                    "unsafe" => Label::Harmful,
                    other => {
                        return Err(ctx.field(
                            line,
                            "label",
                            format!("expected safe or unsafe, found `{other}`"),
                        ))
                    }
                };
                Ok(ctx.sample(ordinal, vec![Message::user(p)], Some(label), None))
            }
        }
    }
}
