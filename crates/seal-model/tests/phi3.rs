//! Phi-3 family: parity with transformers' `Phi3ForCausalLM` and peft
//! (`scripts/phi3_reference.py`, run once through `$SEAL_VENV/bin/python`;
//! skipped with a message without it), and the model-side checks that need
//! no Python: LoRA gradients, adapter files, hidden states, LongRoPE with
//! the KV cache and errors on bad input.

use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::phi3::{LongRope, Phi3, Phi3Config};
use seal_model::{CausalLm, KvCache, LmBatch, LoadOptions, LoraConfig, LoraLm, ModelError};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const VOCAB: usize = 97;

fn ids(rows: &[&[i64]]) -> Tensor {
    let l = rows[0].len() as i64;
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, l])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Weights at N(0, 0.2) instead of N(0, 0.02) (norms stay 1), so that
/// logits are far apart and comparisons are sensitive.
fn scale_weights(model: &Phi3) {
    let _g = tch::no_grad_guard();
    for (name, mut p) in model.base_parameters() {
        if !name.ends_with("norm.weight") {
            let _ = p.f_mul_scalar_(10.0).unwrap();
        }
    }
}

/// Deterministic non-zero LoRA factors (libtorch's generator is global and
/// shared with the tests running in parallel).
fn randomize_lora(params: &[(String, Tensor)], seed: i64) {
    let _g = tch::no_grad_guard();
    for (i, (_, p)) in params.iter().enumerate() {
        let n = p.numel() as i64;
        let phase = seed as f64 * 0.37 + i as f64 * 1.618;
        let v = (Tensor::arange(n, (p.kind(), p.device())) * 2.399 + phase).sin() * 0.1;
        p.shallow_clone().copy_(&v.view(p.size().as_slice()));
    }
}

fn lora(r: usize, targets: &[&str]) -> LoraConfig {
    let mut lora = LoraConfig::default();
    lora.r = r;
    lora.alpha = 2.0 * r as f64;
    lora.dropout = 0.0;
    lora.target_modules = targets.iter().map(|s| s.to_string()).collect();
    lora.use_rslora = false;
    lora
}

const ALL_MODULES: [&str; 4] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

/// Partial rotary embeddings (6 of 8 channels) and LongRoPE switching at 16
/// positions, tied head: the config our saved model exercises.
fn long_rope_config() -> Phi3Config {
    Phi3Config {
        partial_rotary_factor: 0.75,
        rope_theta: 1000.0,
        long_rope: Some(LongRope {
            short_factor: vec![1.0, 1.25, 1.5],
            long_factor: vec![2.0, 2.5, 4.0],
            factor: None,
            attention_factor: None,
        }),
        max_position_embeddings: 64,
        original_max_position_embeddings: 16,
        tie_word_embeddings: true,
        ..Phi3Config::tiny(VOCAB)
    }
}

const IDS: [i64; 12] = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26];
const LONG_IDS: [i64; 24] = [
    3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19, 71, 69, 39, 93,
];

