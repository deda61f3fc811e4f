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
//! * [`sample`]: samples with stable ids, sources and labels; the project's
//!   JSONL format.
//! * [`readers`]: the public dataset formats (Alpaca, GSM8K, HH-RLHF,
//!   JailbreakBench, AdvBench, ...).
//! * [`tokenize`]: chat-templated tokenisation with response-only loss masks;
//!   [`cache`]: its on-disk cache.
//! * [`batch`]: length-bucketed padded batches, packed batches, samplers.
//! * [`mixture`] and [`benchmark`]: labelled fine-tuning mixtures and the
//!   project's standard benchmark; [`embedded`]: the built-in demo dataset.
//! * [`ranking`]: AUROC and top-k on score lists, shared by solvers, rules
//!   and metrics.
//! * [`judgments`]: human-labelled (prompt, response) pairs for harm and
//!   refusal judges, with a fixed split by prompt.
//! * [`error`]: the crate's error type.

pub mod batch;
pub mod benchmark;
pub mod cache;
pub mod chat;
pub mod embedded;
pub mod error;
pub mod fsutil;
pub mod judgments;
pub mod mixture;
pub mod ranking;
pub mod readers;
pub mod rng;
pub mod sample;
pub mod testing;
pub mod tokenize;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message, Role};
pub use error::{DataError, Result};
pub use readers::{read_samples, Format, ReadOptions, ReadReport};
pub use sample::{read_jsonl_samples, write_jsonl_samples, Label, Sample};
pub use tokenizer::TextTokenizer;
