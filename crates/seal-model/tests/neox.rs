//! GPT-NeoX (Pythia) against transformers' `GPTNeoXForCausalLM` and peft
//! (`scripts/neox_reference.py`, run once through the project's Python
//! environment; skipped with a message without it), plus LoRA gradients,
//! adapter round trips, hidden-state taps and input errors on tiny random
//! models built here.

use seal_model::family::load_model;
use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::neox::{GptNeoX, NeoxActivation, NeoxConfig};
use seal_model::{AttentionImpl, CausalLm, LmBatch, LoadOptions, LoraConfig, LoraLm, ModelError};
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const VOCAB: usize = 97;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn ids_tensor(rows: &[Vec<i64>]) -> Tensor {
    let flat: Vec<i64> = rows.concat();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

/// A random model whose biases and norm parameters are random too (`random`
/// starts them at 0 and 1, which would hide a misplaced bias).
fn random_model(cfg: &NeoxConfig, kind: Kind, seed: i64) -> GptNeoX {
    let model = GptNeoX::random(cfg, Device::Cpu, kind, seed).unwrap();
    let _g = tch::no_grad_guard();
    // The generator is global: hold the init lock so parallel tests stay reproducible.
    let _lock = seal_model::layers::seeded_init_lock();
    tch::manual_seed(seed + 1000);
    for (name, mut p) in model.base_parameters() {
        let noise = p.randn_like() * 0.1;
        if name.ends_with(".bias") {
            p.copy_(&noise);
        } else if name.contains("layernorm") || name.contains("layer_norm") {
            p.copy_(&(noise + 1.0));
        } else {
            // Larger matrices than N(0, 0.02): logits that actually vary.
            p.copy_(&(p.randn_like() * 0.2));
        }
    }
    model
}

fn lora(targets: &[&str]) -> LoraConfig {
    let mut lora = LoraConfig::default();
    lora.r = 2;
    lora.alpha = 4.0;
    lora.dropout = 0.0;
    lora.target_modules = targets.iter().map(|s| s.to_string()).collect();
    lora.use_rslora = false;
    lora
}

/// Gives every LoRA factor random values (B starts at zero).
fn randomize_lora(model: &impl LoraLm, seed: i64) {
    let _g = tch::no_grad_guard();
    let _lock = seal_model::layers::seeded_init_lock();
    tch::manual_seed(seed);
    for (_, mut p) in model.lora_parameters() {
        let r = p.randn_like() * 0.3;
        p.copy_(&r);
    }
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        eos_token_ids: vec![],
        pad_token_id: 0,
        seed: Some(0),
        prompt_limit: PromptLimit::Error(64),
    }
}

fn json_tensor(v: &Value) -> Tensor {
    let data: Vec<f32> = v
        .as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect();
    Tensor::from_slice(&data)
}

fn json_ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a list of ids")
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

fn json_rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .expect("a list of rows")
        .iter()
        .map(json_ids)
        .collect()
}