fn reference_tensor(v: &serde_json::Value, shape: &[i64]) -> Tensor {
    let values: Vec<f32> = v
        .as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

#[test]
fn matches_transformers_peft_and_the_family_registry() {
    let Some(python) = seal_testkit::venv_python() else {
        seal_data::testing::skip(
            "python",
            "no Python environment at $SEAL_VENV (run `cargo xtask setup`)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let opts = LoadOptions::default();

    // Written before Python runs: our model (transformers must read our
    // config.json as we do) and an adapter for the script's model A.
    let ours = Phi3::random(&long_rope_config(), Device::Cpu, Kind::Float, 31).unwrap();
    scale_weights(&ours);
    ours.save_pretrained(&work.join("ours")).unwrap();
    let mut donor = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Float, 32).unwrap();
    donor.add_lora(&lora(2, &ALL_MODULES), 3).unwrap();
    randomize_lora(&donor.lora_parameters(), 5);
    donor.save_lora(&work.join("adapter"), None).unwrap();

    let padded: [[i64; 7]; 2] = [[3, 14, 15, 92, 65, 35, 89], [0, 0, 0, 5, 17, 42, 8]];
    let padded_mask: [[i64; 7]; 2] = [[1; 7], [0, 0, 0, 1, 1, 1, 1]];
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 42, 8], vec![60, 3, 71, 22, 9, 88, 13]];
    let max_new = 32;
    let inputs = serde_json::json!({
        "ids": IDS, "long_ids": LONG_IDS, "padded_ids": padded, "padded_mask": padded_mask,
        "prompts": prompts, "max_new_tokens": max_new,
    });
    let inputs_path = work.join("inputs.json");
    std::fs::write(&inputs_path, inputs.to_string()).unwrap();
    let script = seal_testkit::workspace_root().join("scripts/phi3_reference.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(work)
        .args(["--seed", "7", "--inputs"])
        .arg(&inputs_path)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("reference.json")).unwrap())
            .unwrap();
    let v = VOCAB as i64;
    let mut report = Vec::new();
    let mut check = |what: &str, ours: &Tensor, theirs: &Tensor| {
        let d = max_abs_diff(ours, theirs);
        report.push(format!("{what}: {d:.2e}"));
        assert!(d < 1e-4, "{what}: max abs diff {d} from transformers");
    };

    // A: Phi-3-mini's layout, written by transformers.
    let a = Phi3::load(&work.join("hf_a"), &opts).unwrap();
    let input = ids(&[&IDS]);
    let logits_a = a.logits(&input, None).unwrap();
    let ref_a = reference_tensor(&reference["a"]["logits"], &[1, 12, v]);
    check("A logits", &logits_a, &ref_a);
    let mask = Tensor::from_slice(&padded_mask.concat()).view([2, 7]);
    let padded_logits = a
        .logits(&ids(&[&padded[0], &padded[1]]), Some(&mask))
        .unwrap();
    let ref_padded = reference_tensor(&reference["a"]["padded_logits"], &[2, 7, v]);
    let valid = mask.unsqueeze(-1).to_kind(Kind::Float);
    check(
        "A left-padded batch (valid positions)",
        &(&padded_logits * &valid),
        &(&ref_padded * &valid),
    );

    // Greedy generation through the KV cache, batched (the shorter prompt
    // left-padded) and one prompt at a time.
    let gen_opts = GenerationOptions {
        max_new_tokens: max_new,
        sampling: Sampling::Greedy,
        eos_token_ids: vec![],
        pad_token_id: 0,
        seed: Some(0),
        prompt_limit: PromptLimit::Error(64),
    };
    let expected: Vec<Vec<u32>> =
        serde_json::from_value(reference["a"]["generated"].clone()).unwrap();
    assert_eq!(generate(&a, &prompts, &gen_opts).unwrap(), expected);
    for (p, e) in prompts.iter().zip(&expected) {
        assert_eq!(
            &generate(&a, std::slice::from_ref(p), &gen_opts).unwrap()[0],
            e
        );
    }

    // peft applies our adapter as we do.
    let mut a_lora = Phi3::load(&work.join("hf_a"), &opts).unwrap();
    a_lora.load_lora(&work.join("adapter")).unwrap();
    let lora_logits = a_lora.logits(&input, None).unwrap();
    check(
        "A + our adapter under peft",
        &lora_logits,
        &reference_tensor(&reference["a"]["peft_logits"], &[1, 12, v]),
    );
    assert!(
        max_abs_diff(&lora_logits, &logits_a) > 1e-2,
        "the adapter is not a no-op"
    );

    // B: partial rotary + LongRoPE (both factor sets), written by transformers.
    let b = Phi3::load(&work.join("hf_b"), &opts).unwrap();
    assert_eq!(b.config().rotary_dim(), 4);
    assert!(b.config().tie_word_embeddings && b.config().long_rope.is_some());
    let scaling = reference["b"]["attention_scaling"].as_f64().unwrap();
    assert!((b.config().rope_attention_scaling() - scaling).abs() < 1e-12);
    check(
        "B logits (LongRoPE short factors)",
        &b.logits(&input, None).unwrap(),
        &reference_tensor(&reference["b"]["logits"], &[1, 12, v]),
    );
    check(
        "B logits (LongRoPE long factors)",
        &b.logits(&ids(&[&LONG_IDS]), None).unwrap(),
        &reference_tensor(&reference["b"]["long_logits"], &[1, 24, v]),
    );

    // Our save_pretrained, read by transformers.
    assert_eq!(reference["ours"]["rotary_freqs"], 3);
    check(
        "ours under transformers (short)",
        &ours.logits(&input, None).unwrap(),
        &reference_tensor(&reference["ours"]["logits"], &[1, 12, v]),
    );
    check(
        "ours under transformers (long)",
        &ours.logits(&ids(&[&LONG_IDS]), None).unwrap(),
        &reference_tensor(&reference["ours"]["long_logits"], &[1, 24, v]),
    );

    // The registry opens Phi-3 directories.
    let dynamic = seal_model::family::load_model(&work.join("hf_a"), &opts).unwrap();
    assert_eq!(dynamic.model_type(), "phi3");
    assert!(seal_model::family::families().contains(&"phi3".to_string()));
    assert!(dynamic.logits(&input, None).unwrap().equal(&logits_a));
    eprintln!(
        "transformers {} / peft {}: max abs logit differences: {}",
        reference["transformers_version"],
        reference["peft_version"],
        report.join(", ")
    );
}

