//! `seal rank`, `seal finetune` and `seal align` are killed (SIGKILL, a real
//! process) mid-run after a checkpoint, resumed, and must produce a ranker
//! (adapter, merged model) bitwise equal to an uninterrupted run's; a resume
//! with another learning rate is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tiny_model_dir(dir: &Path) {
    seal_testkit::write_tiny_model_dir(dir, |cfg| {
        cfg.hidden_size = 128;
        cfg.intermediate_size = 256;
        cfg.num_hidden_layers = 3;
        cfg.head_dim = 32;
    })
    .unwrap();
}

/// The embedded fine-tuning, safe and alignment sets as JSONL files.
fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let b = seal_data::embedded::embedded_default().unwrap();
    let ft = dir.join("finetune.jsonl");
    let safe = dir.join("safe.jsonl");
    let align = dir.join("align.jsonl");
    seal_data::write_jsonl_samples(&ft, &b.finetune).unwrap();
    seal_data::write_jsonl_samples(&safe, &b.safe).unwrap();
    seal_data::write_jsonl_samples(&align, &b.align).unwrap();
    (ft, safe, align)
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
        "seal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_run_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let (ft, safe, _) = data(tmp.path());

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
    let pt =
        seal_testkit::workspace_root().join("../shared/data/seal-official/seal_selector_phi3.pt");
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

const STEPS: usize = 36;

fn train_cmd(command: &str, model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seal"));
    c.arg(command)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c.args([
        "--batch",
        "2",
        "--max-steps",
        &STEPS.to_string(),
        "--checkpoint-every",
        "3",
        "--threads",
        "1",
        "--lora-r",
        "4",
        "--max-len",
        "256",
        "--no-progress",
    ]);
    c.args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A step in `[3, STEPS - 6]` that differs between runs, so that kills land
/// at different places of the schedule over time.
fn random_kill_step() -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    3 + nanos % (STEPS - 8)
}

/// Starts `c`, waits until a checkpoint at or after `at` exists and kills it.
/// Returns the checkpoint the run was killed after.
fn kill_after_checkpoint(mut c: Command, out: &Path, finished: &Path, at: usize) -> String {
    let mut child = c.spawn().unwrap();
    let latest = out.join("checkpoints").join("latest");
    let t0 = Instant::now();
    loop {
        if let Ok(name) = std::fs::read_to_string(&latest) {
            let step: usize = name.trim().trim_start_matches("step-").parse().unwrap();
            if step >= at {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run exited ({status}) before a checkpoint at step {at}");
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "no checkpoint");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !finished.exists(),
        "the run finished before it was killed; the test needs longer runs"
    );
    std::fs::read_to_string(&latest).unwrap().trim().to_string()
}

fn check_resumed(command: &str, data: &Path, result_file: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);

    let reference = tmp.path().join("reference");
    run_ok(train_cmd(command, &model, data, &reference, &[]));

    let out = tmp.path().join("killed");
    let at = random_kill_step();
    let killed_at = kill_after_checkpoint(
        train_cmd(command, &model, data, &out, &[]),
        &out,
        &out.join(result_file),
        at,
    );

    // Without --resume the directory is refused, and nothing is touched.
    let refused = train_cmd(command, &model, data, &out, &[])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("--resume"), "{msg}");

    // A changed learning rate is refused.
    let changed = train_cmd(command, &model, data, &out, &["--resume", "--lr", "0.123"])
        .output()
        .unwrap();
    assert!(!changed.status.success());
    let msg = String::from_utf8_lossy(&changed.stderr);
    assert!(msg.contains("--lr"), "{msg}");

    run_ok(train_cmd(command, &model, data, &out, &["--resume"]));
    let a = std::fs::read(reference.join(result_file)).unwrap();
    let b = std::fs::read(out.join(result_file)).unwrap();
    assert!(
        a == b,
        "{command}: resumed result differs from the uninterrupted one (killed after {killed_at})"
    );
    assert!(!a.is_empty());
}

#[test]
fn killed_finetune_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (ft, _, _) = data(tmp.path());
    check_resumed("finetune", &ft, "adapter_model.safetensors");
}

#[test]
fn killed_align_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, align) = data(tmp.path());
    check_resumed("align", &align, "model.safetensors");
}

#[test]
fn resumed_finetune_keeps_the_whole_training_log() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let (ft, _, _) = data(tmp.path());
    let reference = tmp.path().join("reference");
    run_ok(train_cmd("finetune", &model, &ft, &reference, &[]));
    let out = tmp.path().join("killed");
    kill_after_checkpoint(
        train_cmd("finetune", &model, &ft, &out, &[]),
        &out,
        &out.join("adapter_model.safetensors"),
        9,
    );
    run_ok(train_cmd("finetune", &model, &ft, &out, &["--resume"]));
    let a = std::fs::read_to_string(reference.join("train_log.jsonl")).unwrap();
    let b = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(a.lines().count(), STEPS);
    assert_eq!(a, b);
}
