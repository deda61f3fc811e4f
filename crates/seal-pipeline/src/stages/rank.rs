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
/// safe set, starting from `model` (a fresh LoRA seeded by `seed`).
pub fn rank(
    mut model: DynLm,
    data: RankData,
    solver: Solver,
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
    let optimizer: seal_bilevel::RankerOptimizerKind = config
        .ranker_optimizer
        .parse()
        .map_err(|e: seal_bilevel::BilevelError| PipelineError::stage(&stage, e.to_string()))?;
    let ids: Vec<String> = finetune.iter().map(|s| s.id.clone()).collect();
    let fingerprint = dataset_fingerprint(&finetune);
    model.add_lora(&lora(&config.lora), seed as i64)?;
    let device = model.device();
    let problem = LmProblem::new(model, finetune, safe, pad)?;
    let mut ranker = Ranker::new(ids, fingerprint, activation, Kind::Float, Device::Cpu)?;
    ranker.to(Kind::Float, device);
    let solver: Box<dyn seal_bilevel::Solver<LmProblem<DynLm>>> = match solver {
        Solver::Seal => Box::new(SealPenalty),
        Solver::SealFull => Box::new(SealPenaltyFull::new(seal_bilevel::FullPenaltyConfig {
            optimizer: model_optimizer(config.lr),
            lr_scale: config.full.lr_scale,
            inner_steps: config.full.inner_steps,
            warm_start_steps: config.full.warm_start_steps,
            warm_start_batch: config.batch,
            read_after_update: config.full.read_after_update,
        })),
    };
    let train = TrainConfig {
        epochs: config.epochs,
        max_steps: config.max_steps,
        micro_batch: config.batch,
        grad_accum: 1,
        seed,
        bucket_batches: (config.bucket > 0).then_some(config.bucket),
        model_optimizer: model_optimizer(config.lr),
        ranker: RankerConfig {
            activation,
            optimizer,
            lr: config.ranker_lr,
            beta1: config.ranker_betas[0],
            beta2: config.ranker_betas[1],
            max_grad_norm: (config.ranker_clip > 0.0).then_some(config.ranker_clip),
            ..Default::default()
        },
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
    let mut trainer = Trainer::new(problem, solver, ranker, train)?;
    let report = trainer.run()?;
    let (_, ranker) = trainer.into_parts();
    Ok(Ranked { ranker, report })
}
