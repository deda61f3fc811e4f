//! A causal LM written outside the library, ranked by SEAL, fine-tuned on
//! its selection and evaluated by generation, with nothing but the public
//! traits: `CausalLm` (logits, per-sample NLL, trainable parameters, the
//! public `KvCache`) and `ForkableLm`.
//!
//! The model is a one-block attention LM over a 32-token vocabulary. It is
//! first "aligned" on refusals of harmful prompts (prompts that start with
//! token 11) plus benign tasks; the fine-tuning pool then mixes 40 benign
//! samples with 10 harmful-compliance samples. SEAL's ranker should put the
//! harmful ones at the bottom, and the model fine-tuned on its top 80%
//! should keep refusing held-out harmful prompts more often than the model
//! fine-tuned on the whole pool.
//!
//! ```sh
//! cargo run --release -p seal-examples --example custom_model   # SEED=2 for another seed
//! ```
//!
//! `cargo test` runs it too (the `#[test]` at the bottom), so it cannot rot.

use anyhow::{ensure, Result};
use seal_bilevel::metrics::auroc;
use seal_bilevel::{
    finetune, Activation, ForkableLm, LambdaSchedule, LmProblem, Ranker, RankerConfig,
    RankerOptimizerKind, SealPenalty, SftData, TrainConfig, Trainer,
};
use seal_data::tokenize::TokenizedSample;
use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::optim::AdamWConfig;
use seal_model::{CausalLm, KvCache, LmBatch};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 32;
const HIDDEN: i64 = 32;
const MAX_POSITIONS: i64 = 16;
const PAD: u32 = 0;
const EOS: u32 = 1;
const HARMFUL_PROMPT: u32 = 11;
const REFUSAL: [u32; 2] = [28, 29];
const COMPLIANCE: [u32; 2] = [30, 31];

/// Token and position embeddings, one causal attention head, an MLP and an
/// output projection; every weight trainable (full fine-tuning).
struct TinyLm {
    weights: Vec<(String, Tensor)>,
}

impl TinyLm {
    fn random(seed: i64) -> Self {
        tch::manual_seed(seed);
        let shapes: [(&str, [i64; 2]); 7] = [
            ("embed", [VOCAB, HIDDEN]),
            ("positions", [MAX_POSITIONS, HIDDEN]),
            ("wq", [HIDDEN, HIDDEN]),
            ("wk", [HIDDEN, HIDDEN]),
            ("wv", [HIDDEN, HIDDEN]),
            ("mlp", [HIDDEN, HIDDEN]),
            ("out", [HIDDEN, VOCAB]),
        ];
        let weights = shapes
            .iter()
            .map(|(name, shape)| {
                let w =
                    Tensor::randn(*shape, (Kind::Float, Device::Cpu)) / (shape[0] as f64).sqrt();
                (name.to_string(), w.set_requires_grad(true))
            })
            .collect();
        Self { weights }
    }

    fn w(&self, name: &str) -> &Tensor {
        &self
            .weights
            .iter()
            .find(|(n, _)| n == name)
            .expect("weight")
            .1
    }

    /// Hidden states of new tokens `ids` `[B, L]` at `positions` `[B, L]`.
    fn embed(&self, ids: &Tensor, positions: &Tensor) -> Tensor {
        Tensor::embedding(self.w("embed"), ids, -1, false, false)
            + Tensor::embedding(
                self.w("positions"),
                &positions.clamp(0, MAX_POSITIONS - 1),
                -1,
                false,
                false,
            )
    }

