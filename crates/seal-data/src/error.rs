//! The error type of seal-data. Every variant names the file, line, field or
//! token that is at fault, so users can fix their input.

use std::path::PathBuf;

/// Errors raised by seal-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file or line could not be parsed.
    #[error("{path}{}: invalid JSON: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line for JSONL files.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when known.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// A required field is missing or has the wrong type.
    #[error("{path}{}: field `{field}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line (JSONL) or record index (JSON arrays), when known.
        line: Option<usize>,
        /// The field at fault.
        field: String,
        /// What went wrong.
        message: String,
    },
    /// A file's structure is wrong outside any single field: a truncated
    /// record, an unterminated CSV quote, a transcript without turns.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A line of a text file is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8: {message}")]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// A parameter given by the caller is out of range or inconsistent
    /// (a size larger than the data allows, a zero batch size, ...).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The parameter at fault.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// An output path cannot be used: it is a directory where a file is
    /// expected, a non-empty directory, not writable, or a device that
    /// cannot take a file.
    #[error("{path}: {message}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A pre-tokenised cache file is corrupt or from another format version.
    #[error("{path}: cache: {message}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Result alias for seal-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
