//! PEFT adapters: `LoraConfig::from_peft_file` and `Llama::load_lora`
//! (`adapter_config.json` + `adapter_model.safetensors`) into a tiny llama.
//! The seed is an adapter saved by `Llama::save_lora`.

use std::path::Path;

use seal_model::{Llama, LlamaConfig, LoraConfig};
use tch::{Device, Kind};

use super::safetensors::mutate_case;
use super::{Case, Pool, Target};
use crate::mutate::{Rng, JSON_DICT};

const STRINGS: &[&str] = &[
    "LORA",
    "LOHA",
    "none",
    "all",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
    ".*",
    "r",
    "lora_alpha",
    "target_modules",
    "use_rslora",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "F32",
    "F16",
    "BF16",
    "I64",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
];

/// The LoRA target.
pub struct LoraTarget {
    model: Option<Llama>,
    seeds: Vec<Case>,
    pool: Pool,
}

fn tiny() -> LlamaConfig {
    let mut cfg = LlamaConfig::tiny(16);
    cfg.hidden_size = 8;
    cfg.intermediate_size = 16;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = 1;
    cfg.head_dim = 4;
    cfg
}

impl LoraTarget {
    /// Builds the model and the seed adapters (default targets, and all
    /// seven projections with rsLoRA).
    pub fn new() -> Self {
        let model = Llama::random(&tiny(), Device::Cpu, Kind::Float, 0).ok();
        let mut seeds = Vec::new();
        if let Some(m) = &model {
            let mut small = LoraConfig::default();
            small.r = 4;
            let mut all = LoraConfig::default();
            all.r = 2;
            all.alpha = 8.0;
            all.dropout = 0.1;
            all.target_modules = seal_model::lora::LORA_TARGETABLE
                .iter()
                .map(|s| s.to_string())
                .collect();
            all.use_rslora = true;
            let configs = [small, all];
            for (i, c) in configs.iter().enumerate() {
                if let Ok(fork) = m.fork_with_lora(c, i as i64) {
                    let dir = std::env::temp_dir()
                        .join(format!("seal-fuzz-lora-{}-{i}", std::process::id()));
                    if fork.save_lora(&dir, Some("tiny")).is_ok() {
                        let read = |n: &str| std::fs::read(dir.join(n)).unwrap_or_default();
                        seeds.push(Case {
                            files: vec![
                                ("adapter_config.json".into(), read("adapter_config.json")),
                                (
                                    "adapter_model.safetensors".into(),
                                    read("adapter_model.safetensors"),
                                ),
                            ],
                        });
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Self {
            model,
            seeds,
            pool: Pool::default(),
        }
    }
}

impl Default for LoraTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for LoraTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        if rng.one_in(5) {
            if let Some(c) = self.pool.mutate(rng, JSON_DICT, STRINGS) {
                return c;
            }
        }
        if self.seeds.is_empty() {
            return Case::default();
        }
        let seed = rng.pick(&self.seeds).clone();
        mutate_case(rng, &seed, STRINGS)
    }

    fn run(&mut self, dir: &Path, _scratch: &Path) -> bool {
        let cfg_ok = LoraConfig::from_peft_file(&dir.join("adapter_config.json")).is_ok();
        let Some(model) = &mut self.model else {
            return false;
        };
        cfg_ok & model.load_lora(dir).is_ok()
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.iter().map(|f| f.1.len() as u64).sum();
        self.pool.add(case, bits);
    }
}
