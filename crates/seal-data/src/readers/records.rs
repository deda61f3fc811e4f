//! Splitting JSON, JSONL and CSV files into records that remember the line
//! they start on, so errors can name it.

use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, Result};
use crate::fsutil;

/// One record of a file, or the reason it could not be parsed.
pub(crate) struct Record {
    /// 1-based line the record starts on.
    pub line: usize,
    /// 0-based position among the file's records (blank lines excluded).
    pub ordinal: usize,
    /// The parsed record, or a per-record error (skippable in lenient mode).
    pub value: Result<Value>,
}

/// Parses a JSON array file or a JSONL file (detected by the first
/// non-whitespace byte being `[`). A malformed JSONL line is a per-record
/// error; a malformed JSON array is fatal (the rest cannot be resynchronised).
pub(crate) fn json_records(path: &Path, bytes: &[u8]) -> Result<Vec<Record>> {
    let first = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(bytes)
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    if first == Some(b'[') {
        let text = fsutil::utf8(path, bytes)?;
        json_array(path, text)
    } else {
        Ok(jsonl(path, bytes))
    }
}

fn jsonl(path: &Path, bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    for line in fsutil::lines(path, bytes) {
        match line {
            Err(e) => {
                let no = match &e {
                    DataError::Utf8 { line, .. } => *line,
                    _ => 0,
                };
                out.push(Record {
                    line: no,
                    ordinal: out.len(),
                    value: Err(e),
                });
            }
            Ok((no, text)) => {
                if text.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str::<Value>(text).map_err(|e| DataError::Json {
                    path: path.to_path_buf(),
                    line: Some(no),
                    message: e.to_string(),
                });
                out.push(Record {
                    line: no,
                    ordinal: out.len(),
                    value,
                });
            }
        }
    }
    out
}

fn count_nl(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while pos < b.len() && b[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

fn json_array(path: &Path, text: &str) -> Result<Vec<Record>> {
    let b = text.as_bytes();
    let bad = |line: usize, message: String| DataError::Json {
        path: path.to_path_buf(),
        line: Some(line),
        message,
    };
    let mut pos = skip_ws(b, 0);
    let mut line = 1 + count_nl(&b[..pos]);
    if b.get(pos) != Some(&b'[') {
        return Err(bad(line, "expected a JSON array".into()));
    }
    pos += 1;
    let mut out = Vec::new();
    loop {
        let next = skip_ws(b, pos);
        line += count_nl(&b[pos..next]);
        pos = next;
        match b.get(pos) {
            None => return Err(bad(line, "unexpected end of file inside the array".into())),
            Some(b']') if out.is_empty() => break,
            _ => {}
        }
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                let end = pos + stream.byte_offset();
                out.push(Record {
                    line,
                    ordinal: out.len(),
                    value: Ok(v),
                });
                line += count_nl(&b[pos..end]);
                pos = end;
            }
            Some(Err(e)) => {
                return Err(bad(line + e.line().saturating_sub(1), e.to_string()));
            }
            None => return Err(bad(line, "unexpected end of file inside the array".into())),
        }
        let next = skip_ws(b, pos);
        line += count_nl(&b[pos..next]);
        pos = next;
        match b.get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => break,
            Some(c) => {
                return Err(bad(
                    line,
                    format!("expected `,` or `]`, found `{}`", *c as char),
                ))
            }
            None => return Err(bad(line, "unexpected end of file inside the array".into())),
        }
    }
    let rest = skip_ws(b, pos + 1);
    if rest < b.len() {
        return Err(bad(
            line + count_nl(&b[pos..rest]),
            "trailing characters after the array".into(),
        ));
    }
    Ok(out)
}

/// A CSV row: the 1-based line it starts on and its cells.
pub(crate) struct CsvRow {
    /// 1-based line the row starts on.
    pub line: usize,
    /// The cells, unquoted.
    pub cells: Vec<String>,
}

/// Parses RFC 4180 CSV (quoted cells with `""` escapes, newlines inside
/// quotes). Blank lines are skipped.
pub(crate) fn csv_rows(path: &Path, bytes: &[u8]) -> Result<Vec<CsvRow>> {
    let text = fsutil::utf8(path, bytes)?;
    let mut rows = Vec::new();
    let mut cells: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut in_quotes = false;
    let mut quoted_cell = false;
    let mut line = 1usize;
    let mut row_line = 1usize;
    let mut chars = text.chars().peekable();
    let finish_row = |cells: &mut Vec<String>, cell: &mut String, rows: &mut Vec<CsvRow>, l| {
        cells.push(std::mem::take(cell));
        let row = std::mem::take(cells);
        if !(row.len() == 1 && row[0].trim().is_empty()) {
            rows.push(CsvRow {
                line: l,
                cells: row,
            });
        }
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    cell.push(c);
                }
                _ => cell.push(c),
            }
            continue;
        }
        match c {
            '"' if cell.is_empty() && !quoted_cell => {
                in_quotes = true;
                quoted_cell = true;
            }
            ',' => {
                cells.push(std::mem::take(&mut cell));
                quoted_cell = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                finish_row(&mut cells, &mut cell, &mut rows, row_line);
                quoted_cell = false;
                line += 1;
                row_line = line;
            }
            _ => cell.push(c),
        }
    }
    if in_quotes {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            line: Some(row_line),
            message: "unterminated quoted cell".into(),
        });
    }
    if !cell.is_empty() || !cells.is_empty() {
        finish_row(&mut cells, &mut cell, &mut rows, row_line);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_lines_are_tracked() {
        let text = b"[\n  {\"a\": 1},\n  {\"a\":\n 2}, {\"a\": 3}\n]\n";
        let recs = json_records(Path::new("f.json"), text).unwrap();
        let lines: Vec<_> = recs.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert_eq!(recs[2].value.as_ref().unwrap()["a"], 3);

        let broken = b"[\n {\"a\": 1},\n {\"a\" 2}\n]";
        let e = json_records(Path::new("f.json"), broken).err().unwrap();
        assert!(matches!(e, DataError::Json { line: Some(3), .. }), "{e}");
        assert!(json_records(Path::new("f.json"), b"[{\"a\":1}").is_err());
        assert!(json_records(Path::new("f.json"), b"[]").unwrap().is_empty());
    }

    #[test]
    fn jsonl_bad_line_is_per_record() {
        let recs = json_records(Path::new("f.jsonl"), b"{\"a\":1}\n\nnot json\n{\"a\":2}").unwrap();
        assert_eq!(recs.len(), 3);
        assert!(recs[1].value.is_err());
        assert_eq!((recs[1].line, recs[1].ordinal), (3, 1));
        assert_eq!((recs[2].line, recs[2].ordinal), (4, 2));
    }

    #[test]
    fn csv_quotes_and_newlines() {
        let rows = csv_rows(
            Path::new("f.csv"),
            b"plain,x\n\"a, \"\"b\"\"\nc\",y\r\n\nlast",
        )
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].cells, vec!["plain", "x"]);
        assert_eq!(rows[1].cells, vec!["a, \"b\"\nc", "y"]);
        assert_eq!(rows[2].line, 5);
        assert!(csv_rows(Path::new("f.csv"), b"\"open").is_err());
    }
}
