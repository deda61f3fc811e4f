//! Tiny random Llama models built by the tests themselves: loss masking,
//! padding, KV cache, attention paths, LoRA gradients, training, PEFT files.

use seal_model::config::{LlamaConfig, RopeScaling};
use seal_model::optim::{AdamW, AdamWConfig, Optimizer};
use seal_model::{
    AttentionImpl, CausalLm, KvCache, Llama, LmBatch, LoadOptions, LoraConfig, ModelError,
};
use tch::{Device, Kind, Tensor};

const VOCAB: usize = 61;

fn tiny(kind: Kind, seed: i64) -> Llama {
    Llama::random(&LlamaConfig::tiny(VOCAB), Device::Cpu, kind, seed).unwrap()
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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Per-sample NLL recomputed from the full logits with an explicit loop.
fn reference_nll(model: &Llama, rows: &[Vec<u32>], starts: &[usize]) -> Vec<f64> {
    rows.iter()
        .zip(starts)
        .map(|(row, &start)| {
            let ids = Tensor::from_slice(&row.iter().map(|&t| t as i64).collect::<Vec<_>>())
                .view([1, -1]);
            let logp = model
                .logits(&ids, None)
                .unwrap()
                .to_kind(Kind::Double)
                .log_softmax(-1, Kind::Double);
            let mut total = 0.0;
            let mut n = 0;
            for (t, &tok) in row.iter().enumerate().skip(start.max(1)) {
                total -= logp.double_value(&[0, t as i64 - 1, tok as i64]);
                n += 1;
            }
            total / n as f64
        })
        .collect()
}

#[test]
fn per_sample_nll_counts_only_response_tokens() {
    let model = tiny(Kind::Double, 1);
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    let nll = Vec::<f64>::try_from(model.per_sample_nll(&batch).unwrap()).unwrap();
    let want = reference_nll(&model, &rows, &starts);
    for (a, b) in nll.iter().zip(&want) {
        assert!((a - b).abs() < 1e-10, "{nll:?} vs {want:?}");
    }
    // Changing a prompt token changes the loss only through context, never as a label:
    // moving the response start changes the value.
    let batch2 = LmBatch::from_rows(&rows, &[4, 2, 1], 0).unwrap();
    let nll2 = Vec::<f64>::try_from(model.per_sample_nll(&batch2).unwrap()).unwrap();
    assert!((nll2[0] - nll[0]).abs() > 1e-6);
    assert!((nll2[1] - nll[1]).abs() < 1e-12);
}

#[test]
fn left_and_right_padding_match_unpadded() {
    let model = tiny(Kind::Double, 2);
    let (rows, _) = rows();
    let single: Vec<Tensor> = rows
        .iter()
        .map(|r| {
            let ids =
                Tensor::from_slice(&r.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, -1]);
            model.last_logits(&ids, None, None).unwrap()
        })
        .collect();
    let l = rows.iter().map(Vec::len).max().unwrap();
    for left in [true, false] {
        let mut ids = vec![0i64; rows.len() * l];
        let mut mask = vec![0i64; rows.len() * l];
        for (i, r) in rows.iter().enumerate() {
            let off = if left { l - r.len() } else { 0 };
            for (t, &tok) in r.iter().enumerate() {
                ids[i * l + off + t] = tok as i64;
                mask[i * l + off + t] = 1;
            }
        }
        let ids = Tensor::from_slice(&ids).view([rows.len() as i64, l as i64]);
        let mask = Tensor::from_slice(&mask).view([rows.len() as i64, l as i64]);
        let logits = model.logits(&ids, Some(&mask)).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let pos = if left { l - 1 } else { r.len() - 1 };
            let got = logits.get(i as i64).get(pos as i64);
            let d = max_abs_diff(&got, &single[i].get(0).to_kind(Kind::Double));
            assert!(d < 1e-5, "left={left} row {i}: {d}");
        }
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let model = tiny(Kind::Double, 3);
    let seq: Vec<i64> = vec![3, 17, 22, 5, 9, 41, 13, 2];
    let full = model
        .logits(&Tensor::from_slice(&seq).view([1, -1]), None)
        .unwrap();
    let mut cache = KvCache::new(2);
    let first = model
        .last_logits(
            &Tensor::from_slice(&seq[..4]).view([1, -1]),
            None,
            Some(&mut cache),
        )
        .unwrap();
    assert!(max_abs_diff(&first.get(0), &full.get(0).get(3).to_kind(Kind::Float)) < 1e-5);
    for t in 4..seq.len() {
        let step = model
            .last_logits(
                &Tensor::from_slice(&seq[t..t + 1]).view([1, 1]),
                None,
                Some(&mut cache),
            )
            .unwrap();
        assert!(
            max_abs_diff(
                &step.get(0),
                &full.get(0).get(t as i64).to_kind(Kind::Float)
            ) < 1e-5,
            "t={t}"
        );
    }
    assert_eq!(cache.seq_len(), seq.len() as i64);
}

