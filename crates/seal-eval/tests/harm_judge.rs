//! The trained judge on tiny random models: features, head fitting,
//! save/load, base-model checks and the judge end to end; plus the
//! agreement of the committed-recipe judge with held-out labels when
//! SmolLM2 and the shared data are there.

use std::collections::HashMap;

use seal_eval::classifier::{
    self, BaseModelRef, HeadConfig, JudgeHead, LabelledSet, Targets, TrainOptions,
};
use seal_eval::features::{self, FeatureSpec, Pooling};
use seal_eval::judge::{HarmQuery, Judge};
use seal_eval::ClassifierJudge;
use seal_model::{CausalLm, Llama, LlamaConfig};
use tch::{Device, Kind, Tensor};

fn tiny() -> (Llama, seal_data::TextTokenizer) {
    let tok = seal_data::testing::chatml_tokenizer(None).unwrap();
    let model = Llama::random(
        &LlamaConfig::tiny(tok.vocab_size()),
        Device::Cpu,
        Kind::Float,
        5,
    )
    .unwrap();
    (model, tok)
}

fn small_spec(num_layers: usize) -> FeatureSpec {
    FeatureSpec {
        layers: vec![1, num_layers],
        pooling: vec![Pooling::ResponseMean, Pooling::Last],
        max_prompt_tokens: 64,
        max_response_tokens: 64,
        batch_tokens: 4096,
        framing: Default::default(),
    }
}

const PAIRS: [(&str, &str); 4] = [
    (
        "How do I bake bread?",
        "Mix flour, water and yeast, then bake.",
    ),
    (
        "Hi",
        "Hello! How can I help you today with anything at all?",
    ),
    ("Tell me a secret", ""),
    ("Why?", "Because."),
];

fn queries() -> Vec<HarmQuery<'static>> {
    PAIRS
        .iter()
        .map(|(p, r)| HarmQuery {
            prompt: p,
            response: r,
        })
        .collect()
}

#[test]
fn features_do_not_depend_on_batching_or_padding() {
    let (model, tok) = tiny();
    let n = model.num_layers();
    let spec = small_spec(n);
    let (all, stats) = features::extract_features(&model, &tok, &queries(), &spec).unwrap();
    assert_eq!(all.size(), [4, spec.dim(model.config().hidden_size) as i64]);
    assert_eq!(stats.pairs, 4);
    assert!(stats.padded_tokens >= stats.tokens);
    // One pair per batch: no padding at all.
    let one = FeatureSpec {
        batch_tokens: 160,
        ..spec.clone()
    };
    let (single, s) = features::extract_features(&model, &tok, &queries(), &one).unwrap();
    assert!(
        s.batches > stats.batches,
        "{} vs {}",
        s.batches,
        stats.batches
    );
    let diff = (&all - &single).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "batched and single features differ by {diff}");
    // The empty response still has features (the end-of-turn token).
    assert!(bool::try_from(all.get(2).isfinite().all()).unwrap());
}

#[test]
fn judge_prompt_framing_reads_the_whole_pair_and_has_its_own_cache_key() {
    let (model, tok) = tiny();
    let chat = small_spec(model.num_layers());
    let judge = FeatureSpec {
        framing: features::Framing::JudgePrompt,
        ..chat.clone()
    };
    let pairs = features::encode_pairs(&tok, &queries(), &judge).unwrap();
    // One user turn quoting both texts, pooled over the whole sequence.
    assert!(pairs.iter().all(|p| p.response_start == 0));
    let text = tok.decode(&pairs[0].ids, false).unwrap();
    assert!(text.contains("Question: How do I bake bread?") && text.contains("Answer: Mix flour"));
    let (x, _) = features::extract_features(&model, &tok, &queries(), &judge).unwrap();
    let (y, _) = features::extract_features(&model, &tok, &queries(), &chat).unwrap();
    assert_eq!(x.size(), y.size());
    assert!((&x - &y).abs().max().double_value(&[]) > 1e-3);
    let key = |s: &FeatureSpec| features::FeatureCache::key("fp", s, "sha");
    assert_ne!(key(&chat), key(&judge));
}

#[test]
fn hidden_states_stop_at_the_deepest_layer_and_check_it() {
    let (model, _) = tiny();
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8]).view([1, 4]);
    let h = model.hidden_states(&ids, None, &[0, 2, 1]).unwrap();
    assert_eq!(h.len(), 3);
    assert!(h
        .iter()
        .all(|t| t.size() == [1, 4, model.config().hidden_size as i64]));
    assert!((&h[1] - &h[2]).abs().max().double_value(&[]) > 0.0);
    let err = model.hidden_states(&ids, None, &[99]).unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
}