fn rows() -> (Vec<Vec<u32>>, Vec<usize>) {
    (
        vec![
            vec![1, 5, 9, 14, 3, 7, 2],
            vec![4, 8, 15, 16],
            vec![11, 12, 13, 20, 21],
        ],
        vec![3, 2, 1],
    )
}

#[test]
fn lora_gradients_match_finite_differences_f64() {
    let mut model = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Double, 5).unwrap();
    model
        .add_lora(&lora(2, &["qkv_proj", "o_proj"]), 1)
        .unwrap();
    let params = model.lora_parameters();
    assert_eq!(params.len(), 2 * 2 * 2, "A and B of 2 modules in 2 blocks");
    randomize_lora(&params, 7);
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    let objective = |m: &Phi3| m.per_sample_nll(&batch).unwrap().sum(Kind::Double);
    let loss = objective(&model);
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let grads = Tensor::run_backward(&[&loss], &tensors, false, false);
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for ((name, p), g) in params.iter().zip(&grads) {
        let flat = p.view([-1]);
        // The largest entries: finite differences of near-zero gradients
        // measure round-off, not correctness.
        let (_, top) = g.view([-1]).abs().topk(3, 0, true, true);
        for k in Vec::<i64>::try_from(top).unwrap() {
            let orig = flat.double_value(&[k]);
            let set = |v: f64| {
                let _g = tch::no_grad_guard();
                let _ = flat.get(k).fill_(v);
            };
            set(orig + eps);
            let plus = tch::no_grad(|| objective(&model).double_value(&[]));
            set(orig - eps);
            let minus = tch::no_grad(|| objective(&model).double_value(&[]));
            set(orig);
            let fd = (plus - minus) / (2.0 * eps);
            let an = g.view([-1]).double_value(&[k]);
            let rel = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-8);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-5,
                "{name}[{k}]: analytic {an} vs finite difference {fd} (rel {rel})"
            );
        }
    }
    eprintln!("LoRA gradients vs central differences: max rel error {worst:.2e}");
}

#[test]
fn adapters_round_trip_merge_and_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let (base_dir, adapter_dir) = (tmp.path().join("base"), tmp.path().join("adapter"));
    let mut model = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Float, 9).unwrap();
    scale_weights(&model);
    model.save_pretrained(&base_dir).unwrap();
    let input = ids(&[&IDS]);
    let base_logits = model.logits(&input, None).unwrap();

    // SEAL's default targets (q_proj, v_proj) do not exist in Phi-3.
    let err = model.add_lora(&LoraConfig::default(), 0).unwrap_err();
    assert!(err.to_string().contains("qkv_proj"), "{err}");

    model.add_lora(&lora(4, &ALL_MODULES), 2).unwrap();
    assert_eq!(model.lora_parameters().len(), 2 * 4 * 2);
    randomize_lora(&model.lora_parameters(), 3);
    let adapted = model.logits(&input, None).unwrap();
    assert!(max_abs_diff(&adapted, &base_logits) > 1e-2);
    model.save_lora(&adapter_dir, Some("tiny-phi3")).unwrap();

    let mut fresh = Phi3::load(&base_dir, &LoadOptions::default()).unwrap();
    fresh.load_lora(&adapter_dir).unwrap();
    assert_eq!(fresh.lora_config(), model.lora_config());
    let reloaded = fresh.logits(&input, None).unwrap();
    let d_reload = max_abs_diff(&reloaded, &adapted);
    assert_eq!(d_reload, 0.0, "reloaded adapter");
    fresh.merge_lora().unwrap();
    assert!(fresh.lora_parameters().is_empty());
    let d_merge = max_abs_diff(&fresh.logits(&input, None).unwrap(), &adapted);
    assert!(d_merge < 1e-5, "merged vs unmerged: {d_merge}");
    eprintln!("adapter reload: max abs diff {d_reload:.2e}; merged vs unmerged {d_merge:.2e}");

    // A fork shares the base and starts from B = 0: the base model's logits.
    let fork = model.fork_lora(&lora(2, &["o_proj"]), 4).unwrap();
    assert_eq!(fork.model_type(), "phi3");
    assert!(fork.logits(&input, None).unwrap().equal(&base_logits));
    assert_eq!(
        fork.base_parameters()[0].1.data_ptr(),
        model.base_parameters()[0].1.data_ptr()
    );
    assert_eq!(fork.lora_parameters().len(), 2 * 2);
}

