//! The tiny pipeline setup shared by `pipeline.rs` and `cuda.rs`.

use seal_data::benchmark::Benchmark;
use seal_data::Label;
use seal_pipeline::config::{EvalConfig, SftConfig};
use seal_pipeline::{Method, PipelineConfig};
use std::path::Path;

/// Writes the tiny random model directory the configuration points at.
pub fn tiny_model_dir(dir: &Path) {
    seal_testkit::write_tiny_model_dir(dir, |_| {}).unwrap();
}

/// The embedded dataset as a benchmark directory in `root/bench`, with its
/// last two harmful pool samples moved out of the pool into
/// `harmful_anchors.jsonl` (the anchor-similarity methods need anchors
/// disjoint from the pool). Returns the benchmark as written.
pub fn tiny_bench_dir(root: &Path) -> Benchmark {
    let mut b = seal_data::embedded::embedded_default().unwrap();
    for _ in 0..2 {
        let i = b
            .finetune
            .iter()
            .rposition(|s| s.label == Some(Label::Harmful))
            .unwrap();
        let s = b.finetune.remove(i);
        b.harmful_anchors.push(s);
    }
    let dir = root.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, part) in b.files() {
        seal_data::write_jsonl_samples(dir.join(name), part).unwrap();
    }
    b
}

/// Every method, two seeds, two steps per training run, three prompts per
/// evaluation set; the model in `root/model`, the data in `root/bench`
/// ([`tiny_bench_dir`], written here), the output in `root/out`.
pub fn config(root: &Path) -> PipelineConfig {
    tiny_bench_dir(root);
    let mut short = SftConfig::default();
    short.epochs = 1;
    short.batch = 4;
    short.max_steps = Some(2);
    short.lr = 1e-3;
    let mut eval = EvalConfig::default();
    eval.max_new_tokens = 3;
    eval.batch = 4;
    eval.gsm8k_accuracy = true;
    eval.gsm8k_max_new_tokens = Some(4);
    let mut c = PipelineConfig::default();
    c.name = "tiny".into();
    c.out = root.join("out");
    c.seeds = vec![1, 2];
    c.max_len = 1024;
    c.progress = false;
    c.finetune = short.clone();
    c.eval = eval;
    c.model.dir = Some(root.join("model"));
    c.data.dir = Some(root.join("bench"));
    c.data.eval_limit = Some(3);
    c.align.sft = short;
    c.rank.max_steps = Some(2);
    c.rank.batch = 4;
    c.select.methods = Method::ALL.map(String::from).to_vec();
    c
}
