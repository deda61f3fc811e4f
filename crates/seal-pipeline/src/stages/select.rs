//! The selection stage: the built-in methods and the fine-tuning data of a
//! selection.

use super::*;

/// What a method needs besides the pool.
pub struct MethodInputs<'a> {
    /// The pool's samples, in ranker slot order.
    pub pool: &'a [Sample],
    /// The tokenised pool (same order).
    pub tokens: &'a [TokenizedSample],
    /// The safe set (SafeInstr demonstrations, DSIR target, mixed objective).
    pub safe: &'a [Sample],
    /// Benign task data disjoint from the pool (the `dsir-task` target).
    pub task_target: &'a [Sample],
    /// SEAL ranker logits for the method's solver.
    pub ranker_logits: Option<&'a [f64]>,
    /// The aligned model, for the loss-based baseline and `rep-sim`.
    pub model: Option<&'a DynLm>,
    /// The anchors of `grad-sim` and `rep-sim`.
    pub anchors: Option<AnchorInputs<'a>>,
    /// Padding id.
    pub pad: u32,
    /// Kept fraction.
    pub p: f64,
    /// λ of the mixed objective.
    pub mixed_lambda: f64,
    /// Seed of random choices.
    pub seed: u64,
}

/// What the anchor-similarity methods (`grad-sim`, `rep-sim`) compare the
/// pool with, tokenised like the pool.
#[derive(Clone, Copy)]
pub struct AnchorInputs<'a> {
    /// Harmful requests with compliant answers, disjoint from the pool and
    /// the evaluation sets (the benchmark's `harmful_anchors.jsonl`).
    pub harmful: &'a [TokenizedSample],
    /// Harmful requests with refusals (the safe set).
    pub safe: &'a [TokenizedSample],
    /// Feature settings.
    pub features: &'a SimilarityShape,
    /// The model directory `grad-sim` loads its seeded LoRA copy from.
    pub model_dir: &'a Path,
    /// Device of that copy.
    pub device: Device,
    /// Base-weight precision of that copy.
    pub dtype: seal_model::WeightDtype,
}

/// He et al.'s bi-directional anchor scores of the pool (higher: more like
/// the harmful anchors), on gradient (`grad-sim`: a fresh LoRA on q and v
/// seeded by `seed`, as LESS) or representation (`rep-sim`: `model`'s hidden
/// states) features.
pub(super) fn anchor_harm(
    method: Method,
    input: &MethodInputs,
    anchors: &AnchorInputs,
) -> Result<Vec<f64>> {
    let stage = format!("select {method}");
    let grad_model;
    let (model, kind) = if method == Method::GradSim {
        let mut m = load(anchors.model_dir, anchors.device, anchors.dtype)?.model;
        m.add_lora(&LoraConfig::default(), input.seed as i64)?;
        grad_model = m;
        (&grad_model, FeatureKind::Gradient)
    } else {
        let m = input
            .model
            .ok_or_else(|| PipelineError::stage(&stage, "rep-sim needs the model"))?;
        (m, FeatureKind::Representation)
    };
    let config = FeatureConfig {
        kind,
        response_tokens: anchors.features.response_tokens,
        sketch_dims: anchors.features.sketch_dims,
        seed: input.seed,
        layer: anchors.features.layer,
    };
    let featurise = |what: &str, xs: &[TokenizedSample]| -> Result<Vec<Vec<f32>>> {
        features(model, xs, &config, input.pad)
            .map_err(|e| PipelineError::stage(&stage, format!("features of {what}: {e}")))
    };
    let harmful = featurise("the harmful anchors", anchors.harmful)?;
    let safe = featurise("the safe anchors", anchors.safe)?;
    let pool = featurise("the pool", input.tokens)?;
    Ok(anchor_scores(&pool, &harmful, &safe)?)
}

