//! The loss-based baseline on a tiny random Llama.

// Needs the model-based rules and ranker loading.
#![cfg(feature = "torch")]

use seal_data::tokenize::TokenizeConfig;
use seal_model::{CausalLm, Llama, LlamaConfig, LmBatch};
use seal_select::loss::{dataset_nll, response_nll, LossBased};
use seal_select::rules::SelectionRule;
use seal_select::{Budget, SelectionInput};
use tch::{Device, Kind};

#[test]
fn nll_is_batch_independent_and_drives_the_rule() {
    let tok = seal_data::testing::chatml_tokenizer(None).unwrap();
    let bench = seal_data::embedded::embedded_default().unwrap();
    let samples = &bench.finetune[..7];
    let model = Llama::random(
        &LlamaConfig::tiny(tok.vocab_size()),
        Device::Cpu,
        Kind::Float,
        3,
    )
    .unwrap();
    let pad = tok.pad_token_id().unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 256;
    let scores = dataset_nll(&model, &tok, samples, &cfg, 3, pad).unwrap();
    assert!(scores.unscored.is_empty());
    assert_eq!(scores.nll.len(), 7);
    assert!(
        scores.nll.iter().all(|x| x.is_finite() && *x > 0.0),
        "{:?}",
        scores.nll
    );

    // Each sample alone gives the same NLL as in a sorted, padded batch.
    let data = seal_data::tokenize::tokenize_samples(&tok, samples, &cfg).unwrap();
    for (t, &x) in data.samples.iter().zip(&scores.nll) {
        let b = LmBatch::from_rows(std::slice::from_ref(&t.input_ids), &[t.response_start], pad)
            .unwrap();
        let alone = model.per_sample_nll(&b).unwrap().double_value(&[0]);
        assert!((alone - x).abs() < 1e-4, "{}: {alone} vs {x}", t.id);
    }
    assert_eq!(
        response_nll(&model, &data.samples, 1, pad).unwrap().len(),
        7
    );
    assert!(response_nll(&model, &data.samples, 0, pad).is_err());

    // The rule keeps the lowest losses.
    let ids: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
    let input = SelectionInput::new(&ids).unwrap();
    let rule = LossBased {
        nll: scores.nll.clone(),
        budget: Budget::Count(3),
    };
    let s = rule.select(&input).unwrap();
    let mut by_loss: Vec<usize> = (0..7).collect();
    by_loss.sort_by(|&a, &b| scores.nll[a].total_cmp(&scores.nll[b]));
    let mut want = by_loss[..3].to_vec();
    want.sort_unstable();
    assert_eq!(s.kept_indices(), want);
    assert_eq!(s.entries[0].score, -scores.nll[0]);

    // A NaN loss or a length mismatch is an error naming the sample.
    let mut bad = scores.nll.clone();
    bad[2] = f64::NAN;
    let e = LossBased {
        nll: bad,
        budget: Budget::Count(3),
    }
    .select(&input)
    .unwrap_err();
    assert!(e.to_string().contains(&format!("`{}`", ids[2])), "{e}");
    assert!(LossBased {
        nll: vec![1.0],
        budget: Budget::Count(1)
    }
    .select(&input)
    .is_err());
}

#[test]
fn unscored_samples_rank_last() {
    let ids: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
    let input = SelectionInput::new(&ids).unwrap();
    let rule = LossBased {
        nll: vec![0.5, f64::INFINITY, 0.2, 0.9],
        budget: Budget::Fraction(0.75),
    };
    let s = rule.select(&input).unwrap();
    assert_eq!(s.kept_indices(), vec![0, 2, 3]);
    assert_eq!(s.entries[1].rank, 4);
}
