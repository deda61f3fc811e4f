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
//!
//! # Example
//!
//! ```
//! use seal_data::ranking::{auroc, top_k};
//! use seal_data::{read_jsonl_samples, write_jsonl_samples, Label, Message, Sample};
//!
//! let sample = Sample {
//!     id: "demo:00000".into(),
//!     source: "demo".into(),
//!     label: Some(Label::Benign),
//!     messages: vec![Message::user("Add 2 and 3."), Message::assistant("5")],
//!     reference: Some("5".into()),
//!     prefill: None,
//! };
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("samples.jsonl");
//! write_jsonl_samples(&path, &[sample.clone()])?;
//! assert_eq!(read_jsonl_samples(&path)?, vec![sample]);
//! // A ranker's scores: benign (first list) should score above harmful.
//! assert_eq!(auroc(&[0.9, 0.7], &[0.1]), Some(1.0));
//! assert_eq!(top_k(&[0.9, 0.1, 0.7], 2), vec![0, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
