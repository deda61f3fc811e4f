//! Generation- and NLL-path tests on a tiny random Llama with the byte-level
//! test tokenizer, plus one short SmolLM2 run when its checkpoint exists.

use seal_data::testing::chatml_tokenizer;
use seal_data::tokenize::TokenizeConfig;
use seal_data::{Label, Message, Sample, TextTokenizer};
use seal_eval::generation::generate_responses;
use seal_eval::judge::KeywordJudge;
use seal_eval::refusal::RefusalMatcher;
use seal_eval::{evaluate_gsm8k, evaluate_over_refusal, evaluate_safety, task_nll, EvalError};
use seal_model::generate::GenerationOptions;
use seal_model::{Llama, LlamaConfig};
use tch::{Device, Kind};

fn setup() -> (Llama, TextTokenizer) {
    let tok = chatml_tokenizer(None).unwrap();
    let model = Llama::random(
        &LlamaConfig::tiny(tok.vocab_size()),
        Device::Cpu,
        Kind::Float,
        7,
    )
    .unwrap();
    (model, tok)
}

fn prompt(id: &str, text: &str) -> Sample {
    Sample {
        id: id.into(),
        source: "test".into(),
        label: Some(Label::Harmful),
        messages: vec![Message::user(text)],
        reference: None,
        prefill: None,
    }
}

fn prompts() -> Vec<Sample> {
    [
        "Hi",
        "Tell me a long story about a dragon",
        "2+2?",
        "Why is the sky blue, in brief?",
        "x",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| prompt(&format!("p:{i}"), t))
    .collect()
}

#[test]
fn batched_generation_matches_one_by_one_in_input_order() {
    let (model, tok) = setup();
    let samples = prompts();
    let opts = GenerationOptions::greedy(&tok, 6);
    let batched = generate_responses(&model, &tok, &samples, &opts, 3).unwrap();
    let single = generate_responses(&model, &tok, &samples, &opts, 1).unwrap();
    assert_eq!(batched.len(), samples.len());
    for ((b, s), sample) in batched.iter().zip(&single).zip(&samples) {
        assert_eq!(b.id, sample.id);
        assert_eq!(b.prompt, sample.last_user().unwrap());
        assert_eq!(b.response, s.response, "{}", b.id);
        assert!(b.new_tokens <= 6);
    }
    assert!(batched.iter().any(|g| !g.response.is_empty()));
    assert!(matches!(
        generate_responses(&model, &tok, &samples, &opts, 0),
        Err(EvalError::Invalid { .. })
    ));
}

#[test]
fn safety_and_over_refusal_are_consistent_with_the_matcher() {
    let (model, tok) = setup();
    let samples = prompts();
    let opts = GenerationOptions::greedy(&tok, 5);
    let matcher = RefusalMatcher::gcg();
    let judge = KeywordJudge::new(matcher.clone());
    let s = evaluate_safety(&model, &tok, &samples, &opts, 2, &matcher, &judge).unwrap();
    assert_eq!(s.n, samples.len());
    // With the keyword judge, every response is either a refusal or a success.
    assert_eq!(s.refusals + s.attack_successes, s.n);
    for r in &s.records {
        assert_eq!(r.harmful, Some(r.refusal_marker.is_none()));
        assert_eq!(r.refusal_marker.as_deref(), matcher.find(&r.response));
    }
    let o = evaluate_over_refusal(&model, &tok, &samples, &opts, 4, &matcher).unwrap();
    assert_eq!(
        o.refusals, s.refusals,
        "same greedy responses, same refusals"
    );
    assert!(evaluate_safety(&model, &tok, &[], &opts, 2, &matcher, &judge).is_err());
}

