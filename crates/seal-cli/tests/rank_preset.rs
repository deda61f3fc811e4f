//! `seal rank --preset`: each preset's settings, read back from the run's
//! `rank_config.json`; explicit flags override the preset; a bad preset is a
//! clear error.

use std::path::Path;
use std::process::Command;

fn rank(model: &Path, dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let b = seal_data::embedded::embedded_default().unwrap();
    let ft = dir.join("finetune.jsonl");
    let safe = dir.join("safe.jsonl");
    seal_data::write_jsonl_samples(&ft, &b.finetune).unwrap();
    seal_data::write_jsonl_samples(&safe, &b.safe).unwrap();
    Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["rank", "--model"])
        .arg(model)
        .arg("--finetune")
        .arg(&ft)
        .arg("--safe")
        .arg(&safe)
        .arg("--out")
        .arg(dir.join(out))
        .args([
            "--batch",
            "4",
            "--max-len",
            "256",
            "--max-steps",
            "2",
            "--lora-r",
            "4",
        ])
        .args(["--threads", "1", "--no-progress"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn written(dir: &Path, out: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(out).join("rank_config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn presets_are_written_as_run_and_flags_override_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    seal_testkit::write_tiny_model_dir(&model, |_| {}).unwrap();
    for (preset, extra) in [
        ("official", vec!["--preset", "official"]),
        ("small", vec![]),
        (
            "override",
            vec![
                "--preset",
                "official",
                "--ranker-lr",
                "0.5",
                "--epoch-length",
                "task",
            ],
        ),
    ] {
        let out = rank(&model, tmp.path(), preset, &extra);
        assert!(
            out.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let w = written(tmp.path(), preset);
        let (s, t) = (&w["settings"], &w["train"]);
        // The settings and the trainer's configuration agree.
        assert_eq!(s["epochs"], t["epochs"]);
        assert_eq!(s["ranker_lr"], t["ranker"]["lr"]);
        assert_eq!(s["model_lr"], t["model_optimizer"]["lr"]);
        assert_eq!(s["epoch_length"], t["epoch_length"]);
        match preset {
            "official" => {
                assert_eq!(w["preset"], "official");
                assert_eq!(s["epochs"], 3);
                assert_eq!(s["model_lr"], 1e-5);
                assert_eq!(s["lora_alpha"], 16.0);
                assert_eq!(t["ranker"]["optimizer"], "adam");
                assert_eq!(t["ranker"]["lr"], 5e-3);
                assert_eq!(t["ranker"]["beta1"], 0.9);
                assert_eq!(t["ranker"]["beta2"], 0.95);
                assert_eq!(t["ranker"]["max_grad_norm"], 10.0);
                assert_eq!(t["lambda"]["start"], 1.0);
                assert_eq!(t["lambda"]["decay_per_epoch"], 0.03);
                assert_eq!(t["epoch_length"], "shorter");
                assert!(t["bucket_batches"].is_null());
            }
            "small" => {
                assert_eq!(w["preset"], "small");
                assert_eq!(s["epochs"], 1);
                assert_eq!(s["model_lr"], 1e-4);
                assert_eq!(s["lora_alpha"], 32.0);
                assert_eq!(t["ranker"]["optimizer"], "sgd");
                assert_eq!(t["ranker"]["lr"], 1.0);
                assert_eq!(t["ranker"]["max_grad_norm"], 1.0);
                assert_eq!(t["epoch_length"], "task");
                assert!(t["bucket_batches"].is_null());
            }
            _ => {
                assert_eq!(t["ranker"]["lr"], 0.5);
                assert_eq!(t["epoch_length"], "task");
                assert_eq!(t["ranker"]["optimizer"], "adam");
                assert_eq!(s["epochs"], 3);
            }
        }
    }
    let out = rank(&model, tmp.path(), "bad", &["--preset", "huge"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("`huge`") && e.contains("official"), "{e}");
    assert!(!tmp.path().join("bad").join("ranker.json").exists());
}
