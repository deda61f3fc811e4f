//! Ranker/dataset mismatches are errors; outputs are written as documented.

// Needs the model-based rules and ranker loading.
#![cfg(feature = "torch")]

use seal_bilevel::ranker::{fingerprint_ids, Activation, Ranker};
use seal_data::{Label, Message, Sample};
use seal_select::check::FingerprintCheck;
use seal_select::output::{read_kept_ids, write_kept_ids, write_scored_jsonl, Summary};
use seal_select::ranker::RankerScores;
use seal_select::rules::{SelectionRule, TopP};
use seal_select::{SelectError, SelectionInput};
use tch::Tensor;

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn ranker(names: &[&str], fp: Option<&str>) -> RankerScores {
    let id = ids(names);
    let fp = fp.map_or_else(|| fingerprint_ids(&id), str::to_string);
    let logits: Vec<f32> = (0..names.len()).map(|i| i as f32).collect();
    let r = Ranker::from_logits(id, fp, Activation::Softmax, &Tensor::from_slice(&logits)).unwrap();
    RankerScores::from_ranker(&r, "rk").unwrap()
}

#[test]
fn mismatched_ids_and_fingerprints_are_errors() {
    let r = ranker(&["a", "b", "c"], None);
    assert_eq!(
        r.check_dataset("ds", &ids(&["a", "b", "c"]), None).unwrap(),
        FingerprintCheck::Verified
    );
    let e = r.check_dataset("ds", &ids(&["a", "b"]), None).unwrap_err();
    assert!(matches!(e, SelectError::Mismatch { .. }));
    let e = e.to_string();
    assert!(
        e.contains("rk") && e.contains("ds") && e.contains("`c`"),
        "{e}"
    );
    let e = r
        .check_dataset("ds", &ids(&["a", "c", "b"]), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("position 1") && e.contains("another order"),
        "{e}"
    );
    let e = r
        .check_dataset("ds", &ids(&["a", "b", "x"]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`c`") && e.contains("`x`"), "{e}");
    // A ranker whose stored fingerprint is not that of its ids.
    let bad = ranker(&["a", "b", "c"], Some("ids-sha256:00"));
    let e = bad
        .check_dataset("ds", &ids(&["a", "b", "c"]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fingerprint"), "{e}");
    // Token fingerprints: verified when given, reported otherwise.
    let tok = ranker(&["a", "b", "c"], Some("tokens-sha256:ab"));
    assert!(matches!(
        tok.check_dataset("ds", &ids(&["a", "b", "c"]), None)
            .unwrap(),
        FingerprintCheck::NotVerified { .. }
    ));
    assert_eq!(
        tok.check_dataset("ds", &ids(&["a", "b", "c"]), Some("tokens-sha256:ab"))
            .unwrap(),
        FingerprintCheck::Verified
    );
    let e = tok
        .check_dataset("ds", &ids(&["a", "b", "c"]), Some("tokens-sha256:cd"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokens-sha256:ab") && e.contains("tokens-sha256:cd"),
        "{e}"
    );
}

#[test]
fn outputs_roundtrip_and_audit() {
    let r = ranker(&["a", "b", "c", "d"], None);
    let samples: Vec<Sample> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, id)| Sample {
            id: id.to_string(),
            source: format!("src{}", i % 2),
            label: Some(if i == 0 {
                Label::Harmful
            } else {
                Label::Benign
            }),
            messages: vec![Message::user("q"), Message::assistant("a")],
            reference: None,
            prefill: None,
        })
        .collect();
    let input = r.input().unwrap().with_samples(&samples).unwrap();
    let s = TopP { p: 0.5 }.select(&input).unwrap();
    assert_eq!(s.kept_ids(&input), vec!["c", "d"]);
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.txt");
    write_kept_ids(&kept, &s.kept_ids(&input)).unwrap();
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "c\nd\n");
    assert_eq!(read_kept_ids(&kept).unwrap(), ids(&["c", "d"]));
    std::fs::write(&kept, "c\nd\nc\n").unwrap();
    let e = read_kept_ids(&kept).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("`c`"), "{e}");

    let scored = dir.path().join("scored.jsonl");
    write_scored_jsonl(&scored, &input, &s).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scored)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["source"], "src0");
    assert_eq!(lines[0]["label"], "harmful");
    assert_eq!(lines[0]["score"], 0.0);
    assert_eq!(lines[0]["rank"], 4);
    assert_eq!(lines[0]["kept"], false);
    assert_eq!(lines[3]["rank"], 1);
    assert_eq!(lines[3]["kept"], true);

    let sum = Summary::new(&input, &s);
    assert_eq!((sum.total, sum.kept), (4, 2));
    assert_eq!(sum.cut_by_label.get("harmful"), Some(&1));
    assert_eq!(
        sum.kept_sha256,
        seal_select::output::kept_set_sha256(&[2, 3])
    );
    sum.write(&dir.path().join("summary.json")).unwrap();

    // Writing ids with line breaks is refused, naming the file.
    let e = write_kept_ids(&dir.path().join("x.txt"), &["a\nb"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.txt"), "{e}");
    // A selection from another input cannot be written against this one.
    let other = ids(&["a", "b"]);
    let small = SelectionInput::new(&other).unwrap();
    assert!(write_scored_jsonl(&scored, &small, &s).is_err());
}
