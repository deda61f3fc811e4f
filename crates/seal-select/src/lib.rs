//! # seal-select
//!
//! Data selection for seal-rs, the Rust implementation of SEAL (Shen, Chen,
//! Das, Chen, ICLR 2025, "SEAL: Safety-enhanced Aligned LLM Fine-tuning via
//! Bilevel Data Selection"; reference code
//! <https://github.com/hanshen95/SEAL>): turning a trained data ranker into
//! the fine-tuning set, and the baselines the paper compares against.
//!
//! * [`rules::SelectionRule`]: one trait for every rule. SEAL's
//!   [`rules::TopP`] (the official `--topp`: keep `int(p·N)` largest logits,
//!   `p = 0.8` by default), [`rules::TopK`], [`rules::Threshold`],
//!   [`rules::SoftWeights`]; baselines [`rules::Full`], [`rules::Random`],
//!   [`rules::Stratified`] (by source), [`dsir::Dsir`] (hashed n-gram
//!   importance resampling), [`rules::SafeInstr`], [`loss::LossBased`],
//!   [`similarity::AnchorSimilarity`] (He et al.'s gradient or
//!   representation similarity to harmful and safe anchors),
//!   [`rules::MixedObjective`] (a training objective, carried as a marker)
//!   and [`rules::Oracle`] (benchmark only).
//! * [`selection`]: the rule's input ([`SelectionInput`]) and outcome
//!   ([`Selection`]: per-sample score, rank, kept flag, weight).
//! * [`check`]: a ranker applied to another dataset is an error, never a
//!   silent mis-selection; [`ranker::RankerScores`] loads a ranker as input.
//! * [`output`]: kept ids, scored JSONL, summary (all written atomically).
//!
//! Ties at the cut are broken by position (the lower index is kept), so
//! every rule is deterministic given its input and seed. See
//! `docs/selection.md`.
//!
//! # Example
//!
//! ```
//! use seal_select::rules::TopP;
//! use seal_select::{SelectionInput, SelectionRule};
//!
//! let ids: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
//! let logits = [2.0, -3.0, 1.0, 0.5, 1.5];
//! let input = SelectionInput::new(&ids)?.with_scores(&logits)?;
//! let selection = TopP { p: 0.8 }.select(&input)?;
//! // The official rule keeps int(0.8 · 5) = 4 samples: all but the lowest.
//! assert_eq!(selection.kept_ids(&input), vec!["a", "c", "d", "e"]);
//! # Ok::<(), seal_select::SelectError>(())
//! ```

#![warn(missing_docs)]

#[cfg(feature = "torch")]
mod anchor_features;
pub mod check;
pub mod dsir;
pub mod error;
#[cfg(feature = "torch")]
pub mod loss;
pub mod output;
pub mod ranker;
pub mod rules;
pub mod selection;
pub mod similarity;

pub use error::{Result, SelectError};
pub use rules::SelectionRule;
pub use selection::{Budget, Entry, Objective, Selection, SelectionInput};
