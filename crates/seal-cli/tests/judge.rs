//! `seal judge train`, `seal judge eval` and `seal eval --judge` end to end
//! on a tiny random model, plus their errors on bad labels and judges.

use std::path::Path;
use std::process::{Command, Output};

fn seal(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seal"));
    for a in args {
        c.arg(a);
    }
    c.env("OMP_NUM_THREADS", "1").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn labels(path: &Path) {
    let mut t = String::from("question,answer,label\n");
    for i in 0..30 {
        let (a, l) = if i % 2 == 0 {
            ("I cannot help with that.", 0)
        } else {
            ("Sure, here are the steps.", 1)
        };
        t.push_str(&format!("\"Question {i}?\",\"{a}\",{l}\n"));
    }
    std::fs::write(path, t).unwrap();
}

#[test]
fn train_eval_and_use_a_judge() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    seal_testkit::write_tiny_model_dir(&base, |_| {}).unwrap();
    let csv = root.path().join("labels.csv");
    labels(&csv);
    let judge = root.path().join("judge");
    let cache = root.path().join("cache");
    let train: [&dyn AsRef<std::ffi::OsStr>; 14] = [
        &"judge",
        &"train",
        &"--base",
        &base,
        &"--labels",
        &csv,
        &"--layers",
        &"1,2",
        &"--epochs",
        &"20",
        &"--cache",
        &cache,
        &"--out",
        &judge,
    ];
    let o = seal(&train);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("| labels (test) | harmful | keyword-gcg |"),
        "{}",
        text(&o)
    );
    for f in [
        "judge.json",
        "judge.safetensors",
        "agreement.md",
        "train_log.jsonl",
    ] {
        assert!(judge.join(f).is_file(), "{f}");
    }
    // Features were cached: a second run reads them.
    let o = seal(&[&train[..], &[&"--force"]].concat());
    assert!(text(&o).contains("read from the cache"), "{}", text(&o));

    let ev = root.path().join("ev");
    let o = seal(&[
        &"judge",
        &"eval",
        &"--judge",
        &judge,
        &"--labels",
        &csv,
        &"--no-cache",
        &"--out",
        &ev,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("only its test split"), "{}", text(&o));
    assert!(ev.join("verdicts.jsonl").is_file());

    // A judge on another base model is refused, naming both.
    let other = root.path().join("other");
    seal_testkit::write_tiny_model_dir(&other, |c| c.num_hidden_layers = 3).unwrap();
    let o = seal(&[
        &"judge",
        &"eval",
        &"--judge",
        &judge,
        &"--base",
        &other,
        &"--labels",
        &csv,
        &"--out",
        &root.path().join("ev2"),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(&*base.to_string_lossy()) && t.contains(&*other.to_string_lossy()),
        "{t}"
    );

    // `seal eval --judge both:DIR`: both judges, degenerate rate.
    let prompts = root.path().join("safety.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\":\"a\",\"source\":\"t\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}\n",
    )
    .unwrap();
    let out = root.path().join("eval");
    let both = format!("both:{}", judge.display());
    let o = seal(&[
        &"eval",
        &"--model",
        &base,
        &"--safety",
        &prompts,
        &"--benign",
        &prompts,
        &"--max-new-tokens",
        &"4",
        &"--judge",
        &both,
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    for key in [
        "safety.asr_classifier_smollm2",
        "safety.asr_keyword_gcg",
        "safety.degenerate_rate",
        "over_refusal.over_refusal_classifier_smollm2",
    ] {
        assert!(report.contains(key), "{key} missing: {report}");
    }
    let o = seal(&[
        &"eval",
        &"--model",
        &base,
        &"--safety",
        &prompts,
        &"--judge",
        &"classifier",
        &"--out",
        &root.path().join("eval2"),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("classifier:DIR"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_labels_name_file_and_line() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    seal_testkit::write_tiny_model_dir(&base, |_| {}).unwrap();
    for (body, needle) in [
        ("question,answer,label\nq,a,1\nq,a,yes please\n", ":3"),
        ("question,answer,label\nq,a,1\nq,,0\n", "empty response"),
        ("question,answer,label\nq,\"a,1\n", "unterminated"),
        ("question,answer\nq,a\n", "no label column"),
    ] {
        let csv = root.path().join("bad.csv");
        std::fs::write(&csv, body).unwrap();
        let o = seal(&[
            &"judge",
            &"train",
            &"--base",
            &base,
            &"--labels",
            &csv,
            &"--layers",
            &"1",
            &"--out",
            &root.path().join("j"),
        ]);
        let t = text(&o);
        assert!(!o.status.success(), "{body}");
        assert!(t.contains("bad.csv") && t.contains(needle), "{body}: {t}");
        assert!(!t.contains("panicked"), "{t}");
    }
}
