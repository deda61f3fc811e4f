//! Tokenisation with response-only masks, over-length policies and the
//! cache, with a byte-level tokenizer (exact round trips) and real HH-RLHF
//! multi-turn transcripts.

mod common;

use seal_data::cache::{fingerprint, tokenize_cached};
use seal_data::readers::{read_samples, Format, HhSide, ReadOptions};
use seal_data::testing::chatml_tokenizer;
use seal_data::tokenize::{tokenize_prompt, tokenize_samples, OverLengthPolicy, TokenizeConfig};
use seal_data::{ChatTemplate, Message, Sample};

fn sample(id: &str, msgs: Vec<Message>) -> Sample {
    Sample {
        id: id.into(),
        source: "t".into(),
        label: None,
        messages: msgs,
        reference: None,
        prefill: None,
    }
}

#[test]
fn mask_covers_exactly_response_and_end_token() {
    let tok = chatml_tokenizer(None).unwrap();
    let s = sample(
        "a",
        vec![
            Message::system("Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("Sum 2 and 2?"),
            Message::assistant(" 4, of course. "),
        ],
    );
    let d = tokenize_samples(&tok, &[s], &TokenizeConfig::default()).unwrap();
    let t = &d.samples[0];
    let resp = tok.decode(t.response_ids(), false).unwrap();
    assert_eq!(resp, " 4, of course. <|im_end|>");
    let prompt = tok.decode(t.prompt_ids(), false).unwrap();
    assert!(
        prompt.ends_with("Sum 2 and 2?<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt:?}"
    );
    assert!(prompt.contains("Hello!"));
    // The prompt ids are exactly what generation would see.
    let gen = tok.encode_chat(&t_prompt_msgs(), true).unwrap();
    assert_eq!(t.prompt_ids(), gen.as_slice());
    assert_eq!(d.summary.appended_end_token, 0);
}

fn t_prompt_msgs() -> Vec<Message> {
    vec![
        Message::system("Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello!"),
        Message::user("Sum 2 and 2?"),
    ]
}

/// Evaluation samples may carry the reference solution as their final
/// assistant turn (`eval_utility`, for the held-out NLL). The generation
/// prompt must drop it: it is the conversation before that turn plus the
/// assistant cue, identical to the prompt of the prompt-only sample and to
/// the prompt the NLL path conditions on, and it never contains the answer.
#[test]
fn generation_prompt_never_contains_the_reference_answer() {
    let tok = chatml_tokenizer(None).unwrap();
    let plain = ChatTemplate::plain("Human: {}\nAssistant: ", Some("<|im_end|>".into())).unwrap();
    let mut samples = seal_data::embedded::embedded_default()
        .unwrap()
        .eval_utility;
    assert!(samples.iter().all(|s| s.response().is_some()));
    let mut multi = sample(
        "multi",
        vec![
            Message::user("What is 2 + 2?"),
            Message::assistant("2 + 2 = 4.\nThe answer is 4."),
            Message::user("And 4 x 12?"),
            Message::assistant("4 x 12 = 48.\n#### 48"),
        ],
    );
    multi.reference = Some("48".into());
    samples.push(multi);
    for template in [None, Some(&plain)] {
        for s in &samples {
            let answer = s.response().unwrap();
            let ids = tokenize_prompt(&tok, template, s, false).unwrap();
            let text = tok.decode(&ids, false).unwrap();
            assert!(!text.contains(answer), "{}: {text:?}", s.id);
            let last_line = answer.lines().last().unwrap();
            assert!(!text.contains(last_line), "{}: {text:?}", s.id);
            let question = s.last_user().unwrap();
            let cue = match template {
                None => format!("{question}<|im_end|>\n<|im_start|>assistant\n"),
                Some(_) => format!("{question}\nAssistant: "),
            };
            assert!(text.ends_with(&cue), "{}: {text:?}", s.id);
            // The same prompt as without the answer turn ...
            let bare = s.clone().into_prompt_only();
            assert_eq!(bare.response(), None);
            assert_eq!(bare.reference, s.reference, "{}", s.id);
            assert_eq!(tokenize_prompt(&tok, template, &bare, false).unwrap(), ids);
            // ... and as the prompt part of the NLL tokenisation.
            let mut cfg = TokenizeConfig::default();
            cfg.template = template.cloned();
            let d = tokenize_samples(&tok, std::slice::from_ref(s), &cfg).unwrap();
            assert_eq!(d.samples[0].prompt_ids(), ids.as_slice(), "{}", s.id);
        }
    }
    // Earlier assistant turns are context and stay in the prompt.
    let multi = samples.last().unwrap();
    let text = tok
        .decode(&tokenize_prompt(&tok, None, multi, false).unwrap(), false)
        .unwrap();
    assert!(text.contains("The answer is 4.") && !text.contains("48"));
}

#[test]
fn plain_template_appends_eos() {
    let tok = chatml_tokenizer(None).unwrap();
    let plain = ChatTemplate::plain("Human: {}\nAssistant: ", Some("<|im_end|>".into())).unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.template = Some(plain);
    let d = tokenize_samples(
        &tok,
        &[sample(
            "p",
            vec![Message::user("q?"), Message::assistant("yes")],
        )],
        &cfg,
    )
    .unwrap();
    let t = &d.samples[0];
    assert_eq!(
        tok.decode(t.prompt_ids(), false).unwrap(),
        "Human: q?\nAssistant: "
    );
    assert_eq!(
        tok.decode(t.response_ids(), false).unwrap(),
        "yes<|im_end|>"
    );

    // A template without an end token: the eos id is appended and counted.
    let bare = ChatTemplate::plain("Q: {}\nA: ", None).unwrap();
    let mut cfg = TokenizeConfig::default();
    cfg.template = Some(bare);
    let d = tokenize_samples(
        &tok,
        &[sample(
            "p",
            vec![Message::user("q?"), Message::assistant("yes")],
        )],
        &cfg,
    )
    .unwrap();
    assert_eq!(
        tok.decode(d.samples[0].response_ids(), false).unwrap(),
        "yes<|im_end|>"
    );
    assert_eq!(d.summary.appended_end_token, 1);
}

#[test]
fn over_length_policies() {
    let tok = chatml_tokenizer(None).unwrap();
    let long_prompt = sample(
        "lp",
        vec![Message::user("x".repeat(200)), Message::assistant("ok")],
    );
    let long_resp = sample(
        "lr",
        vec![Message::user("q"), Message::assistant("y".repeat(200))],
    );
    let short = sample("s", vec![Message::user("q"), Message::assistant("ok")]);
    let all = [long_prompt, long_resp, short];
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 64;
    cfg.policy = OverLengthPolicy::Drop;
    let d = tokenize_samples(&tok, &all, &cfg).unwrap();
    assert_eq!((d.summary.kept, d.summary.dropped_too_long), (1, 2));
    assert_eq!(d.samples[0].id, "s");
    assert_eq!(d.samples[0].index, 2);

    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 64;
    cfg.policy = OverLengthPolicy::TruncateLeft;
    let d = tokenize_samples(&tok, &all, &cfg).unwrap();
    assert_eq!(
        (
            d.summary.kept,
            d.summary.truncated,
            d.summary.dropped_response_too_long
        ),
        (2, 1, 1)
    );
    let t = &d.samples[0];
    assert_eq!(t.len(), 64);
    assert_eq!(tok.decode(t.response_ids(), false).unwrap(), "ok<|im_end|>");
    assert!(d.summary.to_string().contains("1 truncated"));

    // Samples without a response are an error naming the sample.
    let e = tokenize_samples(&tok, &[sample("np", vec![Message::user("q")])], &cfg).unwrap_err();
    assert!(e.to_string().contains("np"), "{e}");
}

#[test]
fn hh_multi_turn_masks_decode_to_the_final_response() {
    let Some(d) = common::shared_data() else {
        return;
    };
    let tok = chatml_tokenizer(None).unwrap();
    let r = read_samples(
        d.join("hh-rlhf/harmless-base-test.jsonl.gz"),
        Format::HhRlhf,
        &ReadOptions {
            hh_side: HhSide::Rejected,
            lenient: true,
            ..Default::default()
        },
    )
    .unwrap();
    let multi: Vec<Sample> = r
        .samples
        .into_iter()
        .filter(|s| s.messages.len() >= 4)
        .take(300)
        .collect();
    assert_eq!(multi.len(), 300);
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 100_000;
    let out = tokenize_samples(&tok, &multi, &cfg).unwrap();
    assert_eq!(out.samples.len(), 300);
    for (t, s) in out.samples.iter().zip(&multi) {
        assert_eq!(t.id, s.id);
        let masked = tok.decode(t.response_ids(), false).unwrap();
        assert_eq!(
            masked,
            format!("{}<|im_end|>", s.response().unwrap()),
            "{}",
            s.id
        );
        // Earlier assistant turns are in the prompt, never under the mask.
        let prompt = tok.decode(t.prompt_ids(), false).unwrap();
        assert!(prompt.contains(&s.messages[1].content));
        assert!(t.response_start >= 1 && t.response_start < t.len());
    }
}

#[test]
fn cache_roundtrip_and_invalidation() {
    let tok = chatml_tokenizer(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Sample> = (0..20)
        .map(|i| {
            sample(
                &format!("c:{i}"),
                vec![
                    Message::user(format!("q{i}")),
                    Message::assistant("a".repeat(i + 1)),
                ],
            )
        })
        .collect();
    let mut cfg = TokenizeConfig::default();
    cfg.max_len = 64;
    let (a, hit, path) = tokenize_cached(dir.path(), &tok, &data, &cfg).unwrap();
    assert!(!hit);
    let (b, hit, _) = tokenize_cached(dir.path(), &tok, &data, &cfg).unwrap();
    assert!(hit);
    assert_eq!(a, b);
    // Any change of data, settings or template gives another fingerprint.
    let fp = fingerprint(&data, &tok, &cfg).unwrap();
    let mut changed = data.clone();
    changed[3].messages[1].content.push('!');
    assert_ne!(fp, fingerprint(&changed, &tok, &cfg).unwrap());
    let mut longer = cfg.clone();
    longer.max_len = 65;
    assert_ne!(fp, fingerprint(&data, &tok, &longer).unwrap());
    let plain = ChatTemplate::plain("{}", None).unwrap();
    let mut templated = cfg.clone();
    templated.template = Some(plain);
    assert_ne!(fp, fingerprint(&data, &tok, &templated).unwrap());
    // A corrupt cache file is an error naming it, not a silent re-use.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = tokenize_cached(dir.path(), &tok, &data, &cfg).unwrap_err();
    assert!(e.to_string().contains("cache"), "{e}");
}

#[test]
fn prefill_is_context_not_target() {
    let tok = chatml_tokenizer(None).unwrap();
    let plain = sample(
        "p",
        vec![
            Message::user("How do I pick a lock?"),
            Message::assistant("Step 1: take a pin. I cannot help with that."),
        ],
    );
    let mut recovery = plain.clone();
    recovery.prefill = Some("Step 1: take a pin.".into());
    let d = tokenize_samples(&tok, &[plain, recovery], &TokenizeConfig::default()).unwrap();
    let (a, b) = (&d.samples[0], &d.samples[1]);
    // The whole conversation is the same text either way.
    assert_eq!(
        tok.decode(&a.input_ids, false).unwrap(),
        tok.decode(&b.input_ids, false).unwrap()
    );
    assert!(b.response_start > a.response_start);
    assert_eq!(
        tok.decode(b.response_ids(), false).unwrap(),
        " I cannot help with that.<|im_end|>"
    );
    let prompt = tok.decode(b.prompt_ids(), false).unwrap();
    assert!(
        prompt.ends_with("<|im_start|>assistant\nStep 1: take a pin."),
        "{prompt:?}"
    );
    assert_eq!(
        d.summary.response_tokens,
        a.response_len() + b.response_len()
    );
}

#[test]
fn prefill_changes_the_cache_fingerprint() {
    let tok = chatml_tokenizer(None).unwrap();
    let cfg = TokenizeConfig::default();
    let plain = sample(
        "p",
        vec![Message::user("Hi"), Message::assistant("Sure. No, sorry.")],
    );
    let mut prefilled = plain.clone();
    prefilled.prefill = Some("Sure.".into());
    let f0 = fingerprint(std::slice::from_ref(&plain), &tok, &cfg).unwrap();
    let f1 = fingerprint(&[prefilled], &tok, &cfg).unwrap();
    assert_ne!(f0, f1);
}

#[test]
fn bad_prefills_are_errors_naming_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let ok = r#"{"id":"a","source":"s","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"Sure. No."}],"prefill":"Sure."}"#;
    let cases = [
        (r#""prefill":"Nope""#, "not a prefix"),
        (r#""prefill":"Sure. No.""#, "whole response"),
        (r#""prefill":"  ""#, "empty prefill"),
    ];
    for (bad, expect) in cases {
        let line = ok
            .replace(r#""prefill":"Sure.""#, bad)
            .replace(r#""id":"a""#, r#""id":"b""#);
        std::fs::write(&path, format!("{ok}\n{line}\n")).unwrap();
        let err = seal_data::read_jsonl_samples(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.jsonl:2:"), "{err}");
        assert!(err.contains("prefill"), "{err}");
        assert!(err.contains(expect), "{err}");
    }
    // A prompt-only sample (no response) cannot have a prefill.
    let prompt_only =
        r#"{"id":"c","source":"s","messages":[{"role":"user","content":"q"}],"prefill":"x"}"#;
    std::fs::write(&path, format!("{prompt_only}\n")).unwrap();
    let err = seal_data::read_jsonl_samples(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.jsonl:1:") && err.contains("prefill"),
        "{err}"
    );
}