#[test]
fn matches_transformers_and_peft() {
    let Some(python) = seal_testkit::venv_python() else {
        seal_data::testing::skip(
            "python",
            "no Python environment at $SEAL_VENV (run `cargo xtask setup`)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ref_dir = tmp.path().join("reference");
    let ours_base = tmp.path().join("ours_base");
    let ours_adapter = tmp.path().join("ours_adapter");

    // Our model and adapter, for transformers and peft to read.
    let mut cfg = NeoxConfig::tiny(VOCAB);
    cfg.use_parallel_residual = false;
    let mut ours = random_model(&cfg, Kind::Float, 7);
    ours.save_pretrained(&ours_base).unwrap();
    ours.add_lora(
        &lora(&["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
        3,
    )
    .unwrap();
    randomize_lora(&ours, 4);
    ours.save_lora(&ours_adapter, None).unwrap();

    let script = seal_testkit::workspace_root().join("scripts/neox_reference.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--out")
        .arg(&ref_dir)
        .args(["--seed", "0", "--ours-base"])
        .arg(&ours_base)
        .arg("--ours-adapter")
        .arg(&ours_adapter)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(ref_dir.join("reference.json")).unwrap())
            .unwrap();
    eprintln!(
        "reference: transformers {}, torch {}, peft {}",
        reference["transformers_version"], reference["torch_version"], reference["peft_version"]
    );

    let ids = ids_tensor(&[json_ids(&reference["ids"])]);
    let padded = ids_tensor(&json_rows(&reference["padded"]));
    let padded_mask = ids_tensor(&json_rows(&reference["padded_mask"]));
    let prompt: Vec<u32> = json_ids(&reference["prompt"])
        .into_iter()
        .map(|t| t as u32)
        .collect();
    // Our generate pads on the left itself: hand it the unpadded prompts.
    let batch_prompts: Vec<Vec<u32>> = json_rows(&reference["batch_prompts"])
        .iter()
        .zip(json_rows(&reference["batch_mask"]))
        .map(|(row, mask)| {
            row.iter()
                .zip(&mask)
                .filter(|(_, &m)| m == 1)
                .map(|(&t, _)| t as u32)
                .collect()
        })
        .collect();

    for name in ["parallel", "sequential"] {
        let r = &reference["models"][name];
        let dir = ref_dir.join(name);
        let model = GptNeoX::load(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(
            model.config().use_parallel_residual,
            name == "parallel",
            "{name}: use_parallel_residual"
        );
        assert_eq!(model.config().rotary_dims(), 4, "{name}: rotary dims");

        // (1) Logits, unpadded and left-padded (valid positions only).
        let logits = model.logits(&ids, None).unwrap().view([-1]);
        let diff = max_abs_diff(&logits, &json_tensor(&r["logits"]));
        eprintln!("{name}: logits max abs diff {diff:.3e}");
        assert!(
            diff < 1e-4,
            "{name}: logits differ from transformers by {diff}"
        );
        let padded_logits = model.logits(&padded, Some(&padded_mask)).unwrap();
        let theirs = json_tensor(&r["padded_logits"]).view([2, -1, VOCAB as i64]);
        let valid = padded_mask.to_kind(Kind::Bool).unsqueeze(-1);
        let diff = max_abs_diff(
            &padded_logits.masked_select(&valid),
            &theirs.masked_select(&valid),
        );
        eprintln!("{name}: left-padded logits max abs diff {diff:.3e}");
        assert!(
            diff < 1e-4,
            "{name}: padded logits differ from transformers by {diff}"
        );

        // (2) Greedy generation through the KV cache, one prompt and a
        // left-padded batch.
        eprintln!(
            "{name}: smallest top-1/top-2 logit gap in transformers' decoding {}",
            r["min_margin"]
        );
        let ours_gen = generate(&model, std::slice::from_ref(&prompt), &greedy(32)).unwrap();
        let theirs_gen: Vec<u32> = json_ids(&r["generated"])
            .into_iter()
            .map(|t| t as u32)
            .collect();
        assert_eq!(ours_gen[0], theirs_gen, "{name}: greedy generation");
        let ours_batch = generate(&model, &batch_prompts, &greedy(32)).unwrap();
        let theirs_batch: Vec<Vec<u32>> = json_rows(&r["batch_generated"])
            .into_iter()
            .map(|row| row.into_iter().map(|t| t as u32).collect())
            .collect();
        assert_eq!(
            ours_batch, theirs_batch,
            "{name}: batched greedy generation"
        );

        // (5) The family registry picks GPT-NeoX from config.json.
        let dyn_model = load_model(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(dyn_model.model_type(), "gpt_neox");
        let diff = max_abs_diff(&dyn_model.logits(&ids, None).unwrap().view([-1]), &logits);
        assert_eq!(diff, 0.0, "{name}: load_model gives another model");
    }

    // transformers reads our save_pretrained, peft applies our adapter.
    let base_logits = {
        let _g = tch::no_grad_guard();
        let fresh = GptNeoX::load(&ours_base, &LoadOptions::default()).unwrap();
        fresh.logits(&ids, None).unwrap().view([-1])
    };
    let diff = max_abs_diff(&base_logits, &json_tensor(&reference["ours_base_logits"]));
    eprintln!("our save_pretrained read by transformers: max abs diff {diff:.3e}");
    assert!(
        diff < 1e-4,
        "transformers reads our checkpoint differently: {diff}"
    );
    let lora_logits = ours.logits(&ids, None).unwrap().view([-1]);
    let diff = max_abs_diff(&lora_logits, &json_tensor(&reference["ours_peft_logits"]));
    eprintln!("our adapter applied by peft: max abs diff {diff:.3e}");
    assert!(diff < 1e-4, "peft applies our adapter differently: {diff}");
    assert!(
        max_abs_diff(&lora_logits, &base_logits) > 1e-2,
        "the adapter is not a no-op"
    );
}

#[test]
fn lora_gradients_match_finite_differences() {
    let mut cfg = NeoxConfig::tiny(VOCAB);
    cfg.num_hidden_layers = 1;
    let mut model = random_model(&cfg, Kind::Double, 11);
    model
        .add_lora(&lora(&["query_key_value", "dense"]), 5)
        .unwrap();
    randomize_lora(&model, 6);
    // Left-padded and right-padded rows in one batch.
    let batch = LmBatch {
        input_ids: ids_tensor(&[vec![0, 0, 5, 9, 14, 3, 7], vec![4, 8, 15, 16, 23, 42, 0]]),
        attention_mask: ids_tensor(&[vec![0, 0, 1, 1, 1, 1, 1], vec![1, 1, 1, 1, 1, 1, 0]]),
        loss_mask: ids_tensor(&[vec![0, 0, 0, 0, 1, 1, 1], vec![0, 0, 1, 1, 1, 1, 0]]),
    };
    let loss = |m: &GptNeoX| m.per_sample_nll(&batch).unwrap().sum(Kind::Double);

    let params = model.lora_parameters();
    assert_eq!(params.len(), 4, "A and B of two sites in one block");
    let mut grads_by_impl = Vec::new();
    for attention in [AttentionImpl::Sdpa, AttentionImpl::Math] {
        model.set_attention_impl(attention);
        let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let grads = Tensor::run_backward(&[loss(&model)], &tensors, false, false);
        grads_by_impl.push(grads);
    }
    for (a, b) in grads_by_impl[0].iter().zip(&grads_by_impl[1]) {
        assert!(max_abs_diff(a, b) < 1e-10, "SDPA and math gradients differ");
    }

    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for ((name, p), g) in params.iter().zip(&grads_by_impl[1]) {
        let flat = p.view([-1]);
        let n = flat.size()[0];
        for idx in [0, n / 3, n - 1] {
            let orig = flat.double_value(&[idx]);
            let at = |v: f64| {
                let _g = tch::no_grad_guard();
                let _ = flat.get(idx).fill_(v);
                loss(&model).double_value(&[])
            };
            let fd = (at(orig + eps) - at(orig - eps)) / (2.0 * eps);
            at(orig);
            let analytic = g.view([-1]).double_value(&[idx]);
            let rel = (fd - analytic).abs() / analytic.abs().max(1e-3);
            worst = worst.max(rel);
            assert!(
                rel < 1e-5,
                "{name}[{idx}]: autograd {analytic}, finite differences {fd} (rel {rel:.2e})"
            );
        }
    }
    eprintln!("LoRA gradients vs central differences: worst rel err {worst:.2e}");
}

#[test]
fn lora_save_load_merge_and_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    let adapter_dir = tmp.path().join("adapter");
    let cfg = NeoxConfig::tiny(VOCAB);
    let mut model = random_model(&cfg, Kind::Float, 21);
    model.save_pretrained(&base_dir).unwrap();
    let ids = ids_tensor(&[vec![3, 1, 4, 1, 5, 9, 2, 6], vec![5, 3, 5, 8, 9, 7, 9, 3]]);
    let base_logits = model.logits(&ids, None).unwrap();

    // SEAL's default targets are Llama names: a clear error, not a silent no-op.
    let err = model.add_lora(&LoraConfig::default(), 0).unwrap_err();
    assert!(err.to_string().contains("query_key_value"), "{err}");

    model
        .add_lora(&lora(&["query_key_value", "dense"]), 8)
        .unwrap();
    randomize_lora(&model, 9);
    let lora_logits = model.logits(&ids, None).unwrap();
    assert!(max_abs_diff(&lora_logits, &base_logits) > 1e-2);
    model.save_lora(&adapter_dir, Some("tiny-neox")).unwrap();

    // (4) save_lora -> load_lora on a freshly loaded base: identical logits.
    let mut fresh = GptNeoX::load(&base_dir, &LoadOptions::default()).unwrap();
    fresh.load_lora(&adapter_dir).unwrap();
    let diff = max_abs_diff(&fresh.logits(&ids, None).unwrap(), &lora_logits);
    eprintln!("adapter round trip: max abs diff {diff:.3e}");
    assert_eq!(diff, 0.0, "reloaded adapter changes the logits");

    // A fork shares the base and starts from B = 0: the base's logits.
    let fork = fresh.fork_lora(&lora(&["dense_h_to_4h"]), 1).unwrap();
    assert_eq!(fork.model_type(), "gpt_neox");
    let diff = max_abs_diff(&fork.logits(&ids, None).unwrap(), &base_logits);
    assert!(diff < 1e-6, "fresh fork differs from the base by {diff}");

    // merge_lora folds the adapter into the weights.
    fresh.merge_lora().unwrap();
    assert!(fresh.lora().is_none());
    let diff = max_abs_diff(&fresh.logits(&ids, None).unwrap(), &lora_logits);
    eprintln!("merged vs unmerged adapter: max abs diff {diff:.3e}");
    assert!(diff < 1e-5, "merged adapter differs by {diff}");
    assert!(fresh.merge_lora().is_err(), "nothing left to merge");
}

#[test]
fn hidden_states_tap_blocks_and_stop_early() {
    let mut cfg = NeoxConfig::tiny(VOCAB);
    cfg.num_hidden_layers = 3;
    let model = random_model(&cfg, Kind::Float, 31);
    let ids = ids_tensor(&[vec![3, 1, 4, 1, 5], vec![0, 0, 9, 2, 6]]);
    let mask = ids_tensor(&[vec![1, 1, 1, 1, 1], vec![0, 0, 1, 1, 1]]);
    let taps = model.hidden_states(&ids, Some(&mask), &[3, 0, 1]).unwrap();
    assert_eq!(taps.len(), 3);
    for t in &taps {
        assert_eq!(t.size(), [2, 5, 32]);
    }
    let params: std::collections::HashMap<String, Tensor> =
        model.base_parameters().into_iter().collect();
    // Block 0 is the embedding lookup.
    let embed = params["gpt_neox.embed_in.weight"].index_select(0, &ids.view([-1]));
    assert_eq!(max_abs_diff(&taps[1], &embed.view([2, 5, 32])), 0.0);
    // The last block's output, normalised, is the final hidden state.
    let normed = taps[0].layer_norm(
        [32],
        Some(&params["gpt_neox.final_layer_norm.weight"]),
        Some(&params["gpt_neox.final_layer_norm.bias"]),
        1e-5,
        false,
    );
    let last = model.forward_hidden(&ids, Some(&mask), None).unwrap();
    assert!(max_abs_diff(&normed, &last) < 1e-5);
    assert!(model.hidden_states(&ids, None, &[4]).is_err());
    assert!(model.hidden_states(&ids, None, &[]).unwrap().is_empty());

    // Poison block 3: taps up to block 2 must not run it.
    let before = model.hidden_states(&ids, Some(&mask), &[2]).unwrap();
    {
        let _g = tch::no_grad_guard();
        let _ = params["gpt_neox.layers.2.mlp.dense_4h_to_h.weight"]
            .shallow_clone()
            .fill_(f64::NAN);
    }
    let after = model.hidden_states(&ids, Some(&mask), &[2, 1]).unwrap();
    assert_eq!(max_abs_diff(&after[0], &before[0]), 0.0);
    assert_eq!(after[1].size(), [2, 5, 32]);
    let full = model.hidden_states(&ids, Some(&mask), &[3]).unwrap();
    assert!(
        full[0].isnan().any().int64_value(&[]) == 1,
        "block 3 did run"
    );
}

/// Writes `config` (a JSON object) over `dir/config.json` and loads `dir`.
fn load_with_config(dir: &Path, config: &Value) -> Result<GptNeoX, ModelError> {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    GptNeoX::load(dir, &LoadOptions::default())
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = random_model(&NeoxConfig::tiny(VOCAB), Kind::Float, 41);
    model.save_pretrained(dir).unwrap();
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let edited = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = good.clone();
        edit(v.as_object_mut().unwrap());
        v
    };

    // A missing field is named, with the file.
    let err = load_with_config(
        dir,
        &edited(&|m| {
            m.remove("num_attention_heads");
        }),
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("num_attention_heads") && msg.contains("config.json"),
        "{msg}"
    );
    for (edit, needle) in [
        (
            edited(&|m| {
                m.insert("hidden_act".into(), "swiglu".into());
            }),
            "hidden_act",
        ),
        (
            edited(&|m| {
                m.insert("num_attention_heads".into(), 5.into());
            }),
            "hidden_size",
        ),
        (
            edited(&|m| {
                m.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_type": "linear", "factor": 2.0}),
                );
            }),
            "rope_type",
        ),
        (
            edited(&|m| {
                m.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"partial_rotary_factor": 0.375}),
                );
            }),
            "rotary_pct",
        ),
        (
            edited(&|m| {
                m.insert("model_type".into(), "llama".into());
            }),
            "llama",
        ),
        // Sizes come from the config; the file's tensors must agree before
        // anything is allocated.
        (
            edited(&|m| {
                m.insert("intermediate_size".into(), 1_000_000_000.into());
            }),
            "dense_h_to_4h",
        ),
        (
            edited(&|m| {
                m.insert("num_hidden_layers".into(), 1_000_000_000_000u64.into());
            }),
            "gpt_neox.layers.2",
        ),
    ] {
        let msg = load_with_config(dir, &edit).err().unwrap().to_string();
        assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    }

    // Older files spell the rotary settings rotary_pct / rotary_emb_base.
    let old_style = edited(&|m| {
        m.remove("rope_parameters");
        m.insert("rotary_pct".into(), 0.25.into());
        m.insert("rotary_emb_base".into(), 500.0.into());
        m.insert("hidden_act".into(), "gelu_new".into());
    });
    let old = load_with_config(dir, &old_style).unwrap();
    assert_eq!(old.config().rotary_dims(), 2);
    assert_eq!(old.config().rope_theta, 500.0);
    assert_eq!(old.config().hidden_act, NeoxActivation::GeluTanh);
    std::fs::write(dir.join("config.json"), good.to_string()).unwrap();

    // Token ids outside the vocabulary, wrong ranks and dtypes.
    let model = GptNeoX::load(dir, &LoadOptions::default()).unwrap();
    let err = model
        .logits(&ids_tensor(&[vec![1, VOCAB as i64]]), None)
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    assert!(model.logits(&ids_tensor(&[vec![-1, 2]]), None).is_err());
    assert!(model.logits(&Tensor::from_slice(&[1i64, 2]), None).is_err());
    assert!(model
        .logits(&Tensor::from_slice(&[0.5f32, 1.0]).view([1, 2]), None)
        .is_err());
    let ids = ids_tensor(&[vec![1, 2, 3]]);
    assert!(model
        .logits(&ids, Some(&ids_tensor(&[vec![1, 1]])))
        .is_err());
    assert!(generate(&model, &[vec![1, VOCAB as u32]], &greedy(2)).is_err());

    // A missing tensor is named.
    let mut tensors = model.base_parameters();
    tensors.retain(|(n, _)| n != "gpt_neox.layers.1.attention.dense.bias");
    seal_model::weights::save_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    let err = GptNeoX::load(dir, &LoadOptions::default()).err().unwrap();
    assert!(
        err.to_string()
            .contains("gpt_neox.layers.1.attention.dense.bias"),
        "{err}"
    );
}
