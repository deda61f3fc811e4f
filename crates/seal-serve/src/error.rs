//! The error type of seal-serve: what can go wrong starting or running the
//! server (request errors are answered to the client in OpenAI's format,
//! see [`crate::protocol::ApiError`], and never surface here).

/// Errors of starting, running or stopping a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A [`crate::ServeConfig`] setting is out of range.
    #[error("invalid server setting: {0}")]
    Config(String),
    /// Loading the model (or applying its adapter) failed.
    #[error("loading the model: {0}")]
    Model(#[from] seal_model::ModelError),
    /// Loading the tokenizer or its chat template failed.
    #[error("loading the tokenizer: {0}")]
    Data(#[from] seal_data::DataError),
    /// A loader failed with another error.
    #[error("loading the model: {0}")]
    Load(String),
    /// Binding the address or serving connections failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server thread panicked or stopped unexpectedly.
    #[error("internal server failure: {0}")]
    Internal(String),
}

/// `Result` with [`ServeError`].
pub type Result<T, E = ServeError> = std::result::Result<T, E>;