#[test]
fn hidden_states_have_the_right_shapes_and_stop_early() {
    let model = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Float, 13).unwrap();
    let input = ids(&[&IDS[..6], &IDS[6..]]);
    let states = model.hidden_states(&input, None, &[2, 0, 1]).unwrap();
    assert_eq!(states.len(), 3);
    for s in &states {
        assert_eq!(s.size(), [2, 6, 32]);
    }
    // 0 is the embedding output; the last block's state, normed and
    // projected, gives the logits.
    let params: std::collections::HashMap<String, Tensor> =
        model.base_parameters().into_iter().collect();
    let embedded = params["model.embed_tokens.weight"].index_select(0, &input.view([-1]));
    assert!(states[1].view([-1, 32]).equal(&embedded));
    let x = &states[0];
    let eps = model.config().rms_norm_eps;
    let normed = x
        * (x.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt()
        * &params["model.norm.weight"];
    let d = max_abs_diff(
        &model.lm_head(&normed),
        &model.logits(&input, None).unwrap(),
    );
    assert!(d < 1e-5, "last hidden state vs logits: {d}");
    assert!(model.hidden_states(&input, None, &[]).unwrap().is_empty());
    let err = model.hidden_states(&input, None, &[3]).unwrap_err();
    assert!(err.to_string().contains("2 blocks"), "{err}");

    // Early stop: with NaN weights in block 2, block 1's state stays finite.
    let broken = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Float, 13).unwrap();
    {
        let _g = tch::no_grad_guard();
        for (name, mut p) in broken.base_parameters() {
            if name.starts_with("model.layers.1.") {
                let _ = p.fill_(f64::NAN);
            }
        }
    }
    let first = &broken.hidden_states(&input, None, &[1]).unwrap()[0];
    assert!(first.isfinite().all().int64_value(&[]) == 1);
    assert!(first.equal(&states[2]));
    let second = &broken.hidden_states(&input, None, &[2]).unwrap()[0];
    assert!(second.isnan().any().int64_value(&[]) == 1);
}

#[test]
fn long_rope_decoding_through_the_cache() {
    let model = Phi3::random(&long_rope_config(), Device::Cpu, Kind::Double, 17).unwrap();
    scale_weights(&model);
    let full = model.logits(&ids(&[&LONG_IDS]), None).unwrap();
    // A prefill past the switch point (20 > 16 positions), then single steps:
    // long factors throughout, as a full forward pass.
    let mut cache = model.new_cache();
    let mut worst: f64 = 0.0;
    let step0 = model
        .last_logits(&ids(&[&LONG_IDS[..20]]), None, Some(&mut cache))
        .unwrap();
    worst = worst.max(max_abs_diff(&step0, &full.get(0).get(19)));
    for t in 20..24 {
        let logits = model
            .last_logits(&ids(&[&LONG_IDS[t..t + 1]]), None, Some(&mut cache))
            .unwrap();
        worst = worst.max(max_abs_diff(&logits, &full.get(0).get(t as i64)));
    }
    assert!(worst < 1e-5, "cached LongRoPE decoding: {worst}");
    // The short factors differ: a 16-token prefix is not the long pass's prefix.
    let short = model.logits(&ids(&[&LONG_IDS[..16]]), None).unwrap();
    assert!(max_abs_diff(&short, &full.narrow(1, 0, 16)) > 1e-3);

    // A cache filled with short factors cannot cross the switch point.
    let mut cache = KvCache::new(model.num_layers());
    let _ = model
        .last_logits(&ids(&[&LONG_IDS[..16]]), None, Some(&mut cache))
        .unwrap();
    let err = model
        .last_logits(&ids(&[&LONG_IDS[16..17]]), None, Some(&mut cache))
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Unsupported(_)) && err.to_string().contains("LongRoPE"),
        "{err}"
    );
}

