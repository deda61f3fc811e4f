//! The error type of seal-pipeline. Every variant names the stage, field,
//! file or method at fault.

use std::path::{Path, PathBuf};

/// Errors raised by seal-pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A data-layer failure (reading, tokenising).
    #[error(transparent)]
    Data(#[from] seal_data::DataError),
    /// A model-layer failure (loading, LoRA, saving).
    #[error(transparent)]
    Model(#[from] seal_model::ModelError),
    /// A training failure (ranker or fine-tuning).
    #[error(transparent)]
    Bilevel(#[from] seal_bilevel::BilevelError),
    /// A selection failure.
    #[error(transparent)]
    Select(#[from] seal_select::SelectError),
    /// An evaluation failure.
    #[error(transparent)]
    Eval(#[from] seal_eval::EvalError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A configuration field is missing, malformed or out of range.
    #[error("config: {what}: {message}")]
    Config {
        /// The field (or file) at fault.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A stage cannot run on what it was given.
    #[error("{stage}: {message}")]
    Stage {
        /// The stage (`align`, `rank seal`, `finetune random`, ...).
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl PipelineError {
    pub(crate) fn config(what: &str, message: impl Into<String>) -> Self {
        Self::Config {
            what: what.into(),
            message: message.into(),
        }
    }

    pub(crate) fn stage(stage: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Stage {
            stage: stage.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The result type of seal-pipeline.
pub type Result<T> = std::result::Result<T, PipelineError>;