/// Batched decoding as generation runs it: left-padded prompts of different
/// lengths, one token per row and step, a row dropped half-way
/// (`select_rows`) and the cache growing past its first capacity (64
/// positions); each step's logits equal a full forward of that row alone.
#[test]
fn kv_cache_batched_left_padded_decoding_matches_full_forward() {
    for attention in [AttentionImpl::Sdpa, AttentionImpl::Math] {
        let mut model = tiny(Kind::Double, 6);
        model.set_attention_impl(attention);
        let mut seqs: Vec<Vec<i64>> = vec![
            vec![3, 17, 22, 5, 9],
            vec![8, 1],
            vec![40, 41, 42, 43, 44, 45, 46],
        ];
        let steps = 80;
        for (r, s) in seqs.iter_mut().enumerate() {
            s.extend((0..steps).map(|t| ((r * 13 + t * 7) % (VOCAB - 1) + 1) as i64));
        }
        let prompt_lens = [5usize, 2, 7];
        let width = *prompt_lens.iter().max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for (s, &n) in seqs.iter().zip(&prompt_lens) {
            ids.extend(std::iter::repeat_n(0i64, width - n));
            ids.extend_from_slice(&s[..n]);
            mask.extend(std::iter::repeat_n(0i64, width - n));
            mask.extend(std::iter::repeat_n(1i64, n));
        }
        let shape = [3, width as i64];
        let full: Vec<Tensor> = seqs
            .iter()
            .map(|s| {
                model
                    .logits(&Tensor::from_slice(s).view([1, -1]), None)
                    .unwrap()
            })
            .collect();
        let mut cache = model.new_cache();
        let mut logits = model
            .last_logits(
                &Tensor::from_slice(&ids).view(shape),
                Some(&Tensor::from_slice(&mask).view(shape)),
                Some(&mut cache),
            )
            .unwrap();
        let mut active = vec![0usize, 1, 2];
        for t in 0..steps {
            for (row, &r) in active.iter().enumerate() {
                let pos = (prompt_lens[r] + t - 1) as i64;
                let want = full[r].get(0).get(pos).to_kind(Kind::Float);
                let d = max_abs_diff(&logits.get(row as i64), &want);
                assert!(d < 1e-5, "{attention:?} step {t} row {r}: {d}");
            }
            if t == steps / 2 {
                // Row 1 finishes: keep rows 0 and 2.
                cache.select_rows(&Tensor::from_slice(&[0i64, 2]));
                active = vec![0, 2];
            }
            let next: Vec<i64> = active
                .iter()
                .map(|&r| seqs[r][prompt_lens[r] + t])
                .collect();
            logits = model
                .last_logits(
                    &Tensor::from_slice(&next).view([active.len() as i64, 1]),
                    None,
                    Some(&mut cache),
                )
                .unwrap();
        }
        assert_eq!(cache.seq_len(), (width + steps) as i64);
    }
}

