//! # seal-bilevel
//!
//! The data ranker and bilevel solvers of seal-rs, the Rust implementation of
//! SEAL (Shen, Chen, Das, Chen, ICLR 2025, "SEAL: Safety-enhanced Aligned
//! LLM Fine-tuning via Bilevel Data Selection"; reference code
//! <https://github.com/hanshen95/SEAL>, Python on OpenRLHF/DeepSpeed).
//!
//! * [`ranker`]: one logit per fine-tuning sample (softmax or sigmoid
//!   weights), saved as safetensors + JSON; [`official`]: import of the
//!   authors' `.pt` selectors (read by [`torch_pt`] without running pickle
//!   code) and `scores.jsonl`.
//! * [`problem::LowerLevel`]: what solvers need from a model; implemented by
//!   [`lm::LmProblem`] (a causal LM, LoRA or full fine-tuning) and
//!   [`ridge::RidgeProblem`] (closed-form ridge regression for exact tests).
//! * [`solver`]: the [`solver::Solver`] trait and SEAL's memory-efficient
//!   penalty method, the full penalty method and the implicit hypergradient.
//! * [`train`]: the loop (accumulation, clipping, schedules, progress, NaN
//!   stop, atomic checkpoints with bitwise-exact resume).
//! * [`metrics`]: AUROC and the official top-p kept set and its hash.
//!
//! See `docs/bilevel.md` for the algorithms and their relation to the
//! official code.

#![warn(missing_docs)]

pub mod error;
pub mod finetune;
pub mod lm;
pub mod metrics;
pub mod official;
pub mod preset;
pub mod problem;
pub mod ranker;
pub mod ridge;
pub mod schedule;
pub mod solver;
pub mod torch_pt;
pub mod train;

pub use error::{BilevelError, Result};
pub use finetune::{finetune, keep_by_id, SftData, SftOutcome, SftStep, WeightedSft};
pub use lm::{dataset_fingerprint, ForkableLm, LmProblem};
pub use preset::{RankPreset, RankSettings};
pub use problem::LowerLevel;
pub use ranker::{Activation, Ranker, RankerConfig, RankerOptimizer, RankerOptimizerKind};
pub use schedule::{LambdaSchedule, Schedule};
pub use solver::{
    FullPenaltyConfig, Implicit, ImplicitConfig, InverseMethod, SealPenalty, SealPenaltyFull,
    Solver, StepBatch, StepContext, StepStats,
};
pub use train::{EpochLength, TrainConfig, TrainReport, Trainer};
