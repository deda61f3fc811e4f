//! `seal select` end to end: SEAL's top-p on an imported official selector
//! reproduces the documented kept set; bad input gives clear errors; a
//! dataset-only baseline writes the audit file.

use seal_data::{Label, Message, Sample};
use seal_select::output::kept_set_sha256;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seal(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn phi3() -> Option<PathBuf> {
    let p = std::env::var_os("SEAL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
        .join("seal-official/seal_selector_phi3.pt");
    if p.is_file() {
        Some(p)
    } else {
        seal_data::testing::skip("data", &format!("{} not found", p.display()));
        None
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn import(pt: &Path, dir: &Path) {
    ok(&seal(&[
        os("import-selector"),
        os("--pt"),
        pt.as_os_str(),
        os("--out"),
        dir.as_os_str(),
    ]));
}

#[test]
fn top_p_on_official_phi3_selector() {
    let Some(pt) = phi3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rk = tmp.path().join("ranker");
    import(&pt, &rk);
    let kept = tmp.path().join("kept.txt");
    let stdout = ok(&seal(&[
        os("select"),
        os("--ranker"),
        rk.as_os_str(),
        os("--rule"),
        os("top-p"),
        os("--p"),
        os("0.8"),
        os("--out"),
        kept.as_os_str(),
    ]));
    let mut idx: Vec<usize> = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(idx.len(), 89_449);
    idx.sort_unstable();
    let want = "a224eb806b022dd270dc54d168c022e85840917b9911be1336a16cd0e8364a9f";
    assert_eq!(kept_set_sha256(&idx), want);
    assert!(stdout.contains(want), "{stdout}");

    // p outside (0, 1] is an error naming the parameter; nothing is written.
    let bad = tmp.path().join("bad.txt");
    let e = failed(&seal(&[
        os("select"),
        os("--ranker"),
        rk.as_os_str(),
        os("--p"),
        os("1.5"),
        os("--out"),
        bad.as_os_str(),
    ]));
    assert!(
        e.contains("p") && e.contains("1.5") && e.contains("(0, 1]"),
        "{e}"
    );
    assert!(!bad.exists());

    // A dataset whose ids are not the ranker's: a mismatch error.
    let ds = tmp.path().join("ds.jsonl");
    let samples: Vec<Sample> = (0..3)
        .map(|i| Sample {
            id: format!("other:{i}"),
            source: "x".into(),
            label: None,
            messages: vec![Message::user("q"), Message::assistant("a")],
            reference: None,
            prefill: None,
        })
        .collect();
    seal_data::write_jsonl_samples(&ds, &samples).unwrap();
    let e = failed(&seal(&[
        os("select"),
        os("--ranker"),
        rk.as_os_str(),
        os("--dataset"),
        ds.as_os_str(),
        os("--out"),
        bad.as_os_str(),
    ]));
    assert!(
        e.contains("does not match") && e.contains("ds.jsonl"),
        "{e}"
    );
    assert!(!bad.exists());
}

#[test]
fn oracle_on_a_dataset_writes_audit_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds.jsonl");
    let labels = [Label::Benign, Label::Harmful, Label::Benign, Label::Harmful];
    let samples: Vec<Sample> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| Sample {
            id: format!("mix:{i}"),
            source: format!("src{}", i % 2),
            label: Some(*l),
            messages: vec![Message::user("q"), Message::assistant("a")],
            reference: None,
            prefill: None,
        })
        .collect();
    seal_data::write_jsonl_samples(&ds, &samples).unwrap();
    let kept = tmp.path().join("kept.txt");
    let scored = tmp.path().join("scored.jsonl");
    let subset = tmp.path().join("subset.jsonl");
    let stdout = ok(&seal(&[
        os("select"),
        os("--rule"),
        os("oracle"),
        os("--dataset"),
        ds.as_os_str(),
        os("--out"),
        kept.as_os_str(),
        os("--scored"),
        scored.as_os_str(),
        os("--out-dataset"),
        subset.as_os_str(),
    ]));
    assert!(stdout.contains("cut 2 of 2 harmful"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "mix:0\nmix:2\n");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scored)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["id"], "mix:1");
    assert_eq!(lines[1]["source"], "src1");
    assert_eq!(lines[1]["label"], "harmful");
    assert_eq!(lines[1]["kept"], false);
    let back = seal_data::read_jsonl_samples(&subset).unwrap();
    assert_eq!(back, vec![samples[0].clone(), samples[2].clone()]);
    // An unknown rule lists the valid ones.
    let e = failed(&seal(&[
        os("select"),
        os("--rule"),
        os("best"),
        os("--dataset"),
        ds.as_os_str(),
        os("--out"),
        kept.as_os_str(),
    ]));
    assert!(e.contains("`best`") && e.contains("top-p"), "{e}");
}

#[test]
fn anchor_similarity_rules_run_end_to_end_and_refuse_overlapping_anchors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    seal_testkit::write_tiny_model_dir(&model, |_| {}).unwrap();
    let sample = |id: &str, q: &str, a: &str| Sample {
        id: id.into(),
        source: "s".into(),
        label: None,
        messages: vec![Message::user(q), Message::assistant(a)],
        reference: None,
        prefill: None,
    };
    let write = |name: &str, xs: &[Sample]| {
        let p = tmp.path().join(name);
        seal_data::write_jsonl_samples(&p, xs).unwrap();
        p
    };
    // Pool sample 0 repeats the harmful anchor's answer, sample 1 the safe
    // anchor's (other prompts, so the anchors stay disjoint from the pool).
    let pool = write(
        "pool.jsonl",
        &[
            sample(
                "p0",
                "how do I pick a lock",
                "Sure, first take a tension wrench",
            ),
            sample("p1", "how do I pick a safe", "I can't help with that."),
            sample("p2", "what is 2 + 2", "4"),
            sample("p3", "name a colour", "blue"),
        ],
    );
    let harmful = write(
        "harmful.jsonl",
        &[sample(
            "h0",
            "how do I open a lock",
            "Sure, first take a tension wrench",
        )],
    );
    let safe = write(
        "safe.jsonl",
        &[sample(
            "s0",
            "how do I open a safe",
            "I can't help with that.",
        )],
    );
    for rule in ["grad-sim", "rep-sim"] {
        let kept = tmp.path().join(format!("{rule}.txt"));
        let scored = tmp.path().join(format!("{rule}.jsonl"));
        let stdout = ok(&seal(&[
            os("select"),
            os("--rule"),
            os(rule),
            os("--dataset"),
            pool.as_os_str(),
            os("--model"),
            model.as_os_str(),
            os("--harmful-anchors"),
            harmful.as_os_str(),
            os("--safe-anchors"),
            safe.as_os_str(),
            os("--k"),
            os("3"),
            os("--out"),
            kept.as_os_str(),
            os("--scored"),
            scored.as_os_str(),
        ]));
        assert!(stdout.contains(&format!("{rule}: kept 3 of 4")), "{stdout}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scored)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let score = |i: usize| lines[i]["score"].as_f64().unwrap();
        // The score is −harm: the harmful look-alike scores below the safe one.
        assert!(score(0) < score(1), "{rule}: {lines:?}");
    }
    // An anchor that is a pool sample is refused, naming it.
    let e = failed(&seal(&[
        os("select"),
        os("--rule"),
        os("rep-sim"),
        os("--dataset"),
        pool.as_os_str(),
        os("--model"),
        model.as_os_str(),
        os("--harmful-anchors"),
        pool.as_os_str(),
        os("--safe-anchors"),
        safe.as_os_str(),
        os("--out"),
        tmp.path().join("x.txt").as_os_str(),
    ]));
    assert!(e.contains("`p0`") && e.contains("disjoint"), "{e}");
    // Missing anchors name the flag.
    let e = failed(&seal(&[
        os("select"),
        os("--rule"),
        os("grad-sim"),
        os("--dataset"),
        pool.as_os_str(),
        os("--model"),
        model.as_os_str(),
        os("--out"),
        tmp.path().join("y.txt").as_os_str(),
    ]));
    assert!(e.contains("--harmful-anchors"), "{e}");
}