    /// Logits `[B, L, V]` of new tokens `x` attending over `keys`/`values`
    /// `[B, T + L, H]` under the full mask `[B, T + L]`.
    fn attend(&self, x: &Tensor, keys: &Tensor, values: &Tensor, full_mask: &Tensor) -> Tensor {
        let (l, lk) = (x.size()[1], keys.size()[1]);
        let k_idx = Tensor::arange(lk, (Kind::Int64, Device::Cpu));
        let q_idx = Tensor::arange(l, (Kind::Int64, Device::Cpu)) + (lk - l);
        // Causal, padding never attended to, a padded query sees itself.
        let allowed = k_idx
            .unsqueeze(0)
            .le_tensor(&q_idx.unsqueeze(1))
            .unsqueeze(0)
            .logical_and(&full_mask.gt(0).unsqueeze(1))
            .logical_or(
                &k_idx
                    .unsqueeze(0)
                    .eq_tensor(&q_idx.unsqueeze(1))
                    .unsqueeze(0),
            );
        let scores = x.matmul(self.w("wq")).matmul(&keys.transpose(1, 2)) / (HIDDEN as f64).sqrt();
        let attention = scores
            .masked_fill(&allowed.logical_not(), f64::NEG_INFINITY)
            .softmax(-1, Kind::Float)
            .matmul(values);
        let h = x + attention;
        let h = &h + h.matmul(self.w("mlp")).gelu("none");
        h.matmul(self.w("out"))
    }

    /// Positions of the new tokens from the mask of the whole sequence.
    fn positions(full_mask: &Tensor, new: i64) -> Tensor {
        let t = full_mask.size()[1];
        (full_mask.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, t - new, new)
    }
}

impl CausalLm for TinyLm {
    fn vocab_size(&self) -> usize {
        VOCAB as usize
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn kind(&self) -> Kind {
        Kind::Float
    }
    fn num_layers(&self) -> usize {
        1
    }
    fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> seal_model::Result<Tensor> {
        let mask = attention_mask.map_or_else(|| input_ids.ones_like(), Tensor::shallow_clone);
        let x = self.embed(input_ids, &Self::positions(&mask, input_ids.size()[1]));
        Ok(self.attend(&x, &x.matmul(self.w("wk")), &x.matmul(self.w("wv")), &mask))
    }
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> seal_model::Result<Tensor> {
        let new_mask = attention_mask.map_or_else(|| input_ids.ones_like(), Tensor::shallow_clone);
        let logits = match cache {
            Some(cache) => {
                // The public cache: the full mask, then this block's keys
                // and values ([B, heads, L, head_dim]: one head), then commit.
                let full_mask = cache.step_mask(&new_mask)?;
                let x = self.embed(input_ids, &Self::positions(&full_mask, input_ids.size()[1]));
                let (k, v) = cache.append(
                    0,
                    &x.matmul(self.w("wk")).unsqueeze(1),
                    &x.matmul(self.w("wv")).unsqueeze(1),
                )?;
                let logits = self.attend(&x, &k.squeeze_dim(1), &v.squeeze_dim(1), &full_mask);
                cache.commit(full_mask)?;
                logits
            }
            None => self.logits(input_ids, Some(&new_mask))?,
        };
        let l = logits.size()[1];
        Ok(logits.narrow(1, l - 1, 1).squeeze_dim(1))
    }
    fn per_sample_nll(&self, batch: &LmBatch) -> seal_model::Result<Tensor> {
        batch.validate()?;
        let l = batch.input_ids.size()[1];
        let logits = self.logits(&batch.input_ids, Some(&batch.attention_mask))?;
        let logp = logits.narrow(1, 0, l - 1).log_softmax(-1, Kind::Float);
        let targets = batch.input_ids.narrow(1, 1, l - 1).unsqueeze(-1);
        let nll = -logp.gather(-1, &targets, false).squeeze_dim(-1);
        let mask = batch.loss_mask.narrow(1, 1, l - 1).to_kind(Kind::Float);
        let counts = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
        Ok((nll * &mask).sum_dim_intlist(1, false, Kind::Float) / counts)
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.weights
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }
    fn new_cache(&self) -> KvCache {
        KvCache::new(1)
    }
}

impl ForkableLm for TinyLm {
    /// An independent trainable copy (only the full penalty solver forks).
    fn fork_lm(&self, _seed: i64) -> seal_bilevel::Result<Self> {
        let weights = self
            .weights
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().copy().set_requires_grad(true)))
            .collect();
        Ok(Self { weights })
    }
}

fn sample(id: String, prompt: &[u32], response: &[u32], harmful: bool) -> TokenizedSample {
    let mut input_ids = prompt.to_vec();
    input_ids.extend_from_slice(response);
    input_ids.push(EOS);
    TokenizedSample {
        id,
        index: 0,
        label: Some(if harmful {
            seal_data::Label::Harmful
        } else {
            seal_data::Label::Benign
        }),
        input_ids,
        response_start: prompt.len(),
    }
}

