//! `seal rank` is killed (SIGKILL, a real process) mid-epoch after a
//! checkpoint, resumed, and must produce a ranker bitwise equal to an
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tiny_model_dir(dir: &Path) {
    seal_model::fixtures::write_tiny_model_dir(dir, |cfg| {
        cfg.hidden_size = 128;
        cfg.intermediate_size = 256;
        cfg.num_hidden_layers = 3;
        cfg.head_dim = 32;
    })
    .unwrap();
}

fn data(dir: &Path) -> (PathBuf, PathBuf) {
    let b = seal_data::embedded::embedded_default().unwrap();
    let ft = dir.join("finetune.jsonl");
    let safe = dir.join("safe.jsonl");
    seal_data::write_jsonl_samples(&ft, &b.finetune).unwrap();
    seal_data::write_jsonl_samples(&safe, &b.safe).unwrap();
    (ft, safe)
}

fn rank_cmd(model: &Path, ft: &Path, safe: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seal"));
    c.args(["rank", "--model"])
        .arg(model)
        .arg("--finetune")
        .arg(ft)
        .arg("--safe")
        .arg(safe)
        .arg("--out")
        .arg(out);
    c.args([
        "--batch",
        "2",
        "--max-len",
        "512",
        "--max-steps",
        "40",
        "--checkpoint-every",
        "4",
        "--threads",
        "1",
        "--seed",
        "7",
        "--lambda",
        "0.8",
        "--lora-r",
        "4",
        "--no-progress",
    ]);
    c.args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_ok(mut c: Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "seal rank failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_run_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let (ft, safe) = data(tmp.path());

    // Uninterrupted reference.
    let reference = tmp.path().join("reference");
    run_ok(rank_cmd(&model, &ft, &safe, &reference, &[]));

    // Interrupted run: kill it as soon as a checkpoint exists.
    let out = tmp.path().join("killed");
    let mut child = rank_cmd(&model, &ft, &safe, &out, &[]).spawn().unwrap();
    let latest = out.join("checkpoints").join("latest");
    let t0 = Instant::now();
    while !latest.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("seal rank exited ({status}) before writing a checkpoint");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !out.join("ranker.json").exists(),
        "the run finished before it was killed; the test needs longer runs"
    );
    let at = std::fs::read_to_string(&latest).unwrap();
    let step: usize = at.trim().trim_start_matches("step-").parse().unwrap();
    assert!(step > 0 && step < 40, "killed at {at}");

    run_ok(rank_cmd(&model, &ft, &safe, &out, &["--resume"]));
    let a = std::fs::read(reference.join("ranker.safetensors")).unwrap();
    let b = std::fs::read(out.join("ranker.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed ranker differs from the uninterrupted one (killed after {at})"
    );
    let scores = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
    assert_eq!(scores.lines().count(), 96);
    assert!(scores.lines().next().unwrap().contains("\"label\""));
    assert_eq!(
        scores,
        std::fs::read_to_string(reference.join("scores.jsonl")).unwrap()
    );
}

#[test]
fn import_selector_command() {
    let pt = seal_model::fixtures::workspace_root()
        .join("../shared/data/seal-official/seal_selector_phi3.pt");
    if !pt.is_file() {
        seal_data::testing::skip("data", &format!("{} not found", pt.display()));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["import-selector", "--pt"])
        .arg(&pt)
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("111812 logits"));
    let scores = std::fs::read_to_string(tmp.path().join("scores.jsonl")).unwrap();
    assert_eq!(scores.lines().count(), 111_812);
    assert!(scores.starts_with("{\"id\":\"0\",\"score\":"));
}
