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
    let mut ranker_settings = RankerConfig::default();
    ranker_settings.activation = activation;
    // Recorded only: the registry builds the update rule below.
    ranker_settings.optimizer = config
        .ranker_optimizer
        .parse()
        .unwrap_or(seal_bilevel::RankerOptimizerKind::Adam);
    ranker_settings.lr = config.ranker_lr;
    ranker_settings.beta1 = config.ranker_betas[0];
    ranker_settings.beta2 = config.ranker_betas[1];
    ranker_settings.max_grad_norm = (config.ranker_clip > 0.0).then_some(config.ranker_clip);
    let mut train = TrainConfig::default();
    train.epochs = config.epochs;
    train.max_steps = config.max_steps;
    train.micro_batch = config.batch;
    train.grad_accum = 1;
    train.seed = seed;
    train.bucket_batches = (config.bucket > 0).then_some(config.bucket);
    train.model_optimizer = model_optimizer(config.lr);
    train.ranker = ranker_settings;
    train.lambda = LambdaSchedule {
        start: config.lambda,
        decay_per_epoch: config.lambda_decay,
    };
    train.max_grad_norm = Some(1.0);
    train.progress = progress;
    train.log_every = 10;
    train.epoch_length = config.epoch_length;
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
