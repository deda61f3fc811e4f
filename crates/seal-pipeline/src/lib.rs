//! # seal-pipeline
//!
//! SEAL end to end (Shen, Chen, Das, Chen, ICLR 2025, "SEAL: Safety-enhanced
//! Aligned LLM Fine-tuning via Bilevel Data Selection"; reference code
//! <https://github.com/hanshen95/SEAL>): the stages the other crates provide,
//! wired into the experiment users came for.
//!
//! 1. **Alignment** ([`stages::align`]): SmolLM2-135M-Instruct barely refuses
//!    harmful requests, so it has little safety to lose. As the paper's own
//!    Pythia pipeline (aligned on HH-RLHF first), the pipeline first aligns
//!    it: LoRA SFT on `align.jsonl` (refusals plus benign instructions),
//!    merged into the base and cached.
//! 2. **Ranking** ([`stages::rank`]): SEAL's data ranker, trained by the
//!    memory-efficient or the full penalty solver of `seal-bilevel`, or any
//!    solver a user registers ([`PipelineSolver`]).
//! 3. **Selection** ([`stages::select`]): SEAL's top-p and the baselines of
//!    `seal-select` ([`Method`]), and any rule a user registers
//!    ([`MethodRegistry`], [`PipelineMethod`]).
//! 4. **Fine-tuning** ([`stages::finetune_on`]): a fresh LoRA on each
//!    selection, from the aligned model.
//! 5. **Evaluation** ([`stages::evaluate`]): attack success rate, over-refusal,
//!    utility NLL, GSM8K accuracy under the keyword rule and the configured
//!    judges ([`PipelineJudge`]); ranker AUROC.
//!
//! Every training stage takes its optimiser by name ([`PipelineOptimizer`]).
//! The [`registry`] module maps the names configs use to these trait
//! objects; built-ins and a user's own are registered the same way.
//! 6. **Report** ([`report`]): Markdown and JSON with mean ± std over seeds,
//!    the benchmark's goals checked, and SVG figures.
//!
//! [`sweep`] ranks one pool at several λ schedules (AUROC against λ).
//!
//! [`run()`] runs it all from a [`PipelineConfig`] (TOML: `seal pipeline
//! --config FILE`; in code: [`PipelineConfig::demo`]). See
//! `docs/pipeline.md`.
//!
//! # Example
//!
//! A configuration from TOML (every key has a default; see
//! `docs/pipeline.md`); [`run()`] would then align, rank, select, fine-tune,
//! evaluate and write the report.
//!
//! ```
//! use seal_pipeline::{Method, PipelineConfig};
//! use std::path::Path;
//!
//! let text = r#"
//! seeds = [1, 2]
//! [select]
//! methods = ["seal", "random"]
//! "#;
//! let config = PipelineConfig::from_toml(text, Path::new("example.toml"), Path::new("."))?;
//! assert_eq!(config.seeds, vec![1, 2]);
//! assert_eq!(config.select.methods, [Method::Seal, Method::Random].map(String::from));
//! # Ok::<(), seal_pipeline::PipelineError>(())
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod dose;
pub mod error;
pub mod registry;
pub mod report;
pub mod results;
pub mod run;
pub mod stages;
pub mod sweep;

pub use config::{Method, PipelineConfig, Solver};
pub use error::{PipelineError, Result};
pub use registry::{
    register_judge, register_method, register_optimizer, register_solver, registered_judges,
    registered_methods, registered_optimizers, registered_solvers, MethodNeeds, MethodRegistry,
    NameRegistry, OptimizerSettings, PipelineJudge, PipelineMethod, PipelineOptimizer,
    PipelineSolver,
};
pub use run::{run, run_with, MethodRun, PipelineResult, RankerRun, RunOptions, SetWinRate};
