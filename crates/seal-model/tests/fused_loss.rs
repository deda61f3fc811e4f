//! The chunked (fused) response loss against the full-logits one: values,
//! first-order gradients under any per-sample weighting, chunk boundaries,
//! bf16, the no-grad path, and when the families fall back to the exact loss.

use seal_model::config::LlamaConfig;
use seal_model::model::{chunked_response_nll, response_nll};
use seal_model::{AttentionImpl, CausalLm, Llama, LmBatch, LoraConfig};
use tch::{Device, Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A right-padded batch of `b` rows of different lengths over `vocab`,
/// responses starting part-way, and one row without any label.
fn batch(b: usize, max_len: usize, vocab: u32, seed: u64) -> LmBatch {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut rows = Vec::new();
    let mut starts = Vec::new();
    for r in 0..b {
        let len = max_len - (r * 7) % (max_len / 2);
        rows.push(
            (0..len)
                .map(|_| 1 + next() % (vocab - 1))
                .collect::<Vec<_>>(),
        );
        // The last row's response starts past its end: no label at all.
        starts.push(if r == b - 1 { len } else { 1 + r % (len / 2) });
    }
    LmBatch::from_rows(&rows, &starts, 0).unwrap()
}

/// Values and the gradient of a weighted sum with respect to the hidden
/// states, for both losses.
fn both(
    kind: Kind,
    vocab: i64,
    width: i64,
    batch: &LmBatch,
    seed: i64,
    device: Device,
) -> [(Tensor, Tensor); 2] {
    tch::manual_seed(seed);
    let size = batch.input_ids.size();
    let cpu = (Kind::Float, Device::Cpu);
    let hidden = Tensor::randn([size[0], size[1], width], cpu)
        .to_kind(kind)
        .to_device(device);
    let weight = (Tensor::randn([vocab, width], cpu) * 0.3)
        .to_kind(kind)
        .to_device(device);
    let weights = (Tensor::rand([size[0]], cpu) + 0.5).to_device(device);
    let run = |chunked: bool| {
        let h = hidden.detach().set_requires_grad(true);
        let nll = if chunked {
            chunked_response_nll(&h, batch, Kind::Float, &weight).unwrap()
        } else {
            response_nll(&h, batch, Kind::Float, &|x| {
                x.linear::<&Tensor>(&weight, None)
            })
            .unwrap()
        };
        (&nll * &weights).sum(Kind::Float).backward();
        (
            nll.detach().to_device(Device::Cpu),
            h.grad().to_device(Device::Cpu),
        )
    };
    [run(true), run(false)]
}

#[test]
fn chunked_loss_matches_full_logits_across_chunks() {
    // 8192 tokens of vocabulary: 512 rows a chunk on the CPU, so the 8 rows
    // of up to 300 tokens span several chunks with a ragged last one.
    let b = batch(8, 300, 8192, 1);
    let [(nll, grad), (want_nll, want_grad)] = both(Kind::Float, 8192, 24, &b, 3, Device::Cpu);
    assert_eq!(nll.size(), [8]);
    assert!(max_abs_diff(&nll, &want_nll) < 1e-5, "{nll} vs {want_nll}");
    assert_eq!(nll.double_value(&[7]), 0.0, "a row without labels gets 0");
    let scale = want_grad.abs().max().double_value(&[]);
    assert!(scale > 0.0);
    assert!(max_abs_diff(&grad, &want_grad) < 1e-5 * scale.max(1.0));
    // Positions without a label (prompts, padding, the last position) get
    // no gradient, exactly as in the full loss.
    let mask = b
        .loss_mask
        .narrow(1, 1, 299)
        .to_kind(Kind::Bool)
        .logical_not();
    let unlabelled = grad
        .narrow(1, 0, 299)
        .abs()
        .sum_dim_intlist(2, false, Kind::Float);
    assert_eq!(
        unlabelled
            .masked_select(&mask)
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
}

#[test]
fn chunked_loss_in_bf16_agrees_up_to_rounding() {
    let b = batch(4, 120, 4096, 2);
    let [(nll, grad), (want_nll, want_grad)] = both(Kind::BFloat16, 4096, 32, &b, 5, Device::Cpu);
    assert_eq!(nll.kind(), Kind::Float);
    assert_eq!(grad.kind(), Kind::BFloat16);
    assert!(max_abs_diff(&nll, &want_nll) < 1e-3, "{nll} vs {want_nll}");
    let scale = want_grad.abs().max().double_value(&[]);
    assert!(max_abs_diff(&grad, &want_grad) < 2e-2 * scale);
}

#[test]
fn chunked_loss_without_grad_gives_the_values_alone() {
    let b = batch(3, 40, 512, 3);
    let hidden = Tensor::randn([3, 40, 16], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([512, 16], (Kind::Float, Device::Cpu));
    let nll = chunked_response_nll(&hidden, &b, Kind::Float, &weight).unwrap();
    assert!(!nll.requires_grad());
    let want = response_nll(&hidden, &b, Kind::Float, &|x| {
        x.linear::<&Tensor>(&weight, None)
    })
    .unwrap();
    assert!(max_abs_diff(&nll, &want) < 1e-4);
}

#[test]
fn chunked_loss_names_a_bad_head_and_a_label_outside_the_vocabulary() {
    let b = batch(2, 10, 100, 4);
    let hidden = Tensor::randn([2, 10, 8], (Kind::Float, Device::Cpu));
    let err = chunked_response_nll(
        &hidden,
        &b,
        Kind::Float,
        &Tensor::zeros([100, 9], (Kind::Float, Device::Cpu)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[100, 9]") && err.contains("width 8"), "{err}");
    let err = chunked_response_nll(
        &hidden,
        &b,
        Kind::Float,
        &Tensor::zeros([50, 8], (Kind::Float, Device::Cpu)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("outside the vocabulary of 50"), "{err}");
}

/// A Llama's LoRA gradients are the same through the fused loss (SDPA) and
/// the exact one (math attention, twice differentiable); a full fine-tuning
/// still trains the tied head, through the exact loss.
#[test]
fn llama_uses_the_fused_loss_only_where_it_is_exact_to_first_order() {
    let mut model = Llama::random(&LlamaConfig::tiny(61), Device::Cpu, Kind::Double, 7).unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    model.add_lora(&lora, 0).unwrap();
    let b = batch(3, 12, 61, 5);
    let weights = Tensor::from_slice(&[0.2f64, 1.0, 3.0]);
    let grads = |model: &Llama| {
        let params: Vec<Tensor> = model
            .trainable_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let nll = model.per_sample_nll(&b).unwrap();
        let loss = (&nll * &weights).sum(Kind::Double);
        (
            nll.detach(),
            Tensor::run_backward(&[&loss], &params, false, false),
        )
    };
    let (fused, fused_grads) = grads(&model);
    model.set_attention_impl(AttentionImpl::Math);
    let (exact, exact_grads) = grads(&model);
    assert!(max_abs_diff(&fused, &exact) < 1e-10);
    assert_eq!(fused_grads.len(), exact_grads.len());
    // LoRA's B starts at zero, so only the B factors have a gradient yet.
    let nonzero = exact_grads
        .iter()
        .filter(|e| e.abs().max().double_value(&[]) > 0.0)
        .count();
    assert!(
        nonzero >= exact_grads.len() / 2,
        "{nonzero} of {}",
        exact_grads.len()
    );
    for (f, e) in fused_grads.iter().zip(&exact_grads) {
        assert!(max_abs_diff(f, e) < 1e-10);
    }
    model.set_attention_impl(AttentionImpl::Sdpa);
    model.set_full_finetune(true);
    let params = model.trainable_parameters();
    let nll = model.per_sample_nll(&b).unwrap();
    let head = params
        .iter()
        .find(|(name, _)| name.contains("embed_tokens") || name.contains("lm_head"))
        .map(|(_, t)| t.shallow_clone())
        .expect("a head or embedding parameter");
    let g = Tensor::run_backward(&[&nll.sum(Kind::Double)], &[&head], false, false);
    assert!(
        g[0].abs().max().double_value(&[]) > 0.0,
        "the tied head is trained"
    );
}

/// On a GPU (larger chunks: 1365 rows for this vocabulary), the same
/// agreement; a CPU-only machine skips it with a message.
#[test]
fn chunked_loss_matches_full_logits_on_cuda() {
    if !tch::Cuda::is_available() {
        seal_data::testing::skip("gpu", "libtorch sees no CUDA device");
        return;
    }
    // 49152 tokens of vocabulary, as SmolLM2: 8 rows of up to 400 tokens
    // span three chunks.
    let b = batch(8, 400, 49152, 6);
    for kind in [Kind::Float, Kind::BFloat16] {
        let [(nll, grad), (want_nll, want_grad)] = both(kind, 49152, 64, &b, 7, Device::Cuda(0));
        let scale = want_grad.abs().max().double_value(&[]);
        let (tol_nll, tol_grad) = if kind == Kind::Float {
            (1e-4, 1e-4)
        } else {
            (1e-2, 2e-2)
        };
        assert!(
            max_abs_diff(&nll, &want_nll) < tol_nll,
            "{kind:?}: {nll} vs {want_nll}"
        );
        assert!(
            max_abs_diff(&grad, &want_grad) < tol_grad * scale.max(1.0),
            "{kind:?}"
        );
    }
}
