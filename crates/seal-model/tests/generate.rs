//! Generation on a tiny random model: greedy versus sampling, seeding,
//! nucleus truncation, batching and stopping.

use seal_model::config::LlamaConfig;
use seal_model::generate::{generate, GenerationOptions, PromptLimit, Sampling};
use seal_model::Llama;
use tch::{Device, Kind};

fn model() -> Llama {
    Llama::random(&LlamaConfig::tiny(50), Device::Cpu, Kind::Float, 3).unwrap()
}

fn opts(sampling: Sampling, seed: Option<u64>) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens: 12,
        sampling,
        eos_token_ids: vec![],
        pad_token_id: 0,
        seed,
        prompt_limit: PromptLimit::DEFAULT,
    }
}

#[test]
fn sampling_is_seeded_and_a_tiny_nucleus_is_greedy() {
    let m = model();
    let prompts = vec![vec![5u32, 9, 11], vec![7u32, 1]];
    let greedy = generate(&m, &prompts, &opts(Sampling::Greedy, None)).unwrap();
    assert!(greedy.iter().all(|g| g.len() == 12));
    let nucleus = Sampling::TopP {
        temperature: 1.0,
        top_p: 1e-9,
    };
    assert_eq!(
        generate(&m, &prompts, &opts(nucleus, Some(1))).unwrap(),
        greedy
    );

    // A random tiny model is close to uniform: hot sampling leaves the greedy path.
    let hot = Sampling::TopP {
        temperature: 2.0,
        top_p: 1.0,
    };
    let a = generate(&m, &prompts, &opts(hot, Some(42))).unwrap();
    let b = generate(&m, &prompts, &opts(hot, Some(42))).unwrap();
    let c = generate(&m, &prompts, &opts(hot, Some(43))).unwrap();
    assert_eq!(a, b, "same seed, same samples");
    assert_ne!(a, c, "another seed, other samples");
    assert_ne!(a, greedy);
}

#[test]
fn eos_stops_rows_independently_and_bad_options_fail() {
    let m = model();
    let prompts = vec![vec![5u32, 9, 11], vec![7u32, 1]];
    let greedy = generate(&m, &prompts, &opts(Sampling::Greedy, None)).unwrap();
    // Pick as end token the first greedy token of row 0 that differs from
    // its first token (or the last one), and expect every row to stop right
    // before its first occurrence.
    let eos = *greedy[0]
        .iter()
        .find(|&&t| t != greedy[0][0])
        .unwrap_or(&greedy[0][11]);
    let mut o = opts(Sampling::Greedy, None);
    o.eos_token_ids = vec![eos];
    let stopped = generate(&m, &prompts, &o).unwrap();
    for (row, full) in stopped.iter().zip(&greedy) {
        let cut = full.iter().position(|&t| t == eos).unwrap_or(full.len());
        assert_eq!(row, &full[..cut].to_vec());
    }
    assert!(stopped[0].len() < 12, "row 0 stops early");

    let bad = Sampling::TopP {
        temperature: 0.0,
        top_p: 0.9,
    };
    assert!(generate(&m, &prompts, &opts(bad, Some(1))).is_err());
    assert!(generate(&m, &[vec![]], &opts(Sampling::Greedy, None)).is_err());
}

#[test]
fn prompts_over_the_limit_are_refused_or_cut_from_the_left() {
    let m = model();
    let long: Vec<u32> = (0..40).map(|t| (t % 45 + 1) as u32).collect();
    let mut o = opts(Sampling::Greedy, Some(0));
    o.prompt_limit = PromptLimit::Error(16);
    let err = generate(&m, &[vec![1, 2], long.clone()], &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prompt 1") && err.contains("40 tokens") && err.contains("16"),
        "{err}"
    );
    o.prompt_limit = PromptLimit::TruncateLeft(16);
    let cut = generate(&m, std::slice::from_ref(&long), &o).unwrap();
    let tail = generate(&m, &[long[24..].to_vec()], &opts(Sampling::Greedy, Some(0))).unwrap();
    assert_eq!(cut, tail, "truncation keeps the last tokens");
}
