//! The error type of seal-model. Variants name the file and tensor at fault.

use std::path::PathBuf;

/// Errors raised by seal-model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required file of a model directory is missing.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The expected file.
        path: PathBuf,
        /// What it should hold.
        what: String,
    },
    /// `config.json` (or another JSON file) is malformed or inconsistent.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's `model_type` has no registered family, or is not one
    /// the loader it was handed can read.
    #[error("{path}: unsupported model_type `{model_type}` (supported: {supported})")]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// The type found.
        model_type: String,
        /// What would have been accepted, comma-separated.
        supported: String,
    },
    /// A tensor is missing from a checkpoint.
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor {
        /// The checkpoint file (or index).
        path: PathBuf,
        /// The tensor name.
        tensor: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A safetensors file is malformed or uses an unsupported dtype.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file is malformed, truncated or uses an unsupported feature.
    #[error("{path}: GGUF: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the tensor or metadata key when known).
        message: String,
    },
    /// Tokenizer or chat template problems.
    #[error(transparent)]
    Data(#[from] seal_data::DataError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Invalid arguments to a model API (shapes of inputs, options).
    #[error("{0}")]
    InvalidInput(String),
    /// The model does not offer this capability.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for seal-model.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