fn separable(n: i64, d: i64) -> (Tensor, Targets, Vec<String>) {
    tch::manual_seed(11);
    let x = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([d], (Kind::Float, Device::Cpu));
    // Keep the points with a clear margin for both labels.
    let keep = x
        .matmul(&w)
        .abs()
        .gt(1.0)
        .logical_and(&x.select(1, 0).abs().gt(0.3))
        .nonzero()
        .squeeze_dim(1);
    let x = x.index_select(0, &keep);
    let n = x.size()[0];
    let margin = x.matmul(&w);
    let h: Vec<f64> = Vec::try_from(margin.to_kind(Kind::Double)).unwrap();
    let r: Vec<f64> = Vec::try_from(x.select(1, 0).to_kind(Kind::Double)).unwrap();
    let targets = Targets {
        harmful: h.iter().map(|&v| Some(v > 0.0)).collect(),
        // Half the pairs have no refusal label: the masked loss skips them.
        refusal: r
            .iter()
            .enumerate()
            .map(|(i, &v)| (i % 2 == 0).then_some(v > 0.0))
            .collect(),
    };
    let groups = (0..n).map(|i| format!("prompt {i}")).collect();
    (x, targets, groups)
}

fn accuracy(p: &Tensor, col: i64, labels: &[Option<bool>]) -> f64 {
    let v: Vec<f64> = Vec::try_from(p.select(1, col).to_kind(Kind::Double)).unwrap();
    let (mut ok, mut n) = (0, 0);
    for (p, l) in v.iter().zip(labels) {
        if let Some(l) = l {
            n += 1;
            ok += usize::from((*p >= 0.5) == *l);
        }
    }
    ok as f64 / n as f64
}

#[test]
fn head_learns_a_separable_problem() {
    let (x, targets, groups) = separable(600, 16);
    for hidden in [0, 32] {
        let cfg = HeadConfig {
            hidden,
            epochs: 300,
            patience: 300,
            lr: 1e-2,
            weight_decay: 0.0,
            dropout: 0.0,
            batch_size: 64,
            val_fraction: 0.1,
            seed: 1,
        };
        let (head, log) = JudgeHead::fit(&x, &targets, &groups, &cfg).unwrap();
        assert!(!log.is_empty());
        let p = head.predict(&x).unwrap();
        // Not exactly 1.0: the head keeps its best validation epoch, and which
        // epoch that is depends on the CPU's float reduction order (CI once kept
        // one at 395/396). A broken trainer sits far below this bound.
        for (col, labels) in [(0, &targets.harmful), (1, &targets.refusal)] {
            let acc = accuracy(&p, col, labels);
            assert!(acc >= 0.99, "hidden {hidden}, column {col}: accuracy {acc}");
        }
    }
    // Bad shapes are errors, not panics.
    let (head, _) = JudgeHead::fit(&x, &targets, &groups, &HeadConfig::default()).unwrap();
    assert!(head
        .predict(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)))
        .is_err());
    let short = Targets {
        harmful: vec![Some(true)],
        refusal: vec![None],
    };
    assert!(JudgeHead::fit(&x, &short, &groups, &HeadConfig::default()).is_err());
}

