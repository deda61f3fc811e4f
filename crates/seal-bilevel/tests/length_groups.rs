//! Length-aware batching changes the shape of the forward passes, never
//! their result: per-sample losses of a batch split into length groups
//! ([`grouped_nll`]), or padded whole, equal each sample's loss computed
//! alone without padding, and the gradients agree too.
//!
//! "Equal" is to f64 rounding (1e-12), not bitwise: libtorch's CPU kernels
//! sum in an order that depends on the shapes they see (a matmul of one row
//! and of thirteen rows, or a softmax over 13 and over 16 keys, round
//! differently), so no batching can be bitwise equal to single-sample
//! forwards. A mask that let padding or another row leak in would move the
//! losses by far more than that (the last check shows it).

use seal_bilevel::lm::{default_group_overhead, grouped_nll, lm_batch};
use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizedSample};
use seal_model::{AttentionImpl, CausalLm, Llama, LlamaConfig, LoraConfig};
use tch::{Device, Kind, Tensor};

fn data() -> (Vec<TokenizedSample>, u32, usize) {
    let tok = seal_data::testing::chatml_tokenizer(None).unwrap();
    let bench = seal_data::embedded::embedded_default().unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 200;
    let samples = tokenize_samples(&tok, &bench.finetune[..16], &cfg)
        .unwrap()
        .samples;
    (samples, tok.pad_token_id().unwrap(), tok.vocab_size())
}

fn model(vocab: usize, attention: AttentionImpl) -> Llama {
    let mut m = Llama::random(&LlamaConfig::tiny(vocab), Device::Cpu, Kind::Double, 3).unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    m.add_lora(&lora, 5).unwrap();
    // A non-zero adapter, so that its gradient reaches every LoRA tensor.
    let _g = tch::no_grad_guard();
    for (_, mut p) in m.trainable_parameters() {
        p.copy_(&(Tensor::randn_like(&p) * 0.05));
    }
    m.set_attention_impl(attention);
    m
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

fn grads(m: &Llama, loss: &Tensor) -> Vec<f64> {
    let params: Vec<Tensor> = m
        .trainable_parameters()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let g = Tensor::run_backward(&[loss], &params, false, false);
    g.iter().flat_map(|t| values(&t.flatten(0, -1))).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn grouped_and_padded_losses_equal_unpadded_single_sample_forwards() {
    let (data, pad, vocab) = data();
    let lengths: Vec<usize> = data.iter().map(TokenizedSample::len).collect();
    let (lo, hi) = (lengths.iter().min().unwrap(), lengths.iter().max().unwrap());
    assert!(
        hi > &(lo + 20),
        "the rows must differ in length: {lengths:?}"
    );
    // A shuffled batch order, as a sampler would give.
    let rows: Vec<usize> = vec![3, 11, 0, 7, 15, 2, 9, 4, 13, 1, 8, 6, 14, 5, 12, 10];
    for attention in [AttentionImpl::Sdpa, AttentionImpl::Math] {
        let m = model(vocab, attention);
        let alone: Vec<f64> = rows
            .iter()
            .map(|&r| {
                values(
                    &m.per_sample_nll(&lm_batch(&data, &[r], pad).unwrap())
                        .unwrap(),
                )[0]
            })
            .collect();
        assert!(alone.iter().all(|v| v.is_finite() && *v > 0.0));
        for overhead in [None, Some(0), Some(32), default_group_overhead(Device::Cpu)] {
            let got = grouped_nll(&m, &data, &rows, pad, overhead).unwrap();
            let d = max_diff(&values(&got), &alone);
            assert!(d < 1e-12, "{attention:?} overhead {overhead:?}: {d:e}");
        }
        // The gradient of a weighted sum, grouped or not, equals the sum of
        // the single-sample gradients.
        let w: Vec<f64> = (0..rows.len()).map(|i| 0.5 + i as f64 / 10.0).collect();
        let wt = Tensor::from_slice(&w);
        let whole = grads(
            &m,
            &(grouped_nll(&m, &data, &rows, pad, None).unwrap() * &wt).sum(Kind::Double),
        );
        let split = grads(
            &m,
            &(grouped_nll(&m, &data, &rows, pad, Some(0)).unwrap() * &wt).sum(Kind::Double),
        );
        let mut single = vec![0.0; whole.len()];
        for (&r, wi) in rows.iter().zip(&w) {
            let l = m
                .per_sample_nll(&lm_batch(&data, &[r], pad).unwrap())
                .unwrap()
                * *wi;
            for (s, g) in single.iter_mut().zip(grads(&m, &l.sum(Kind::Double))) {
                *s += g;
            }
        }
        let scale = single.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        assert!(scale > 0.0);
        assert!(
            max_diff(&whole, &single) < 1e-12 * scale.max(1.0),
            "{attention:?} padded gradient"
        );
        assert!(
            max_diff(&split, &single) < 1e-12 * scale.max(1.0),
            "{attention:?} grouped gradient"
        );
    }
}

/// The tolerance above is tight enough to see a leak: the same batch with
/// its attention mask dropped (padding visible to the queries after it, as
/// with left padding) moves the losses by many orders of magnitude more.
#[test]
fn a_leaking_mask_is_caught_by_that_tolerance() {
    let (data, pad, vocab) = data();
    let m = model(vocab, AttentionImpl::Sdpa);
    // Left-padded rows with no attention mask: padding is attended to.
    let rows = [0usize, 1, 2, 3];
    let l = rows.iter().map(|&r| data[r].len()).max().unwrap();
    let alone: Vec<f64> = rows
        .iter()
        .map(|&r| {
            values(
                &m.per_sample_nll(&lm_batch(&data, &[r], pad).unwrap())
                    .unwrap(),
            )[0]
        })
        .collect();
    let mut ids = Vec::new();
    let mut loss_mask = Vec::new();
    for &r in &rows {
        let s = &data[r];
        let off = l - s.len();
        ids.extend(std::iter::repeat_n(pad as i64, off));
        ids.extend(s.input_ids.iter().map(|&t| t as i64));
        loss_mask.extend(std::iter::repeat_n(0i64, off));
        loss_mask.extend((0..s.len()).map(|t| i64::from(t >= s.response_start.max(1))));
    }
    let shape = [rows.len() as i64, l as i64];
    let batch = seal_model::LmBatch {
        input_ids: Tensor::from_slice(&ids).view(shape),
        attention_mask: Tensor::ones(shape, (Kind::Int64, Device::Cpu)),
        loss_mask: Tensor::from_slice(&loss_mask).view(shape),
    };
    let leaked = values(&m.per_sample_nll(&batch).unwrap());
    let d = max_diff(&leaked, &alone);
    assert!(d > 1e-6, "{d:e}");
}
