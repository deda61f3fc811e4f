//! # seal-model
//!
//! Llama-family causal language models on libtorch for seal-rs.
pub mod error;
pub mod gguf;
pub use error::{ModelError, Result};
