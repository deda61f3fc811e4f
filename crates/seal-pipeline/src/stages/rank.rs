//! The ranking stage: SEAL's data ranker trained by a bilevel solver.

use super::*;

/// A trained ranker.
pub struct Ranked {
    /// The ranker (ids = the tokenised pool's ids).
    pub ranker: Ranker,
    /// Trainer summary.
    pub report: TrainReport,
}

/// The data of a ranking run.
pub struct RankData {
    /// The tokenised fine-tuning pool (ranker slot order).
    pub finetune: Vec<TokenizedSample>,
    /// The tokenised safe set.
    pub safe: Vec<TokenizedSample>,
    /// Padding id.
    pub pad: u32,
}

/// Trains SEAL's ranker with `solver` on the pool of `data` against its
/// safe set, starting from `model` (a fresh LoRA seeded by `seed`). The
/// model's optimiser (`config.optimizer`) and the ranker's
/// (`config.ranker_optimizer`) come from the process-wide registry.
pub fn rank(
    mut model: DynLm,
    data: RankData,
    solver: &dyn PipelineSolver,
    config: &RankConfig,
    seed: u64,
    progress: bool,
) -> Result<Ranked> {
    let RankData {
        finetune,
        safe,
        pad,
    } = data;
    let stage = format!("rank {}", solver.name());
    let activation: seal_bilevel::Activation = config
        .activation
        .parse()
        .map_err(|e: seal_bilevel::BilevelError| PipelineError::stage(&stage, e.to_string()))?;
    let optimizers = registered_optimizers();
    let model_rule = optimizers.lookup("rank.optimizer", &config.optimizer)?;
    let ranker_rule = optimizers.lookup("rank.ranker_optimizer", &config.ranker_optimizer)?;
    let ids: Vec<String> = finetune.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&finetune);
    model.add_lora(&lora(&config.lora), seed as i64)?;
    solver.configure_model(&mut model)?;
    let device = model.device();
    let problem = LmProblem::new(model, finetune, safe, pad)?;
    let mut ranker = Ranker::new(ids, fingerprint, activation, Kind::Float, Device::Cpu)?;
    ranker.to(Kind::Float, device);
    let ranker_settings = RankerConfig {
        activation,
        // Recorded only: the registry builds the update rule below.
        optimizer: config
            .ranker_optimizer
            .parse()
            .unwrap_or(seal_bilevel::RankerOptimizerKind::Adam),
        lr: config.ranker_lr,
        beta1: config.ranker_betas[0],
        beta2: config.ranker_betas[1],
        max_grad_norm: (config.ranker_clip > 0.0).then_some(config.ranker_clip),
        ..Default::default()
    };
    let train = TrainConfig {
        epochs: config.epochs,
        max_steps: config.max_steps,
        micro_batch: config.batch,
        grad_accum: 1,
        seed,
        bucket_batches: (config.bucket > 0).then_some(config.bucket),
        model_optimizer: model_optimizer(config.lr),
        ranker: ranker_settings,
        lambda: LambdaSchedule {
            start: config.lambda,
            decay_per_epoch: config.lambda_decay,
        },
        max_grad_norm: Some(1.0),
        progress,
        log_every: 10,
        epoch_length: config.epoch_length,
        ..Default::default()
    };
    // Both optimisers come from the registry, built over what the trainer
    // holds (the same names, in the same order, as its defaults).
    let trainer = Trainer::new(problem, solver.build(config)?, ranker, train)?;
    let model_opt = model_rule.build(
        trainer.problem().parameters(),
        &OptimizerSettings::model(config.lr),
    )?;
    let ranker_opt = RankerOptimizer::with_optimizer(
        trainer.ranker(),
        ranker_settings,
        ranker_rule.build(
            trainer.ranker().parameters(),
            &OptimizerSettings::ranker(config),
        )?,
    )?;
    let mut trainer = trainer
        .with_optimizer(model_opt)?
        .with_ranker_optimizer(ranker_opt)?;
    let report = trainer.run()?;
    let (_, ranker) = trainer.into_parts();
    Ok(Ranked { ranker, report })
}
