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
//!
//! # Example
//!
//! SEAL's penalty solver on a weighted ridge regression whose fine-tuning
//! set has 20% flipped targets: the ranker puts them at the bottom.
//!
//! ```
//! use seal_bilevel::metrics::auroc;
//! use seal_bilevel::ranker::fingerprint_ids;
//! use seal_bilevel::ridge::RidgeProblem;
//! use seal_bilevel::{
//!     Activation, LambdaSchedule, Ranker, RankerConfig, SealPenalty, TrainConfig, Trainer,
//! };
//! use seal_model::optim::AdamWConfig;
//! use tch::{Device, Kind};
//!
//! let n = 200;
//! let corrupted: Vec<usize> = (0..n).filter(|i| i % 5 == 2).collect();
//! let problem = RidgeProblem::synthetic(n, 200, 5, 0.02, &corrupted, 7)?;
//! let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
//! let ranker = Ranker::new(ids.clone(), fingerprint_ids(&ids), Activation::Softmax, Kind::Double, Device::Cpu)?;
//! // The settings are `#[non_exhaustive]`: start from the defaults, set fields.
//! let mut ranker_config = RankerConfig::default();
//! ranker_config.lr = 0.05;
//! let mut config = TrainConfig::default();
//! config.epochs = 40;
//! config.micro_batch = 40;
//! config.seed = 5;
//! config.model_optimizer = AdamWConfig { lr: 0.05, beta2: 0.95, ..AdamWConfig::default() };
//! config.ranker = ranker_config;
//! config.lambda = LambdaSchedule { start: 0.9, decay_per_epoch: 0.0 };
//! config.progress = false;
//! let mut trainer = Trainer::new(problem, Box::new(SealPenalty), ranker, config)?;
//! trainer.run()?;
//! let clean: Vec<bool> = (0..n).map(|i| i % 5 != 2).collect();
//! let score = auroc(&trainer.ranker().logits_vec()?, &clean).unwrap();
//! assert!(score > 0.95, "AUROC {score}");
//! # Ok::<(), seal_bilevel::BilevelError>(())
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod finetune;
pub mod lm;
pub mod metrics;
pub mod official;
pub mod plan;
pub mod preset;
pub mod problem;
pub mod ranker;
pub mod ridge;
pub mod schedule;
pub mod solver;
pub mod torch_pt;
pub mod train;

pub use error::{BilevelError, Result};
pub use finetune::{finetune, keep_by_id, SftData, SftOutcome, SftStep, SftTrainer, WeightedSft};
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
