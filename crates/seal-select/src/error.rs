//! The error type of seal-select. Every variant names the rule, parameter,
//! file or sample id at fault.

use std::path::PathBuf;

/// Errors raised by seal-select.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// A data-layer failure (reading samples, tokenising, writing files).
    #[error(transparent)]
    Data(#[from] seal_data::DataError),
    /// A model-layer failure (the loss-based baseline's forward passes).
    #[cfg(feature = "torch")]
    #[error(transparent)]
    Model(#[from] seal_model::ModelError),
    /// A ranker failure (loading a ranker directory).
    #[cfg(feature = "torch")]
    #[error(transparent)]
    Bilevel(#[from] seal_bilevel::BilevelError),
    /// A libtorch operation failed.
    #[cfg(feature = "torch")]
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A parameter of a rule is out of range (e.g. `p` outside `(0, 1]`).
    #[error("rule `{rule}`: invalid {param}: {message}")]
    Param {
        /// The rule.
        rule: String,
        /// The parameter at fault (`p`, `k`, `threshold`, ...).
        param: String,
        /// What is wrong.
        message: String,
    },
    /// The input lacks what a rule needs, or is inconsistent (lengths,
    /// duplicate ids, a NaN score, an unlabelled sample for the oracle).
    #[error("rule `{rule}`: {message}")]
    Input {
        /// The rule.
        rule: String,
        /// What is missing or wrong; names the sample id where one is at fault.
        message: String,
    },
    /// The rule would keep no sample at all.
    #[error("rule `{rule}` keeps no sample of {total}: {reason}")]
    EmptySelection {
        /// The rule.
        rule: String,
        /// Number of samples in the input.
        total: usize,
        /// Why nothing is kept.
        reason: String,
    },
    /// A ranker does not belong to the dataset it is applied to (other ids,
    /// other order, other content).
    #[error("ranker {ranker} does not match dataset {dataset}: {message}")]
    Mismatch {
        /// The ranker (directory or description).
        ranker: String,
        /// The dataset (file or description).
        dataset: String,
        /// What differs (first differing position and ids, or fingerprints).
        message: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl SelectError {
    /// A [`SelectError::Param`] error.
    pub fn param(
        rule: impl Into<String>,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Param {
            rule: rule.into(),
            param: param.into(),
            message: message.into(),
        }
    }

    /// A [`SelectError::Input`] error.
    pub fn input(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            rule: rule.into(),
            message: message.into(),
        }
    }
}

/// Result alias for seal-select.
pub type Result<T, E = SelectError> = std::result::Result<T, E>;