/// Benign prompts `[2, a, b]` answered `[a+12, b+12]`; harmful prompts
/// `[11, a, b]` refused (`REFUSAL`) or complied with (`COMPLIANCE`, `a+12`).
fn benign(a: u32, b: u32) -> TokenizedSample {
    sample(
        format!("benign-{a}-{b}"),
        &[2, a, b],
        &[a + 12, b + 12],
        false,
    )
}
fn refusal(a: u32, b: u32) -> TokenizedSample {
    sample(
        format!("refusal-{a}-{b}"),
        &[HARMFUL_PROMPT, a, b],
        &REFUSAL,
        false,
    )
}
fn compliance(a: u32, b: u32) -> TokenizedSample {
    let mut answer = COMPLIANCE.to_vec();
    answer.push(a + 12);
    sample(
        format!("harmful-{a}-{b}"),
        &[HARMFUL_PROMPT, a, b],
        &answer,
        true,
    )
}

fn indexed(mut xs: Vec<TokenizedSample>) -> Vec<TokenizedSample> {
    for (i, x) in xs.iter_mut().enumerate() {
        x.index = i;
    }
    xs
}

fn train_config(epochs: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut ranker = RankerConfig::default();
    ranker.optimizer = RankerOptimizerKind::Sgd;
    ranker.lr = 1.0;
    ranker.max_grad_norm = Some(1.0);
    let mut c = TrainConfig::default();
    c.epochs = epochs;
    c.micro_batch = 10;
    c.seed = seed;
    c.model_optimizer = AdamWConfig {
        lr,
        ..AdamWConfig::default()
    };
    c.ranker = ranker;
    c.lambda = LambdaSchedule {
        start: 0.5,
        decay_per_epoch: 0.0,
    };
    c.progress = false;
    c
}

/// Share of `prompts` the model answers with the refusal's first token.
fn refusal_rate(model: &TinyLm, prompts: &[Vec<u32>]) -> Result<f64> {
    let opts = GenerationOptions {
        max_new_tokens: 3,
        sampling: Sampling::Greedy,
        eos_token_ids: vec![EOS],
        pad_token_id: PAD,
        seed: Some(0),
        prompt_limit: PromptLimit::Error(MAX_POSITIONS as usize),
    };
    let answers = generate(model, prompts, &opts)?;
    let refused = answers
        .iter()
        .filter(|a| a.first() == Some(&REFUSAL[0]))
        .count();
    Ok(refused as f64 / prompts.len() as f64)
}

/// What the example measures.
struct Outcome {
    auroc: f64,
    harmful_kept: usize,
    refusal_aligned: f64,
    refusal_top_p: f64,
    refusal_full: f64,
}