/// Applies `method` to the pool (see [`Method`]).
pub fn select(method: Method, input: &MethodInputs) -> Result<Selection> {
    let ids: Vec<String> = input.tokens.iter().map(|t| t.id.clone()).collect();
    let mut sel_input = SelectionInput::new(&ids)?.with_samples(input.pool)?;
    let budget = Budget::Fraction(input.p);
    let need_scores = || {
        input.ranker_logits.ok_or_else(|| {
            PipelineError::stage(
                format!("select {method}"),
                "no ranker scores (the ranking stage did not run)",
            )
        })
    };
    let scores;
    let rule: Box<dyn SelectionRule> = match method {
        Method::Seal | Method::SealFull => {
            sel_input = sel_input.with_scores(need_scores()?)?;
            Box::new(TopP { p: input.p })
        }
        Method::SealSafeinstr => {
            // Top-p of the ranker, then the demonstrations added below.
            sel_input = sel_input.with_scores(need_scores()?)?;
            Box::new(TopP { p: input.p })
        }
        Method::Random => Box::new(Random {
            budget,
            seed: input.seed,
        }),
        Method::Full => Box::new(Full),
        Method::Dsir => {
            let mut d = Dsir::new(input.safe.iter().map(sample_text).collect(), budget);
            d.seed = input.seed;
            Box::new(d)
        }
        Method::DsirTask => {
            if input.task_target.is_empty() {
                return Err(PipelineError::stage(
                    "select dsir-task",
                    "no benign task data to target (the align set has no benign sample)",
                ));
            }
            let mut d = Dsir::new(input.task_target.iter().map(sample_text).collect(), budget);
            d.seed = input.seed;
            Box::new(d)
        }
        Method::Safeinstr => Box::new(SafeInstr {
            demos: input.safe.to_vec(),
            count: None,
            seed: input.seed,
        }),
        Method::Loss => {
            let model = input.model.ok_or_else(|| {
                PipelineError::stage("select loss", "the loss-based baseline needs the model")
            })?;
            scores = response_nll(model, input.tokens, 8, input.pad)?;
            Box::new(LossBased {
                nll: scores,
                budget,
            })
        }
        Method::Mixed => Box::new(MixedObjective {
            lambda: input.mixed_lambda,
        }),
        Method::Oracle => Box::new(Oracle),
        Method::GradSim | Method::RepSim => {
            let anchors = input.anchors.as_ref().ok_or_else(|| {
                PipelineError::stage(
                    format!("select {method}"),
                    "no anchors (the benchmark has no harmful_anchors.jsonl: rebuild it with \
                     `seal data benchmark`, recipe 3)",
                )
            })?;
            Box::new(AnchorSimilarity {
                harm: anchor_harm(method, input, anchors)?,
                budget,
                name: method.name().to_string(),
            })
        }
    };
    let mut selection = rule.select(&sel_input)?;
    if method == Method::SealSafeinstr {
        selection.added = input.safe.to_vec();
    }
    Ok(selection)
}

/// The fine-tuning data of a selection: the kept tokenised samples (with
/// their weights for a weighted objective) plus the added ones, and λ.
pub fn selection_data(
    selection: &Selection,
    tokens: &[TokenizedSample],
    safe_tokens: &[TokenizedSample],
    tokenizer: &TextTokenizer,
    max_len: usize,
) -> Result<(SftData, f64)> {
    let mut kept: Vec<TokenizedSample> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for (t, e) in tokens.iter().zip(&selection.entries) {
        if e.kept {
            kept.push(t.clone());
            weights.push(e.weight.unwrap_or(1.0));
        }
    }
    if !selection.added.is_empty() {
        for t in tokenize(tokenizer, "added demonstrations", &selection.added, max_len)? {
            kept.push(t);
            weights.push(1.0);
        }
    }
    if kept.is_empty() {
        return Err(PipelineError::stage(
            format!("select {}", selection.rule),
            "nothing to fine-tune on",
        ));
    }
    Ok(match selection.objective {
        Objective::Standard => (
            SftData {
                finetune: kept,
                safe: None,
                weights: None,
            },
            0.0,
        ),
        Objective::Weighted => (
            SftData {
                finetune: kept,
                safe: None,
                weights: Some(weights),
            },
            0.0,
        ),
        Objective::Mixed { lambda } => (
            SftData {
                finetune: kept,
                safe: Some(safe_tokens.to_vec()),
                weights: None,
            },
            lambda,
        ),
        other => {
            return Err(PipelineError::stage(
                format!("select {}", selection.rule),
                format!("the pipeline cannot fine-tune with objective {other:?}"),
            ))
        }
    })
}