#[test]
fn task_nll_is_batch_invariant_and_averages_correctly() {
    let (model, tok) = setup();
    let samples: Vec<Sample> = [
        ("q one", "answer one"),
        ("a much longer question here", "b"),
        ("q", "a somewhat longer answer"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (q, a))| Sample {
        id: format!("n:{i}"),
        source: "t".into(),
        label: None,
        messages: vec![Message::user(*q), Message::assistant(*a)],
        reference: None,
        prefill: None,
    })
    .collect();
    let cfg = TokenizeConfig::default();
    let all = task_nll(&model, &tok, &samples, &cfg, 3).unwrap();
    let one = task_nll(&model, &tok, &samples, &cfg, 1).unwrap();
    assert_eq!(all.n, 3);
    for (a, b) in all.records.iter().zip(&one.records) {
        assert_eq!(a.id, b.id);
        assert!(
            (a.nll - b.nll).abs() < 1e-4,
            "{}: {} vs {}",
            a.id,
            a.nll,
            b.nll
        );
        // A random model over ~259 tokens is near ln(259) ≈ 5.56 nats.
        assert!(a.nll > 3.0 && a.nll < 9.0, "{}", a.nll);
    }
    let mean = all.records.iter().map(|r| r.nll).sum::<f64>() / 3.0;
    assert!((all.mean_nll - mean).abs() < 1e-12);
    let toks: usize = all.records.iter().map(|r| r.tokens).sum();
    let weighted = all
        .records
        .iter()
        .map(|r| r.nll * r.tokens as f64)
        .sum::<f64>()
        / toks as f64;
    assert!((all.token_mean_nll - weighted).abs() < 1e-12);
    assert!((all.perplexity - weighted.exp()).abs() < 1e-9);
    // A prompt-only sample cannot be scored; the error names it.
    let e = task_nll(&model, &tok, &[prompt("p:x", "q")], &cfg, 1).unwrap_err();
    assert!(e.to_string().contains("p:x"), "{e}");
}

#[test]
fn gsm8k_checks_references_before_generating() {
    let (model, tok) = setup();
    let mut samples = prompts();
    for (i, s) in samples.iter_mut().enumerate() {
        s.reference = Some(format!("{}", i * 10));
    }
    let opts = GenerationOptions::greedy(&tok, 4);
    let e = evaluate_gsm8k(&model, &tok, &samples, &opts, 2).unwrap();
    assert_eq!(e.n, samples.len());
    assert_eq!(e.correct, e.records.iter().filter(|r| r.correct).count());
    assert_eq!(e.records[3].reference, "30");
    samples[2].reference = None;
    let err = evaluate_gsm8k(&model, &tok, &samples, &opts, 2).unwrap_err();
    assert!(
        matches!(&err, EvalError::Sample { id, .. } if id == "p:2"),
        "{err}"
    );
}

/// `eval_utility` samples carry the worked solution as their final assistant
/// turn: generation must answer the question alone (the same responses as
/// for the prompt-only samples, the solution never in the prompt), accuracy
/// must compare with `reference`, and the same samples give the task NLL.
#[test]
fn eval_utility_with_solutions_serves_accuracy_and_nll() {
    let (model, tok) = setup();
    let samples = seal_data::embedded::embedded_default()
        .unwrap()
        .eval_utility;
    assert!(samples.iter().all(|s| s.response().is_some()));
    let bare: Vec<Sample> = samples
        .iter()
        .map(|s| s.clone().into_prompt_only())
        .collect();
    let opts = GenerationOptions::greedy(&tok, 5);
    let with = generate_responses(&model, &tok, &samples, &opts, 4).unwrap();
    let without = generate_responses(&model, &tok, &bare, &opts, 4).unwrap();
    assert_eq!(with, without);

    let e = evaluate_gsm8k(&model, &tok, &samples, &opts, 4).unwrap();
    assert_eq!(e.n, samples.len());
    for (r, s) in e.records.iter().zip(&samples) {
        assert_eq!(Some(r.reference.as_str()), s.reference.as_deref());
    }
    let e_bare = evaluate_gsm8k(&model, &tok, &bare, &opts, 4).unwrap();
    assert_eq!(e, e_bare);

    let n = task_nll(&model, &tok, &samples, &TokenizeConfig::default(), 4).unwrap();
    assert_eq!(n.n, samples.len());
    assert!(n.mean_nll.is_finite() && n.mean_nll > 0.0);
}

