//! The error type of seal-eval. Every variant names the file, line, field,
//! sample id or parameter at fault.

use std::path::PathBuf;

/// Errors raised by seal-eval.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Reading samples, tokenising or rendering a template failed.
    #[error(transparent)]
    Data(#[from] seal_data::DataError),
    /// The model failed (loading, forward pass, generation, writing files).
    #[error(transparent)]
    Model(#[from] seal_model::ModelError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an input file is malformed (bad JSON, a missing or invalid
    /// field, a duplicate id).
    #[error("{path}:{line}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field at fault (`line` for the whole record).
        field: String,
        /// What went wrong.
        message: String,
    },
    /// A sample cannot be evaluated (e.g. a GSM8K prompt without a
    /// reference answer).
    #[error("sample `{id}`: {message}")]
    Sample {
        /// The sample id.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// A parameter given by the caller is out of range or inconsistent.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The parameter at fault.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// A judge was asked for a verdict it cannot give (e.g. a pairwise
    /// preference from a keyword judge).
    #[error("judge `{judge}` does not support {what}")]
    Unsupported {
        /// The judge's name.
        judge: String,
        /// The unsupported request.
        what: String,
    },
    /// A report could not be serialised.
    #[error("report: {0}")]
    Report(String),
}

impl EvalError {
    /// An [`EvalError::Invalid`] for parameter `what`.
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// An [`EvalError::Io`] for `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for seal-eval.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
