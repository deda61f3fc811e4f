//! The error type of seal-bilevel. Variants name the file, tensor or field
//! at fault.

use std::path::PathBuf;

/// Errors raised by seal-bilevel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BilevelError {
    /// A model-layer failure (weights, LoRA, libtorch through the model).
    #[error(transparent)]
    Model(#[from] seal_model::ModelError),
    /// A data-layer failure (samples, tokenisation, batching).
    #[error(transparent)]
    Data(#[from] seal_data::DataError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file has the wrong structure (a `.pt` archive, a ranker or
    /// checkpoint file); the message names the entry, tensor or field.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint or ranker does not belong to this run (other data, other
    /// settings).
    #[error("{path}: {message}")]
    Mismatch {
        /// The checkpoint or ranker file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// A loss or gradient became NaN or infinite; training stopped before the
    /// offending update, and the last checkpoint (if any) is intact.
    #[error("non-finite {what} at step {step}{}{}", if samples.is_empty() { String::new() } else { format!(" (fine-tuning samples of the step: {})", samples.join(", ")) }, checkpoint.as_ref().map(|p| format!("; last good checkpoint: {}", p.display())).unwrap_or_else(|| "; no checkpoint was written yet".into()))]
    NonFinite {
        /// The quantity (e.g. `upper-level loss`).
        what: String,
        /// The optimiser step (0-based) being computed.
        step: usize,
        /// Ids of the fine-tuning samples of that step (filled in by the
        /// [`crate::Trainer`]), to find a poisoned sample.
        samples: Vec<String>,
        /// The last complete checkpoint directory.
        checkpoint: Option<PathBuf>,
    },
    /// The conjugate-gradient inverse met a direction of non-positive
    /// curvature of the damped lower-level Hessian: `θ` is not at a strict
    /// local minimum of the lower level, so the implicit hypergradient is
    /// undefined there (returning the partial solution would be silently
    /// wrong, a zero vector at the first iteration).
    #[error("non-positive curvature pᵀ(H + δI)p = {curvature:e} at conjugate-gradient iteration {iteration}: the lower level is not at a strict minimum; raise the damping δ or take more inner steps")]
    NonPositiveCurvature {
        /// The CG iteration (0-based).
        iteration: usize,
        /// `pᵀ(H + δI)p` along the search direction.
        curvature: f64,
    },
    /// Invalid arguments or configuration.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The parameter at fault.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl BilevelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`BilevelError::Invalid`] error.
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// A [`BilevelError::Format`] error.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias for seal-bilevel.
pub type Result<T, E = BilevelError> = std::result::Result<T, E>;
