//! The tiny pipeline setup shared by `pipeline.rs` and `cuda.rs`.

use seal_pipeline::config::{EvalConfig, SftConfig};
use seal_pipeline::{Method, PipelineConfig};
use std::path::Path;

/// Writes the tiny random model directory the configuration points at.
pub fn tiny_model_dir(dir: &Path) {
    seal_model::fixtures::write_tiny_model_dir(dir, |_| {}).unwrap();
}

/// Every method, two seeds, two steps per training run, three prompts per
/// evaluation set; the model in `root/model`, the output in `root/out`.
pub fn config(root: &Path) -> PipelineConfig {
    let short = SftConfig {
        epochs: 1,
        batch: 4,
        max_steps: Some(2),
        lr: 1e-3,
        ..Default::default()
    };
    let mut c = PipelineConfig {
        name: "tiny".into(),
        out: root.join("out"),
        seeds: vec![1, 2],
        max_len: 1024,
        progress: false,
        finetune: short.clone(),
        eval: EvalConfig {
            max_new_tokens: 3,
            batch: 4,
            gsm8k_accuracy: true,
            gsm8k_max_new_tokens: Some(4),
            ..EvalConfig::default()
        },
        ..Default::default()
    };
    c.model.dir = Some(root.join("model"));
    c.data.eval_limit = Some(3);
    c.align.sft = short;
    c.rank.max_steps = Some(2);
    c.rank.batch = 4;
    c.select.methods = Method::ALL.to_vec();
    c
}
