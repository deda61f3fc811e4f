//! The pipeline's stages as plain functions, each usable on its own:
//! [`resolve_model`], [`align`], [`rank`], [`select`], [`finetune_on`] and
//! [`evaluate`].

use crate::config::{
    AlignConfig, EvalConfig, LoraShape, Method, RankConfig, SelfDistill, SftConfig, SimilarityShape,
};
use crate::error::{PipelineError, Result};
use crate::registry::{
    registered_judges, registered_optimizers, OptimizerSettings, PipelineSolver,
};
use seal_bilevel::{
    dataset_fingerprint, LambdaSchedule, LmProblem, LowerLevel, Ranker, RankerConfig,
    RankerOptimizer, SftData, SftStep, SftTrainer, TrainConfig, TrainReport, Trainer,
};
use seal_data::fsutil::StagingDir;
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_data::{Label, Sample, TextTokenizer};
use seal_eval::refusal::RefusalMatcher;
use seal_eval::KeywordJudge;
use seal_model::generate::GenerationOptions;
use seal_model::optim::AdamWConfig;
use seal_model::{CausalLm, DynLm, LoadOptions, LoraConfig, LoraLm, Pretrained};
use seal_select::dsir::{sample_text, Dsir};
use seal_select::loss::{response_nll, LossBased};
use seal_select::rules::{Full, MixedObjective, Oracle, Random, SafeInstr, SelectionRule, TopP};
use seal_select::similarity::{
    anchor_scores, features, AnchorSimilarity, FeatureConfig, FeatureKind,
};
use seal_select::{Budget, Objective, Selection, SelectionInput};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

mod align;
mod data;
mod evaluate;
mod model;
mod rank;
mod select;
mod train;

pub use align::*;
pub use data::*;
pub use evaluate::*;
pub use model::*;
pub use rank::*;
pub use select::*;
pub use train::*;