#[test]
fn math_attention_matches_sdpa_and_supports_double_backward() {
    let mut model = tiny(Kind::Double, 4);
    let mut lora = LoraConfig::default();
    lora.r = 4;
    model.add_lora(&lora, 0).unwrap();
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    let sdpa = model.per_sample_nll(&batch).unwrap();
    model.set_attention_impl(AttentionImpl::Math);
    let math = model.per_sample_nll(&batch).unwrap();
    assert!(max_abs_diff(&sdpa, &math) < 1e-10);
    // Hessian-vector product through the math path: d/dθ (g · v).
    let params: Vec<Tensor> = model
        .trainable_parameters()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let loss = math.mean(Kind::Double);
    let grads = Tensor::run_backward(&[&loss], &params, true, true);
    let dot = grads
        .iter()
        .map(|g| (g * g.ones_like()).sum(Kind::Double))
        .fold(Tensor::from(0.0f64), |a, b| a + b);
    let hvp = Tensor::run_backward(&[&dot], &params, false, false);
    let norm: f64 = hvp
        .iter()
        .map(|h| h.square().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(norm.is_finite() && norm > 0.0, "HVP norm {norm}");
}

fn randomize_lora(model: &Llama, seed: i64) {
    // Deterministic pseudo-random values (libtorch's generator is global and
    // shared with the tests running in parallel).
    let _g = tch::no_grad_guard();
    for (i, (_, mut p)) in model.lora_parameters().into_iter().enumerate() {
        let n = p.numel() as i64;
        let phase = (seed as f64) * 0.37 + i as f64 * 1.618;
        let v = (Tensor::arange(n, (p.kind(), p.device())) * 2.399 + phase).sin() * 0.1;
        p.copy_(&v.view(p.size().as_slice()));
    }
}

#[test]
fn lora_gradients_match_finite_differences_f64() {
    let mut model = tiny(Kind::Double, 5);
    let mut lora = LoraConfig::default();
    lora.r = 3;
    lora.alpha = 6.0;
    model.add_lora(&lora, 1).unwrap();
    randomize_lora(&model, 7);
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    // A weighted sum of per-sample losses, as SEAL's lower level uses.
    let w = Tensor::from_slice(&[0.7f64, 1.3, 0.4]);
    let objective = |m: &Llama| (m.per_sample_nll(&batch).unwrap() * &w).sum(Kind::Double);
    let params = model.lora_parameters();
    let loss = objective(&model);
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let grads = Tensor::run_backward(&[&loss], &tensors, false, false);
    let eps = 1e-6;
    let mut checked = 0;
    for ((name, p), g) in params.iter().zip(&grads) {
        let flat = p.view([-1]);
        // The entries with the largest gradients: finite differences of
        // near-zero gradients measure round-off, not correctness.
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
            assert!(
                rel <= 1e-4,
                "{name}[{k}]: analytic {an} vs finite difference {fd} (rel {rel})"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * params.len());
    assert_eq!(
        params.len(),
        2 * 2 * 2,
        "A and B for q_proj and v_proj in 2 layers"
    );
}

#[test]
fn lora_training_lowers_loss_and_leaves_base_untouched() {
    let mut model = tiny(Kind::Float, 6);
    let base_before: Vec<(String, Tensor)> = model
        .base_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut lora = LoraConfig::default();
    lora.r = 8;
    model.add_lora(&lora, 2).unwrap();
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    let mut opt = AdamW::new(
        model.trainable_parameters(),
        AdamWConfig {
            lr: 3e-2,
            ..Default::default()
        },
    );
    let first = model
        .per_sample_nll(&batch)
        .unwrap()
        .mean(Kind::Float)
        .double_value(&[]);
    let mut last = first;
    for _ in 0..30 {
        opt.zero_grad();
        let loss = model.per_sample_nll(&batch).unwrap().mean(Kind::Float);
        loss.backward();
        opt.clip_grad_norm(1.0);
        opt.step().unwrap();
        last = loss.double_value(&[]);
    }
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    for ((n, before), (_, after)) in base_before.iter().zip(model.base_parameters()) {
        assert!(before.equal(&after), "base weight {n} changed");
        assert!(!after.requires_grad(), "base weight {n} is trainable");
    }
}

#[test]
fn adapter_round_trips_through_peft_files_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(Kind::Float, 8);
    let mut cfg = LoraConfig::default();
    cfg.r = 4;
    cfg.alpha = 8.0;
    cfg.target_modules = vec!["q_proj".into(), "v_proj".into(), "down_proj".into()];
    model.add_lora(&cfg, 3).unwrap();
    randomize_lora(&model, 9);
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, -1]);
    let want = model.logits(&ids, None).unwrap();
    model.save_lora(dir.path(), Some("tiny")).unwrap();
    let keys: Vec<String> = safetensors::SafeTensors::deserialize(
        &std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .map(String::from)
    .collect();
    assert!(
        keys.contains(
            &"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()
        ),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string()),
        "{keys:?}"
    );

    let mut fresh = tiny(Kind::Float, 8);
    let base_logits = fresh.logits(&ids, None).unwrap();
    assert!(
        max_abs_diff(&base_logits, &want) > 1e-4,
        "adapter should change the logits"
    );
    fresh.load_lora(dir.path()).unwrap();
    let got = fresh.logits(&ids, None).unwrap();
    assert!(
        got.equal(&want),
        "reloaded adapter gives identical logits (max diff {})",
        max_abs_diff(&got, &want)
    );
    assert_eq!(fresh.lora().unwrap().config, cfg);

    fresh.merge_lora().unwrap();
    assert!(fresh.lora().is_none());
    assert!(max_abs_diff(&fresh.logits(&ids, None).unwrap(), &want) < 1e-4);
}