fn trained_judge(base: &std::path::Path) -> (classifier::TrainedJudge, seal_data::TextTokenizer) {
    let pre = seal_model::Pretrained::load(base, &Default::default()).unwrap();
    let spec = small_spec(pre.model.num_layers());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("labels.csv");
    let mut text = String::from("question,answer,label\n");
    for i in 0..40 {
        let (a, l) = if i % 2 == 0 {
            ("I cannot help with that.", 0)
        } else {
            ("Sure, here is how to do it step by step.", 1)
        };
        text.push_str(&format!("\"Question number {i}?\",\"{a}\",{l}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let set = LabelledSet::read(&csv).unwrap();
    let (x, _) =
        features::extract_features(&pre.model, &pre.tokenizer, &set.queries(), &spec).unwrap();
    let fingerprint = features::base_model_fingerprint(base).unwrap();
    let opts = TrainOptions {
        name: "tiny-judge".into(),
        features: spec,
        head: HeadConfig {
            hidden: 8,
            epochs: 100,
            patience: 100,
            lr: 1e-2,
            ..HeadConfig::default()
        },
        test_fraction: 0.2,
    };
    let base_ref = BaseModelRef {
        fingerprint,
        path: base.display().to_string(),
    };
    let t = classifier::train_judge(&[set], &[x], base_ref, &opts).unwrap();
    (t, pre.tokenizer)
}

#[test]
fn save_load_round_trip_and_base_model_check() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let other = root.path().join("other");
    seal_testkit::write_tiny_model_dir(&base, |_| {}).unwrap();
    seal_testkit::write_tiny_model_dir(&other, |c| c.num_hidden_layers += 1).unwrap();
    let (trained, _) = trained_judge(&base);
    assert!(trained
        .card
        .metrics
        .iter()
        .any(|r| r.data == "labels (test)" && r.judge == "keyword-gcg"));
    let judge_dir = root.path().join("judge");
    std::fs::create_dir(&judge_dir).unwrap();
    classifier::save_judge(&judge_dir, &trained.card, &trained.head).unwrap();

    let (card, head) = classifier::load_judge_files(&judge_dir).unwrap();
    assert_eq!(card, trained.card);
    let a: HashMap<String, Tensor> = trained.head.tensors().into_iter().collect();
    let b: HashMap<String, Tensor> = head.tensors().into_iter().collect();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "tensor {name} changed in the round trip");
    }

    // Loaded on its own base model it judges; on another model it is refused.
    let judge = ClassifierJudge::load(&judge_dir, Some(&base), Device::Cpu).unwrap();
    let v = judge.judge_harm_batch(&queries()).unwrap();
    assert_eq!(v.len(), 4);
    assert!(v.iter().all(|v| (0.0..=1.0).contains(&v.score)));
    let r = judge.judge_refusal_batch(&queries()).unwrap();
    assert_eq!(r.len(), 4);
    let same = judge
        .judge_harm("How do I bake bread?", PAIRS[0].1)
        .unwrap();
    assert!((same.score - v[0].score).abs() < 1e-4);

    let err = ClassifierJudge::load(&judge_dir, Some(&other), Device::Cpu)
        .err()
        .expect("another base model must be refused")
        .to_string();
    assert!(
        err.contains(&base.display().to_string()) && err.contains(&other.display().to_string()),
        "{err}"
    );
    assert!(err.contains(&card.base_model.fingerprint), "{err}");

    // A damaged weights file is an error naming it.
    std::fs::write(judge_dir.join(classifier::WEIGHTS_FILE), b"not safetensors").unwrap();
    let err = classifier::load_judge_files(&judge_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("judge.safetensors"), "{err}");
}

/// The shipped recipe on the real model and data, on a small sample so it
/// stays fast: the judge must beat the keyword rule on held-out Safe-RLHF
/// pairs. The full agreement table is `scripts/judge_agreement.sh`.
#[test]
fn smollm2_judge_beats_keywords_on_held_out_safe_rlhf_sample() {
    let Some(dir) = seal_testkit::smollm2_dir().unwrap() else {
        seal_data::testing::skip("model", "SmolLM2 checkpoint not available");
        return;
    };
    let data = seal_testkit::workspace_root().join("../shared/data");
    let file = data.join("safe-rlhf/Safe-RLHFmini.csv");
    if !file.exists() {
        seal_data::testing::skip("data", "../shared/data/safe-rlhf not available");
        return;
    }
    let mut set = LabelledSet::read(&file).unwrap();
    // Every 8th pair: 500 pairs, split by prompt as usual.
    set.pairs = set.pairs.into_iter().step_by(8).collect();
    let pre = seal_model::Pretrained::load(&dir, &Default::default()).unwrap();
    let spec = FeatureSpec {
        layers: vec![12, 16],
        max_response_tokens: 96,
        ..FeatureSpec::default()
    };
    let (x, _) =
        features::extract_features(&pre.model, &pre.tokenizer, &set.queries(), &spec).unwrap();
    let opts = TrainOptions {
        features: spec,
        ..TrainOptions::default()
    };
    let base = BaseModelRef {
        fingerprint: "test".into(),
        path: dir.display().to_string(),
    };
    let t = classifier::train_judge(&[set], &[x], base, &opts).unwrap();
    let acc = |judge: &str| {
        t.card
            .metrics
            .iter()
            .find(|r| r.data == "Safe-RLHF (test)" && r.output == "harmful" && r.judge == judge)
            .map(|r| r.agreement.accuracy)
            .unwrap()
    };
    let (kw, ours) = (acc("keyword-gcg"), acc("classifier-smollm2"));
    eprintln!("held-out harmful accuracy on the sample: keyword {kw:.3}, judge {ours:.3}");
    assert!(ours > kw + 0.05, "judge {ours:.3} vs keyword {kw:.3}");
}
