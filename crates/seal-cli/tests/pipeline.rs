//! `seal align` and `seal pipeline` from the shell: config printing and
//! errors, and the alignment stage on a tiny random model.

use std::path::Path;
use std::process::{Command, Output};

fn seal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tiny_model_dir(dir: &Path) {
    seal_testkit::write_tiny_model_dir(dir, |_| {}).unwrap();
}

#[test]
fn pipeline_prints_and_checks_its_config() {
    let o = seal(&["pipeline", "--print-config", "--seeds", "3,4"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("seeds = [3, 4]"), "{t}");
    assert!(t.contains("\"seal\""), "{t}");

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[select]\np = 0.0\n").unwrap();
    let o = seal(&["pipeline", "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("select.p"), "{}", text(&o));
    let o = seal(&["pipeline", "--config", "/no/such/file.toml"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/no/such/file.toml"), "{}", text(&o));

    // --set overrides a file's keys, or the embedded demo's, before checks.
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "[rank]\nepochs = 2\n").unwrap();
    let o = seal(&[
        "pipeline",
        "--config",
        good.to_str().unwrap(),
        "--set",
        "rank.lambda=0.5",
        "--set",
        "model.tf32=true",
        "--print-config",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("lambda = 0.5") && t.contains("epochs = 2"),
        "{t}"
    );
    assert!(t.contains("tf32 = true"), "{t}");
    let o = seal(&["pipeline", "--set", "rank.ranker_lr=7.5", "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ranker_lr = 7.5"), "{}", text(&o));
    let o = seal(&["pipeline", "--set", "select.p=2", "--print-config"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("select.p"), "{}", text(&o));
    // The global --tf32 flag is accepted by every subcommand.
    let o = seal(&["--tf32", "pipeline", "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A tiny model directory and the embedded align set as JSONL under `dir`.
fn tiny_model_and_align_set(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    seal_data::benchmark::Benchmark,
) {
    let model = dir.join("model");
    tiny_model_dir(&model);
    let data = dir.join("align.jsonl");
    let b = seal_data::embedded::embedded_default().unwrap();
    seal_data::write_jsonl_samples(&data, &b.align).unwrap();
    (model, data, b)
}

#[test]
fn align_writes_a_loadable_model_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, b) = tiny_model_and_align_set(tmp.path());
    let out = tmp.path().join("aligned");
    let args = [
        "align",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch",
        "4",
        "--max-len",
        "1024",
        "--no-progress",
    ];
    let o = seal(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 steps"), "{}", text(&o));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The merged model differs from the original (the adapter was trained)
    // and loads like any model directory.
    let a = seal_model::Pretrained::load(&out, &Default::default()).unwrap();
    let m = seal_model::Pretrained::load(&model, &Default::default()).unwrap();
    let diff: f64 = a
        .model
        .base_parameters()
        .iter()
        .zip(m.model.base_parameters())
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(diff > 0.0, "alignment changed nothing");
    let o = seal(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not empty") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );

    // Self-distilled benign responses: the data trained on is written next
    // to the model, sample for sample (the tiny random model never ends an
    // answer within 3 tokens, so every response keeps its reference).
    let out2 = tmp.path().join("aligned-self");
    let mut args2 = args.to_vec();
    args2[6] = out2.to_str().unwrap();
    args2.extend(["--self-distill-tokens", "3"]);
    let o = seal(&args2);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("self-distilled"), "{}", text(&o));
    let used = seal_data::read_jsonl_samples(out2.join("align_data.jsonl")).unwrap();
    assert_eq!(used, b.align);
    assert!(out2.join("model.safetensors").is_file());
}

#[test]
fn generate_dataset_mode_writes_every_sample_and_names_a_bad_label() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, b) = tiny_model_and_align_set(tmp.path());
    let out = tmp.path().join("self.jsonl");
    let base = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "2",
        "--batch",
        "64",
    ];
    let mut args = base.to_vec();
    args.extend(["--label", "benign"]);
    let o = seal(&args);
    assert!(o.status.success(), "{}", text(&o));
    let benign = b
        .align
        .iter()
        .filter(|s| s.label == Some(seal_data::Label::Benign))
        .count();
    let untouched = b.align.len() - benign;
    assert!(
        text(&o).contains(&format!("{untouched} untouched")),
        "{}",
        text(&o)
    );
    let written = seal_data::read_jsonl_samples(&out).unwrap();
    let ids = |v: &[seal_data::Sample]| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&written), ids(&b.align));

    let mut args = base.to_vec();
    args.extend(["--label", "benignish"]);
    let o = seal(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("--label"), "{}", text(&o));
    let o = seal(&["generate", "--model", model.to_str().unwrap()]);
    assert!(!o.status.success(), "neither --prompt nor --dataset");
}