#[test]
fn fork_shares_base_and_has_its_own_adapter() {
    let mut model = tiny(Kind::Float, 10);
    model.add_lora(&LoraConfig::default(), 0).unwrap();
    let fork = model.fork_with_lora(&LoraConfig::default(), 1).unwrap();
    let a = model.base_parameters();
    let b = fork.base_parameters();
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(
            x.data_ptr(),
            y.data_ptr(),
            "base must be shared, not copied"
        );
    }
    let la = model.lora_parameters();
    let lb = fork.lora_parameters();
    assert_ne!(la[0].1.data_ptr(), lb[0].1.data_ptr());
}

#[test]
fn save_pretrained_round_trip_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(Kind::Float, 11);
    model.save_pretrained(dir.path()).unwrap();
    let loaded = Llama::load(dir.path(), &LoadOptions::default()).unwrap();
    let ids = Tensor::from_slice(&[3i64, 1, 4, 1, 5]).view([1, -1]);
    assert!(loaded
        .logits(&ids, None)
        .unwrap()
        .equal(&model.logits(&ids, None).unwrap()));

    // Missing config.json.
    let empty = tempfile::tempdir().unwrap();
    let err = Llama::load(empty.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, ModelError::MissingFile { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    // Malformed config.json.
    let cfg_path = dir.path().join("config.json");
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, "{ not json").unwrap();
    let err = Llama::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");

    // Unknown model_type.
    std::fs::write(&cfg_path, good_cfg.replace("\"llama\"", "\"gpt_neox\"")).unwrap();
    let err = Llama::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("gpt_neox") && err.to_string().contains("config.json"),
        "{err}"
    );
    std::fs::write(&cfg_path, &good_cfg).unwrap();

    // A tensor missing from the checkpoint.
    let st = dir.path().join("model.safetensors");
    let mut tensors = model.base_parameters();
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    seal_model::weights::save_safetensors(&st, &tensors, None).unwrap();
    let err = Llama::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight")
            && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    // A tensor with the wrong shape.
    let mut tensors = model.base_parameters();
    for (n, t) in tensors.iter_mut() {
        if n == "model.norm.weight" {
            *t = Tensor::ones([7], (Kind::Float, Device::Cpu));
        }
    }
    seal_model::weights::save_safetensors(&st, &tensors, None).unwrap();
    let err = Llama::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, ModelError::ShapeMismatch { .. })
            && err.to_string().contains("model.norm.weight"),
        "{err}"
    );
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(Kind::Float, 12);
    let tensors = model.base_parameters();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    seal_model::weights::save_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        a,
        None,
    )
    .unwrap();
    seal_model::weights::save_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        b,
        None,
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (n, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&model.config().to_hf()).unwrap(),
    )
    .unwrap();
    let loaded = Llama::load(dir.path(), &LoadOptions::default()).unwrap();
    let ids = Tensor::from_slice(&[7i64, 8, 9]).view([1, -1]);
    assert!(loaded
        .logits(&ids, None)
        .unwrap()
        .equal(&model.logits(&ids, None).unwrap()));
}

