//! The pipeline on model families other than Llama, chosen by `config.json`'s
//! `model_type` alone: a tiny random GPT-NeoX (and Phi-3) is aligned, ranked
//! by SEAL, selected from, fine-tuned and evaluated, with LoRA on its own
//! attention projections.

mod common;

use common::{config, tiny_model_dir};
use seal_model::neox::{GptNeoX, NeoxConfig};
use seal_model::phi3::{Phi3, Phi3Config};
use seal_model::{LoadOptions, LoraLm};
use seal_pipeline::{Method, PipelineConfig};
use std::path::Path;
use tch::{Device, Kind};

/// Writes `model` with the tiny Llama fixture's tokenizer files.
fn model_dir(dir: &Path, save: impl FnOnce(&Path)) {
    let scratch = dir.with_extension("llama");
    tiny_model_dir(&scratch);
    save(dir);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(scratch.join(f), dir.join(f)).unwrap();
    }
}

fn vocab() -> usize {
    seal_data::testing::byte_level_tokenizer()
        .unwrap()
        .get_vocab_size(true)
}

/// One seed, SEAL and random, LoRA on `targets`.
fn family_config(root: &Path, targets: &[&str]) -> PipelineConfig {
    let mut c = config(root);
    c.seeds = vec![1];
    c.select.methods = vec![Method::Seal.into(), Method::Random.into()];
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    c.align.sft.lora.targets = targets.clone();
    c.rank.lora.targets = targets.clone();
    c.finetune.lora.targets = targets;
    c
}

fn check(root: &Path, model_type: &str, cfg: &PipelineConfig) {
    let r = seal_pipeline::run(cfg).unwrap();
    assert_eq!(r.rankers.len(), 1, "{model_type}: one SEAL ranker");
    let ranker = &r.rankers[0];
    assert_eq!(ranker.steps, 2);
    assert!(ranker.logits.iter().all(|l| l.is_finite()));
    // The ranker moved: trained logits are not all equal.
    assert!(
        ranker.logits.windows(2).any(|w| w[0] != w[1]),
        "{model_type}"
    );
    assert_eq!(r.runs.len(), 2);
    for run in &r.runs {
        assert_eq!(run.steps, 2, "{model_type} {}", run.method);
        assert!(run.eval.asr.is_some(), "{model_type} {}", run.method);
        let adapter = cfg.out.join("seed-1").join(&run.method).join("adapter");
        let peft: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            peft["target_modules"][0].as_str(),
            cfg.finetune.lora.targets.first().map(String::as_str)
        );
        // The saved adapter loads back onto the family it was trained on.
        let mut m =
            seal_model::family::load_model(&root.join("model"), &LoadOptions::default()).unwrap();
        assert_eq!(m.model_type(), model_type);
        m.load_lora(&adapter).unwrap();
    }
    let aligned = r.aligned.as_ref().unwrap();
    assert_eq!(
        seal_model::family::model_type_of(&aligned.dir).unwrap(),
        model_type,
        "the merged aligned model keeps its family"
    );
}

#[test]
fn seal_ranks_selects_and_finetunes_a_gpt_neox() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    model_dir(&root.join("model"), |dir| {
        let mut c = NeoxConfig::tiny(vocab());
        c.max_position_embeddings = 4096;
        GptNeoX::random(&c, Device::Cpu, Kind::Float, 3)
            .unwrap()
            .save_pretrained(dir)
            .unwrap();
    });
    let cfg = family_config(root, &["query_key_value"]);
    check(root, "gpt_neox", &cfg);
    // Llama's module names are refused, naming the family's own.
    let mut wrong = family_config(root, &["q_proj"]);
    wrong.out = root.join("wrong");
    let err = seal_pipeline::run(&wrong).unwrap_err().to_string();
    assert!(err.contains("query_key_value"), "{err}");
}

#[test]
fn seal_ranks_selects_and_finetunes_a_phi3() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    model_dir(&root.join("model"), |dir| {
        let mut c = Phi3Config::tiny(vocab());
        c.max_position_embeddings = 4096;
        c.original_max_position_embeddings = 4096;
        Phi3::random(&c, Device::Cpu, Kind::Float, 3)
            .unwrap()
            .save_pretrained(dir)
            .unwrap();
    });
    let cfg = family_config(root, &["qkv_proj", "o_proj"]);
    check(root, "phi3", &cfg);
}