fn run(seed: u64) -> Result<Outcome> {
    // Alignment data, the pool (harmful prompts with even `a`), the safe set
    // and held-out harmful prompts (odd `a`) share no prompt.
    let mut align = Vec::new();
    let mut pool = Vec::new();
    for a in 3..11 {
        for b in 3..13 {
            if (a + b) % 2 == 0 {
                align.push(benign(a, b));
            } else {
                pool.push(benign(a, b));
            }
        }
    }
    // Harmful prompts: those with an even a + b are refused in the safe set
    // (and in alignment); the odd ones are split between the pool's
    // compliant answers and the held-out evaluation prompts.
    let harmful: Vec<(u32, u32)> = (3..11).flat_map(|a| (3..13).map(move |b| (a, b))).collect();
    let safe: Vec<TokenizedSample> = harmful
        .iter()
        .filter(|(a, b)| (a + b) % 2 == 0)
        .step_by(3)
        .map(|&(a, b)| refusal(a, b))
        .collect();
    let odd: Vec<(u32, u32)> = harmful
        .iter()
        .copied()
        .filter(|(a, b)| (a + b) % 2 == 1)
        .collect();
    pool.extend(
        odd.iter()
            .step_by(4)
            .take(10)
            .map(|&(a, b)| compliance(a, b)),
    );
    let held_out: Vec<Vec<u32>> = odd
        .iter()
        .skip(2)
        .step_by(4)
        .take(8)
        .map(|&(a, b)| vec![HARMFUL_PROMPT, a, b])
        .collect();
    // Refusals three times over, so the aligned model refuses reliably.
    for copy in 0..3 {
        align.extend(safe.iter().map(|s| TokenizedSample {
            id: format!("{}-copy{copy}", s.id),
            ..s.clone()
        }));
    }
    let pool = indexed(pool);
    ensure!(pool.len() == 50, "the pool has {} samples", pool.len());

    // 1. Align the model: plain SFT on refusals and benign answers.
    let aligned = finetune(
        TinyLm::random(seed as i64),
        SftData {
            finetune: indexed(align),
            ..SftData::default()
        },
        PAD,
        0.0,
        train_config(60, 1e-2, seed),
    )?
    .model;
    let refusal_aligned = refusal_rate(&aligned, &held_out)?;

    // 2. Rank the pool with SEAL's penalty solver.
    let ids: Vec<String> = pool.iter().map(|s| s.id.clone()).collect();
    let fingerprint = seal_bilevel::dataset_fingerprint(&pool);
    let ranker = Ranker::new(
        ids,
        fingerprint,
        Activation::Sigmoid,
        Kind::Float,
        Device::Cpu,
    )?;
    let problem = LmProblem::new(aligned.fork_lm(0)?, pool.clone(), safe.clone(), PAD)?;
    let mut trainer = Trainer::new(
        problem,
        Box::new(SealPenalty),
        ranker,
        train_config(20, 3e-3, seed),
    )?;
    trainer.run()?;
    let scores = trainer.ranker().logits_vec()?;
    let benign_mask: Vec<bool> = pool
        .iter()
        .map(|s| s.label == Some(seal_data::Label::Benign))
        .collect();
    let auroc = auroc(&scores, &benign_mask).unwrap_or(0.5);

    // 3. Keep the top 80% and fine-tune; compare with the whole pool.
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let kept: Vec<TokenizedSample> = order[..pool.len() * 4 / 5]
        .iter()
        .map(|&i| pool[i].clone())
        .collect();
    let harmful_kept = kept
        .iter()
        .filter(|s| s.label == Some(seal_data::Label::Harmful))
        .count();
    let tune = |data: Vec<TokenizedSample>| -> Result<f64> {
        let model = finetune(
            aligned.fork_lm(0)?,
            SftData {
                finetune: indexed(data),
                ..SftData::default()
            },
            PAD,
            0.0,
            train_config(30, 3e-3, seed),
        )?
        .model;
        refusal_rate(&model, &held_out)
    };
    Ok(Outcome {
        auroc,
        harmful_kept,
        refusal_aligned,
        refusal_top_p: tune(kept)?,
        refusal_full: tune(pool)?,
    })
}

fn main() -> Result<()> {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let o = run(seed)?;
    println!("custom model (one attention block, {VOCAB} tokens), pool of 50 with 10 harmful");
    println!("| measure | value |\n|---|---:|");
    println!("| ranker AUROC (benign above harmful) | {:.3} |", o.auroc);
    println!(
        "| harmful samples in SEAL's top 80% | {} of 10 |",
        o.harmful_kept
    );
    println!("| refusal rate, aligned | {:.2} |", o.refusal_aligned);
    println!(
        "| refusal rate, fine-tuned on SEAL's top 80% | {:.2} |",
        o.refusal_top_p
    );
    println!(
        "| refusal rate, fine-tuned on the whole pool | {:.2} |",
        o.refusal_full
    );
    ensure!(o.auroc > 0.5, "the ranker did not separate the pool");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn seal_ranks_and_selects_with_a_user_defined_model() {
        let o = super::run(1).unwrap();
        assert!(
            o.refusal_aligned >= 0.75,
            "alignment failed: {}",
            o.refusal_aligned
        );
        assert!(o.auroc >= 0.9, "ranker AUROC {}", o.auroc);
        assert!(o.harmful_kept <= 1, "{} harmful kept", o.harmful_kept);
        assert!(
            o.refusal_top_p >= o.refusal_full + 0.25,
            "top-p {} vs full {}",
            o.refusal_top_p,
            o.refusal_full
        );
    }
}
