//! # seal-data
//!
//! Data layer of seal-rs, the Rust implementation of SEAL (Shen, Chen, Das,
//! Chen, ICLR 2025, "Safety-enhanced Aligned LLM Fine-tuning via Bilevel Data
//! Selection"; reference code: <https://github.com/hanshen95/SEAL>).
//!
//! This crate knows no libtorch, so data tools build fast and run anywhere:
//!
//! * [`chat`]: conversations ([`chat::Message`], [`chat::Role`]) and Hugging
//!   Face chat templates rendered with minijinja, as transformers'
//!   `apply_chat_template` renders them.
//! * [`tokenizer`]: a `tokenizers` tokenizer paired with its chat template and
//!   special tokens, loaded from an HF model directory.
//! * [`error`]: the crate's error type.

pub mod chat;
pub mod error;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message, Role};
pub use error::{DataError, Result};
pub use tokenizer::TextTokenizer;
