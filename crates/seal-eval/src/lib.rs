//! # seal-eval
//!
//! Evaluation for seal-rs, the Rust implementation of SEAL (Shen, Chen, Das,
//! Chen, ICLR 2025, "SEAL: Safety-enhanced Aligned LLM Fine-tuning via
//! Bilevel Data Selection"; reference code <https://github.com/hanshen95/SEAL>).
//!
//! * [`ranker`]: how well ranker scores separate harmful from benign
//!   fine-tuning samples (AUROC, AUPRC, share of harmful samples removed
//!   when keeping the top `p`).
//! * [`refusal`], [`judge`], [`safety`]: refusal detection with the GCG
//!   refusal list and AdvBench attack success rate (Zou et al. 2023,
//!   "Universal and Transferable Adversarial Attacks on Aligned Language
//!   Models"), over-refusal on benign prompts, and the [`judge::Judge`]
//!   trait that model-based judges will implement.
//! * [`features`], [`classifier`], [`agreement`]: a trained harm and
//!   refusal judge on frozen-LM features and its agreement with human
//!   labels; [`coherence`]: degenerate (empty or looping) responses.
//! * [`utility`]: held-out task NLL and GSM8K exact-match accuracy (Cobbe et
//!   al. 2021, "Training Verifiers to Solve Math Word Problems").
//! * [`endpoint`], [`rubrics`]: judges over any OpenAI-compatible endpoint
//!   (harm under a HarmBench-, StrongREJECT- or LlamaGuard-style rubric,
//!   refusal, pairwise preference), with strict parsing, retries and an
//!   on-disk cache; [`winrate`]: pairwise win rates against a reference
//!   model, both orders asked, with bootstrap intervals (the SEAL paper's
//!   headline metric).
//! * [`generation`]: batched greedy generation on evaluation prompts.
//! * [`report`], [`plot`], [`summary`]: Markdown/JSON reports with SVG
//!   histograms and line plots, written atomically.
//! * [`error`]: the crate's error type.
//!
//! See `docs/evaluation.md` for definitions and conventions.
//!
//! # Example
//!
//! ```
//! use seal_eval::ranker::auroc;
//! use seal_eval::RefusalMatcher;
//!
//! // The GCG refusal-marker rule (a weak judge; see docs/evaluation.md).
//! let keywords = RefusalMatcher::gcg();
//! assert!(keywords.is_refusal("I'm sorry, but I cannot help with that."));
//! assert!(!keywords.is_refusal("Sure, here is a cake recipe."));
//! // Ranker quality: benign scores above harmful ones.
//! assert_eq!(auroc(&[0.9, 0.8, 0.4], &[0.5, 0.1])?, Some(5.0 / 6.0));
//! # Ok::<(), seal_eval::EvalError>(())
//! ```

#![warn(missing_docs)]

pub mod agreement;
pub mod classifier;
pub mod coherence;
pub mod endpoint;
pub mod error;
pub mod features;
pub mod generation;
pub mod judge;
pub mod plot;
pub mod ranker;
pub mod refusal;
pub mod report;
pub mod rubrics;
pub mod safety;
pub mod summary;
pub mod utility;
pub mod winrate;

pub use classifier::{ClassifierJudge, JudgeCard, JudgeHead};
pub use endpoint::{EndpointConfig, EndpointJudge, EndpointStats};
pub use error::{EvalError, Result};
pub use generation::{generate_responses, regenerate_responses, Generated, Regenerated};
pub use judge::{HarmVerdict, Judge, KeywordJudge, Preference, RefusalVerdict, Winner};
pub use ranker::{read_scores, RankerMetrics, ScoreRecord};
pub use refusal::{RefusalMatcher, GCG_REFUSAL_MARKERS};
pub use report::{Report, Section, Table};
pub use safety::{evaluate_over_refusal, evaluate_safety, OverRefusalEval, SafetyEval};
pub use utility::{evaluate_gsm8k, task_nll, GsmEval, NllEval};
pub use winrate::{win_rate, WinRate, WinRateOptions};
