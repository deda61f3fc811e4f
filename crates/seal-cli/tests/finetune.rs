//! `seal finetune` on a tiny random model directory: a PEFT adapter that
//! loads back, the training log, the mixed objective and its errors.

use seal_model::{LoadOptions, LoraLm, Pretrained};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind};

fn tiny_model_dir(dir: &Path) {
    seal_testkit::write_tiny_model_dir(dir, |_| {}).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    data: PathBuf,
    safe: PathBuf,
    ids: Vec<String>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("model");
    tiny_model_dir(&model);
    let b = seal_data::embedded::embedded_default().unwrap();
    let data = root.join("finetune.jsonl");
    let safe = root.join("safe.jsonl");
    seal_data::write_jsonl_samples(&data, &b.finetune).unwrap();
    seal_data::write_jsonl_samples(&safe, &b.safe).unwrap();
    let ids = b.finetune.iter().map(|s| s.id.clone()).collect();
    Setup {
        _tmp: tmp,
        root,
        model,
        data,
        safe,
        ids,
    }
}

fn finetune(s: &Setup, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["finetune", "--model"])
        .arg(&s.model)
        .arg("--data")
        .arg(&s.data)
        .arg("--out")
        .arg(out)
        .args([
            "--batch",
            "2",
            "--max-len",
            "256",
            "--max-steps",
            "2",
            "--lr",
            "1e-2",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--threads",
            "1",
            "--no-progress",
        ])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "seal finetune failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "seal finetune should have failed");
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn finetune_on_kept_ids_writes_a_peft_adapter() {
    let s = setup();
    let kept = s.root.join("kept.txt");
    std::fs::write(&kept, format!("{}\n{}\n{}\n", s.ids[0], s.ids[5], s.ids[9])).unwrap();
    let out = s.root.join("adapter");
    ok(&finetune(&s, &out, &["--kept", kept.to_str().unwrap()]));
    assert!(out.join("adapter_config.json").is_file());
    assert!(out.join("adapter_model.safetensors").is_file());
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["step"], 2);
    assert!(lines[0]["loss"].as_f64().unwrap() > 0.0);
    let mut options = LoadOptions::default();
    options.device = Device::Cpu;
    options.kind = Kind::Float;
    let mut m = Pretrained::load(&s.model, &options).unwrap().model;
    m.load_lora(&out).unwrap();
    assert_eq!(m.lora_config().unwrap().r, 4);
    // LoRA's B starts at zero; two steps must have moved it.
    let moved = m
        .lora_parameters()
        .iter()
        .any(|(_, t)| t.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    assert!(moved);

    // The same run averaged over tokens: the first step's loss (same data,
    // same initial model) is the token-weighted mean of the per-sample NLLs,
    // not their plain mean, since the three responses differ in length.
    let tok = s.root.join("adapter-tok");
    ok(&finetune(
        &s,
        &tok,
        &["--kept", kept.to_str().unwrap(), "--token-weighted"],
    ));
    let first_loss = |dir: &Path| -> f64 {
        let log = std::fs::read_to_string(dir.join("train_log.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        first["loss"].as_f64().unwrap()
    };
    let (plain, weighted) = (first_loss(&out), first_loss(&tok));
    assert!(
        weighted > 0.0 && (plain - weighted).abs() > 1e-6,
        "{plain} vs {weighted}"
    );

    // Mixed precision: the same first step on bf16 base weights (f32 LoRA
    // and loss) gives the f32 loss up to bf16 rounding of the weights.
    let low = s.root.join("adapter-bf16");
    ok(&finetune(
        &s,
        &low,
        &["--kept", kept.to_str().unwrap(), "--dtype", "bf16"],
    ));
    let half = first_loss(&low);
    assert!(
        half.is_finite() && half != plain && (half - plain).abs() < 0.02 * plain,
        "bf16 {half} vs f32 {plain}"
    );
    let e = err(&finetune(
        &s,
        &s.root.join("bad"),
        &["--kept", kept.to_str().unwrap(), "--dtype", "f16"],
    ));
    assert!(e.contains("--dtype") && e.contains("f16"), "{e}");

    // Unknown kept id: an error naming it.
    std::fs::write(&kept, format!("{}\nno-such-sample-17\n", s.ids[0])).unwrap();
    let e = err(&finetune(
        &s,
        &s.root.join("bad"),
        &["--kept", kept.to_str().unwrap()],
    ));
    assert!(e.contains("no-such-sample-17"), "{e}");
    // Empty selection.
    std::fs::write(&kept, "\n").unwrap();
    let e = err(&finetune(
        &s,
        &s.root.join("bad"),
        &["--kept", kept.to_str().unwrap()],
    ));
    assert!(e.contains("empty selection"), "{e}");
}

#[test]
fn mixed_objective_with_soft_weights_and_its_errors() {
    let s = setup();
    let weights = s.root.join("scores.jsonl");
    let text: String = s
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{{\"id\":\"{id}\",\"score\":0.0,\"weight\":{}}}\n", i % 3))
        .collect();
    std::fs::write(&weights, text).unwrap();
    let out = s.root.join("mixed");
    ok(&finetune(
        &s,
        &out,
        &[
            "--weights",
            weights.to_str().unwrap(),
            "--safe",
            s.safe.to_str().unwrap(),
            "--lambda",
            "0.5",
        ],
    ));
    assert!(out.join("adapter_model.safetensors").is_file());
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["lambda"], 0.5);
    assert!(first["safe_loss"].as_f64().unwrap() > 0.0);

    let e = err(&finetune(&s, &s.root.join("bad"), &["--lambda", "0.5"]));
    assert!(e.contains("--safe"), "{e}");
    let e = err(&finetune(
        &s,
        &s.root.join("bad"),
        &["--lambda", "1.5", "--safe", s.safe.to_str().unwrap()],
    ));
    assert!(e.contains("[0, 1]"), "{e}");
}