/// The real SmolLM2-135M-Instruct on three harmful demo prompts, 24 new
/// tokens: generation runs end to end and every verdict agrees with the
/// matcher. Skipped when the checkpoint is not available.
#[test]
fn smollm2_refusals_on_a_few_harmful_prompts() {
    let Some(dir) = seal_testkit::smollm2_dir().unwrap() else {
        seal_data::testing::skip("model", "SmolLM2 checkpoint not available");
        return;
    };
    let pre = seal_model::Pretrained::load(&dir, &seal_model::LoadOptions::default()).unwrap();
    let bench = seal_data::embedded::embedded_default().unwrap();
    let samples: Vec<Sample> = bench.eval_safety.iter().take(3).cloned().collect();
    let opts = GenerationOptions::greedy(&pre.tokenizer, 24);
    let raw = RefusalMatcher::gcg();
    let norm = RefusalMatcher::gcg().normalize_apostrophes(true);
    let s = evaluate_safety(
        &pre.model,
        &pre.tokenizer,
        &samples,
        &opts,
        3,
        &raw,
        &KeywordJudge::new(raw.clone()),
    )
    .unwrap();
    for r in &s.records {
        eprintln!("{} [{:?}] {}", r.id, r.refusal_marker, r.response);
        assert!(!r.response.trim().is_empty(), "{}: empty response", r.id);
        assert!(norm.find(&r.response).is_some() || r.refusal_marker.is_none());
    }
    eprintln!(
        "SmolLM2: refusal rate {:.3}, ASR {:.3} on {} prompts",
        s.refusal_rate, s.attack_success_rate, s.n
    );
    assert_eq!(s.refusals + s.attack_successes, s.n);
}

/// Self-distillation: selected samples with a response get the model's own
/// greedy answer (trimmed), answers cut at the limit or empty keep the
/// reference, everything else is untouched and the order is kept.
#[test]
fn regenerated_responses_are_the_models_own_answers() {
    use seal_eval::generation::regenerate_responses;
    let (model, tok) = setup();
    let with_response = |id: &str, label: Label, q: &str| Sample {
        id: id.into(),
        source: "test".into(),
        label: Some(label),
        messages: vec![
            Message::user(q),
            Message::assistant(format!("reference {id}")),
        ],
        reference: None,
        prefill: None,
    };
    let mut samples = vec![
        with_response("b:0", Label::Benign, "Tell me a long story about a dragon"),
        with_response("s:0", Label::Safe, "How do I pick a lock?"),
        with_response("b:1", Label::Benign, "Why is the sky blue, in brief?"),
        with_response("b:2", Label::Benign, "2+2?"),
        with_response("b:3", Label::Benign, "Hi"),
    ];
    samples.push(prompt("b:4", "no response here"));
    samples[5].label = Some(Label::Benign);
    let prompt_ids =
        |s: &Sample| seal_data::tokenize::tokenize_prompt(&tok, None, s, false).unwrap();
    // A random tiny model repeats the last prompt token under greedy
    // decoding, so sample instead (seeded: each call restarts the same
    // stream, and batches of one make every call comparable). The first
    // new token of sample 0 that it has not produced before ends sequences,
    // so sample 0 stops early (replaced) while others may reach the limit.
    let mut free = GenerationOptions::greedy(&tok, 6);
    free.eos_token_ids.clear();
    free.sampling = seal_model::generate::Sampling::TopP {
        temperature: 1.0,
        top_p: 1.0,
    };
    free.seed = Some(11);
    let first = seal_model::generate::generate(&model, &[prompt_ids(&samples[0])], &free).unwrap();
    let k = (1..first[0].len())
        .find(|&k| !first[0][..k].contains(&first[0][k]))
        .expect("six sampled tokens, not all equal");
    let mut opts = free.clone();
    opts.eos_token_ids = vec![first[0][k]];
    let (out, stats) = regenerate_responses(
        &model,
        &tok,
        &samples,
        |s| s.label == Some(Label::Benign),
        &opts,
        1,
    )
    .unwrap();
    assert_eq!(out.len(), samples.len());
    assert_eq!(
        stats.untouched, 2,
        "the safe sample and the prompt-only one"
    );
    assert_eq!(stats.replaced + stats.truncated + stats.empty, 4);
    assert!(stats.replaced >= 1 && stats.truncated >= 1, "{stats:?}");
    assert_eq!(out[1], samples[1]);
    assert_eq!(out[5], samples[5]);
    for i in [0, 2, 3, 4] {
        let alone =
            seal_model::generate::generate(&model, &[prompt_ids(&samples[i])], &opts).unwrap();
        let text = tok.decode(&alone[0], true).unwrap();
        let kept = alone[0].len() >= 6 || text.trim().is_empty();
        let want = if kept {
            samples[i].response().unwrap().to_string()
        } else {
            text.trim().to_string()
        };
        assert_eq!(out[i].response(), Some(want.as_str()), "sample {i}");
        assert_eq!(out[i].prompt_messages(), samples[i].prompt_messages());
        assert_eq!(out[i].id, samples[i].id);
    }
    assert_ne!(
        out[0].response(),
        samples[0].response(),
        "stopped early, so replaced"
    );
}