#[test]
fn qwen2_biases_and_untied_head_are_loaded() {
    let mut cfg = LlamaConfig::tiny(VOCAB);
    cfg.model_type = "qwen2".into();
    cfg.qkv_bias = true;
    cfg.tie_word_embeddings = false;
    let model = Llama::random(&cfg, Device::Cpu, Kind::Float, 13).unwrap();
    let names: Vec<String> = model
        .base_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.bias".to_string()));
    assert!(!names.contains(&"model.layers.0.self_attn.o_proj.bias".to_string()));
    assert!(names.contains(&"lm_head.weight".to_string()));
    let hf: seal_model::config::HfConfig = serde_json::from_value(serde_json::json!({
        "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 61
    }))
    .unwrap();
    let parsed = LlamaConfig::from_hf(&hf, std::path::Path::new("config.json")).unwrap();
    assert!(parsed.qkv_bias && !parsed.o_bias);
}

#[test]
fn llama3_rope_scaling_keeps_high_and_scales_low_frequencies() {
    let hf: seal_model::config::HfConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 61, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    }))
    .unwrap();
    let cfg = LlamaConfig::from_hf(&hf, std::path::Path::new("config.json")).unwrap();
    assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { .. }));
    // The model builds and runs with it; position handling is covered by the padding tests.
    let model = Llama::random(&cfg, Device::Cpu, Kind::Float, 1).unwrap();
    let out = model
        .logits(&Tensor::from_slice(&[1i64, 2, 3]).view([1, -1]), None)
        .unwrap();
    assert_eq!(out.size(), vec![1, 3, 61]);
    let bad: seal_model::config::HfConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 61, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}
    }))
    .unwrap();
    let err = LlamaConfig::from_hf(&bad, std::path::Path::new("x/config.json")).unwrap_err();
    assert!(
        err.to_string().contains("rope_scaling") && err.to_string().contains("yarn"),
        "{err}"
    );
}

#[test]
fn out_of_vocabulary_ids_are_rejected() {
    let model = tiny(Kind::Float, 14);
    let err = model
        .logits(&Tensor::from_slice(&[1i64, 99]).view([1, -1]), None)
        .unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
}

#[test]
fn bf16_weights_run_and_losses_stay_f32() {
    // The CUDA bf16 path, exercised on the CPU: same weights rounded to bf16.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(Kind::Float, 15);
    model.save_pretrained(dir.path()).unwrap();
    let mut opts = LoadOptions::default();
    opts.device = Device::Cpu;
    opts.kind = Kind::BFloat16;
    let mut half = Llama::load(dir.path(), &opts).unwrap();
    assert_eq!(half.kind(), Kind::BFloat16);
    let (rows, starts) = rows();
    let batch = LmBatch::from_rows(&rows, &starts, 0).unwrap();
    let full = model.per_sample_nll(&batch).unwrap();
    let low = half.per_sample_nll(&batch).unwrap();
    assert_eq!(low.kind(), Kind::Float, "losses are computed in f32");
    let d = max_abs_diff(&full, &low);
    assert!(d < 0.05, "bf16 vs f32 per-sample NLL differ by {d}");
    // LoRA training works on a bf16 base (f32 adapter).
    half.add_lora(&LoraConfig::default(), 0).unwrap();
    let loss = half.per_sample_nll(&batch).unwrap().mean(Kind::Float);
    loss.backward();
    let grads: f64 = half
        .trainable_parameters()
        .iter()
        .map(|(_, p)| p.grad().abs().sum(Kind::Float).double_value(&[]))
        .sum();
    assert!(grads > 0.0);
    for (name, p) in half.trainable_parameters() {
        assert_eq!(p.kind(), Kind::Float, "LoRA factor {name} stays f32");
    }
    // And it trains: AdamW on the f32 adapter lowers the loss.
    let mut opt = AdamW::new(
        half.trainable_parameters(),
        AdamWConfig {
            lr: 3e-2,
            ..Default::default()
        },
    );
    let first = loss.double_value(&[]);
    let mut last = first;
    for _ in 0..30 {
        opt.zero_grad();
        let loss = half.per_sample_nll(&batch).unwrap().mean(Kind::Float);
        loss.backward();
        opt.step().unwrap();
        last = loss.double_value(&[]);
    }
    assert!(last < 0.9 * first, "bf16 base: loss {first} -> {last}");
}
