//! Anchor-similarity selection (He, Xia and Henderson, COLM 2024) on a tiny
//! random Llama: features, bi-directional scores, the rule, and bad input.

// Needs the model-based rules and ranker loading.
#![cfg(feature = "torch")]

use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_model::{CausalLm, Llama, LlamaConfig, LmBatch, LoraConfig};
use seal_select::similarity::*;
use seal_select::{Budget, SelectionInput, SelectionRule};
use tch::{Device, Kind, Tensor};

fn data() -> (Vec<TokenizedSample>, usize, u32) {
    let tok = seal_data::testing::chatml_tokenizer(None).unwrap();
    let bench = seal_data::embedded::embedded_default().unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 160;
    let s = tokenize_samples(&tok, &bench.finetune[..10], &cfg)
        .unwrap()
        .samples;
    assert!(s.len() >= 8);
    (s, tok.vocab_size(), tok.pad_token_id().unwrap())
}

fn model(vocab: usize, lora: bool) -> Llama {
    let mut m = Llama::random(&LlamaConfig::tiny(vocab), Device::Cpu, Kind::Float, 3).unwrap();
    if lora {
        let mut config = LoraConfig::default();
        config.r = 4;
        m.add_lora(&config, 4).unwrap();
        // B starts at zero (PEFT), which leaves A without gradient: give B
        // values so both factors carry signal.
        let _g = tch::no_grad_guard();
        for (i, (name, mut p)) in m.lora_parameters().into_iter().enumerate() {
            if name.contains("lora_B") {
                let n = p.numel() as i64;
                let v = ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + i as f64).sin()
                    * 0.05)
                    .view(p.size().as_slice());
                p.copy_(&v);
            }
        }
    }
    m
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The exact (unsketched) gradient of the first `k` response tokens' loss.
fn exact_gradient(m: &Llama, s: &TokenizedSample, k: usize, pad: u32) -> Vec<f32> {
    let end = (s.response_start + k).min(s.input_ids.len());
    let batch =
        LmBatch::from_rows(&[s.input_ids[..end].to_vec()], &[s.response_start], pad).unwrap();
    let loss = m.per_sample_nll(&batch).unwrap().sum(Kind::Float);
    let params: Vec<Tensor> = m
        .trainable_parameters()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let grads = Tensor::run_backward(&[&loss], &params, false, false);
    let flat = Tensor::cat(
        &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
        0,
    );
    Vec::<f32>::try_from(flat).unwrap()
}

#[test]
fn sketched_gradients_keep_cosines_and_identical_samples_coincide() {
    let (s, vocab, pad) = data();
    let m = model(vocab, true);
    let cfg = FeatureConfig {
        sketch_dims: 4096,
        ..Default::default()
    };
    let f = features(&m, &s[..4], &cfg, pad).unwrap();
    for v in &f {
        let n: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "not unit length: {n}");
    }
    let exact: Vec<Vec<f32>> = s[..4]
        .iter()
        .map(|x| exact_gradient(&m, x, 8, pad))
        .collect();
    let mut spread = 0.0f64;
    for i in 0..4 {
        for j in (i + 1)..4 {
            let (a, b) = (cosine(&f[i], &f[j]), cosine(&exact[i], &exact[j]));
            spread = spread.max(b.abs());
            assert!(
                (a - b).abs() < 0.05,
                "pair {i},{j}: sketch {a} vs exact {b}"
            );
        }
    }
    assert!(spread > 0.05, "degenerate test: all exact cosines are ~0");
    // The same sample under another id gives the same features.
    let mut twin = s[2].clone();
    twin.id = "twin".into();
    let t = features(&m, &[twin], &cfg, pad).unwrap();
    assert!(cosine(&t[0], &f[2]) > 1.0 - 1e-6);
    // Another seed hashes differently but keeps the geometry.
    let g = features(&m, &s[..2], &FeatureConfig { seed: 9, ..cfg }, pad).unwrap();
    assert_ne!(g[0], f[0]);
    assert!((cosine(&g[0], &g[1]) - cosine(&exact[0], &exact[1])).abs() < 0.05);
}

#[test]
fn anchors_pull_and_push_and_the_rule_keeps_the_least_harmful() {
    let (s, vocab, pad) = data();
    let m = model(vocab, true);
    for kind in [FeatureKind::Gradient, FeatureKind::Representation] {
        let cfg = FeatureConfig {
            kind,
            ..Default::default()
        };
        let pool = features(&m, &s[..6], &cfg, pad).unwrap();
        // Sample 0 repeated as the harmful anchor, sample 1 as the safe one.
        let harmful = features(&m, &s[..1], &cfg, pad).unwrap();
        let safe = features(&m, &s[1..2], &cfg, pad).unwrap();
        let harm = anchor_scores(&pool, &harmful, &safe).unwrap();
        let c = cosine(&pool[0], &pool[1]);
        assert!((harm[0] - (1.0 - c)).abs() < 1e-5, "{kind:?}: {}", harm[0]);
        assert!((harm[1] - (c - 1.0)).abs() < 1e-5, "{kind:?}: {}", harm[1]);
        let max = harm.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = harm.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(
            max, harm[0],
            "{kind:?}: the harmful twin must score highest"
        );
        assert_eq!(min, harm[1], "{kind:?}: the safe twin must score lowest");

        let ids: Vec<String> = s[..6].iter().map(|x| x.id.clone()).collect();
        let input = SelectionInput::new(&ids).unwrap();
        let rule = AnchorSimilarity {
            harm: harm.clone(),
            budget: Budget::Count(5),
            name: "grad-sim".into(),
        };
        let sel = rule.select(&input).unwrap();
        assert_eq!(sel.rule, "grad-sim");
        let kept = sel.kept_ids(&input);
        assert_eq!(kept.len(), 5);
        assert!(
            !kept.contains(&ids[0].as_str()),
            "{kind:?}: kept the harmful twin"
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let (s, vocab, pad) = data();
    // Gradient features without any trainable parameter.
    let bare = model(vocab, false);
    let e = features(&bare, &s[..1], &FeatureConfig::default(), pad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoRA"), "{e}");
    let m = model(vocab, true);
    let e = features(
        &m,
        &s[..1],
        &FeatureConfig {
            response_tokens: 0,
            ..Default::default()
        },
        pad,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("response_tokens"), "{e}");
    let e = features(
        &m,
        &s[..1],
        &FeatureConfig {
            kind: FeatureKind::Representation,
            layer: Some(99),
            ..Default::default()
        },
        pad,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("layer") && e.contains("99"), "{e}");
    let mut empty = s[0].clone();
    empty.response_start = empty.input_ids.len();
    let e = features(&m, &[empty], &FeatureConfig::default(), pad)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&s[0].id) && e.contains("no response"), "{e}");

    let f = vec![vec![1.0f32, 0.0]];
    let e = anchor_scores(&f, &[], &f).unwrap_err().to_string();
    assert!(e.contains("0 harmful"), "{e}");
    let e = anchor_scores(&f, &[vec![1.0, 0.0, 0.0]], &f)
        .unwrap_err()
        .to_string();
    assert!(e.contains("width"), "{e}");

    let ids = vec!["a".to_string(), "b".to_string()];
    let input = SelectionInput::new(&ids).unwrap();
    let rule = AnchorSimilarity {
        harm: vec![0.1, f64::NAN],
        budget: Budget::Count(1),
        name: "rep-sim".into(),
    };
    let e = rule.select(&input).unwrap_err().to_string();
    assert!(e.contains("`b`"), "{e}");
}