/// Rewrites `dir/config.json` with `edit`; returns the load error.
fn load_error(
    dir: &Path,
    good: &serde_json::Value,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let mut cfg = good.clone();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = Phi3::load(dir, &LoadOptions::default())
        .err()
        .unwrap_or_else(|| panic!("{cfg} loaded"));
    err.to_string()
}

#[test]
fn bad_configs_checkpoints_and_inputs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = Phi3::random(&Phi3Config::tiny(VOCAB), Device::Cpu, Kind::Float, 19).unwrap();
    model.save_pretrained(dir).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();

    let msg = load_error(dir, &good, |c| {
        c.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    assert!(
        msg.contains("num_hidden_layers") && msg.contains("config.json"),
        "{msg}"
    );
    let msg = load_error(dir, &good, |c| c["hidden_act"] = "gelu".into());
    assert!(msg.contains("hidden_act"), "{msg}");
    let msg = load_error(dir, &good, |c| c["num_key_value_heads"] = 3.into());
    assert!(msg.contains("num_key_value_heads"), "{msg}");
    let msg = load_error(dir, &good, |c| {
        c["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0})
    });
    assert!(
        msg.contains("rope_scaling.rope_type") && msg.contains("dynamic"),
        "{msg}"
    );
    let msg =
        load_error(
            dir,
            &good,
            |c| {
                c["rope_scaling"] =
                    serde_json::json!({"type": "longrope", "short_factor": [1.0, 1.0, 1.0, 1.0]})
            },
        );
    assert!(msg.contains("rope_scaling.long_factor"), "{msg}");
    let msg = load_error(dir, &good, |c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "longrope",
            "short_factor": [1.0, 1.0, 1.0], "long_factor": [1.0, 1.0, 1.0, 1.0]})
    });
    assert!(msg.contains("rope_parameters.short_factor"), "{msg}");
    let msg = load_error(dir, &good, |c| c["partial_rotary_factor"] = 0.2.into());
    assert!(msg.contains("partial_rotary_factor"), "{msg}");
    let msg = load_error(dir, &good, |c| c["model_type"] = "llama".into());
    assert!(msg.contains("llama") && msg.contains("phi3"), "{msg}");
    for field in [
        "hidden_act",
        "num_key_value_heads",
        "vocab_size",
        "rope_scaling",
    ] {
        let msg = load_error(dir, &good, |c| c[field] = serde_json::json!([1]));
        assert!(msg.contains("config.json"), "{field}: {msg}");
    }
    // Sizes the weights do not have: a shape error naming the tensor, before
    // anything is allocated.
    let msg = load_error(dir, &good, |c| c["intermediate_size"] = 48.into());
    assert!(
        msg.contains("model.layers.0.mlp.gate_up_proj.weight"),
        "{msg}"
    );
    let msg = load_error(dir, &good, |c| {
        c["num_hidden_layers"] = 1_000_000_000.into()
    });
    assert!(msg.contains("model.layers.2."), "{msg}");
    std::fs::write(dir.join("config.json"), good.to_string()).unwrap();
    assert!(Phi3::load(dir, &LoadOptions::default()).is_ok());

    // Token ids outside the vocabulary, empty and malformed inputs.
    for bad in [ids(&[&[1, 97]]), ids(&[&[-1, 2]])] {
        let err = model.logits(&bad, None).unwrap_err();
        assert!(err.to_string().contains("vocabulary"), "{err}");
    }
    assert!(model
        .logits(&Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu)), None)
        .is_err());
    assert!(model.logits(&Tensor::from_slice(&[1i64, 2]), None).is_err());
    let batch = LmBatch::from_rows(&[vec![1, 2, 200]], &[1], 0).unwrap();
    assert!(model.per_sample_nll(&batch).is_err());
    let mut bad_cfg = Phi3Config::tiny(VOCAB);
    bad_cfg.num_key_value_heads = 3;
    assert!(Phi3::random(&bad_cfg, Device::Cpu, Kind::Float, 0).is_err());
}
