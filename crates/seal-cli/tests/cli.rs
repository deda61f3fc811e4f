//! The `seal` binary end to end: model commands on the shared SmolLM2 import,
//! data commands on the real files in `../shared/data`, and clear errors.

use seal_data::Message;
use seal_model::{CausalLm, LoadOptions, Pretrained};
use std::path::PathBuf;
use std::process::Command;

fn seal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seal"))
}

fn shared_data() -> PathBuf {
    std::env::var_os("SEAL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

#[test]
fn generate_prints_paris_and_writes_top_logits() {
    let Some(dir) = seal_testkit::smollm2_dir().unwrap() else {
        seal_data::testing::skip("model", "SmolLM2 GGUF not found (run `cargo xtask setup`)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let json_path = tmp.path().join("top.json");
    let out = seal()
        .args(["generate", "--model"])
        .arg(&dir)
        .args([
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "16",
            "--logits-json",
        ])
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "stdout: {stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let ids: Vec<u32> = json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let top = json["top"].as_array().unwrap();
    assert_eq!(top.len(), 20);
    let values: Vec<f64> = top.iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "top logits sorted: {values:?}"
    );

    // Same ids and logits as the library computes for the templated prompt,
    // whose default system prompt the template inserts.
    let pre = Pretrained::load(&dir, &LoadOptions::default()).unwrap();
    let want_ids = pre
        .tokenizer
        .encode_chat(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(ids, want_ids);
    let rendered = pre.tokenizer.decode(&ids, false).unwrap();
    assert!(
        rendered.contains("You are a helpful AI assistant named SmolLM"),
        "{rendered}"
    );
    let input =
        tch::Tensor::from_slice(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, -1]);
    let logits = tch::no_grad(|| pre.model.last_logits(&input, None, None))
        .unwrap()
        .get(0);
    let argmax = logits.argmax(0, false).int64_value(&[]);
    assert_eq!(top[0][0].as_i64().unwrap(), argmax);
    assert!((top[0][1].as_f64().unwrap() - logits.double_value(&[argmax])).abs() < 1e-4);
}

#[test]
fn model_commands_fail_clearly_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.gguf");
    let out = seal()
        .args(["import-gguf", "--gguf"])
        .arg(&missing)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.gguf"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A truncated copy of the real GGUF names the file and what is cut off.
    if let Some(gguf) = seal_testkit::smollm2_gguf() {
        let bytes = std::fs::read(&gguf).unwrap();
        let cut = tmp.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let out = seal()
            .args(["import-gguf", "--gguf"])
            .arg(&cut)
            .arg("--out")
            .arg(tmp.path().join("o2"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("cut.gguf"), "{err}");
        assert!(
            !tmp.path().join("o2").exists(),
            "no partial output directory is left"
        );
    } else {
        seal_data::testing::skip("model", "SmolLM2 GGUF not found (run `cargo xtask setup`)");
    }

    // A model directory without config.json.
    let out = seal()
        .args(["generate", "--model"])
        .arg(tmp.path())
        .args(["--prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tokenizer.json") || err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn import_gguf_defaults_to_the_installed_smollm2_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    // No --gguf: the file comes from SEAL_SMOLLM2_GGUF (here a file that is
    // not a GGUF, so the error shows which file the default resolved to).
    let fake = tmp.path().join("installed-smollm2.gguf");
    std::fs::write(&fake, b"not a gguf").unwrap();
    let out = seal()
        .args(["import-gguf", "--out"])
        .arg(tmp.path().join("o"))
        .env("SEAL_SMOLLM2_GGUF", &fake)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("installed-smollm2.gguf"), "{err}");
    assert!(!tmp.path().join("o").exists());

    // Nothing installed: the error says what was looked for and how to fix it.
    let empty_venv = tmp.path().join("venv");
    std::fs::create_dir(&empty_venv).unwrap();
    let out = seal()
        .args(["import-gguf", "--out"])
        .arg(tmp.path().join("o"))
        .env("SEAL_SMOLLM2_GGUF", tmp.path().join("absent.gguf"))
        .env("SEAL_VENV", &empty_venv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in ["no --gguf given", "SEAL_SMOLLM2_GGUF", "cargo xtask setup"] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(!tmp.path().join("o").exists());
}

#[test]
fn data_inspect_counts_real_files_and_names_bad_lines() {
    let gsm8k = shared_data().join("gsm8k/test.jsonl");
    if !gsm8k.exists() {
        seal_data::testing::skip("data", &format!("{} not found", gsm8k.display()));
        return;
    }
    let out = seal()
        .args(["data", "inspect", "--format", "gsm8k"])
        .arg(&gsm8k)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1319"), "{stdout}");

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"q\", \"answer\": \"a #### 1\"}\n{\"question\": \"q2\"}\n",
    )
    .unwrap();
    let out = seal()
        .args(["data", "inspect", "--format", "gsm8k"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.jsonl") && err.contains(":2") && err.contains("answer"),
        "{err}"
    );
}

#[test]
fn data_benchmark_builds_either_recipe_and_reports_removals() {
    let shared = shared_data();
    if !shared.join("gsm8k").is_dir() {
        seal_data::testing::skip("data", "shared data not found (set SEAL_SHARED_DATA)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v3");
    let o = seal()
        .args(["data", "benchmark", "--shared"])
        .arg(&shared)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("identity_shift.jsonl").is_file());
    assert!(
        stdout.contains("removed from the evaluation prompts of strongreject: 25"),
        "{stdout}"
    );
    let summary = seal_data::benchmark::read_summary(&out).unwrap();
    assert_eq!(summary.recipe_version, 4);

    let out2 = tmp.path().join("v2");
    let o = seal()
        .args(["data", "benchmark", "--recipe", "2", "--shared"])
        .arg(&shared)
        .arg("--out")
        .arg(&out2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        seal_data::benchmark::read_summary(&out2)
            .unwrap()
            .recipe_version,
        2
    );
    assert!(!out2.join("identity_shift.jsonl").exists());

    // An unknown recipe, and a dose sweep with a ratio outside [0, 1]: clear
    // errors, nothing written.
    let o = seal()
        .args(["data", "benchmark", "--recipe", "1", "--shared"])
        .arg(&shared)
        .arg("--out")
        .arg(tmp.path().join("v1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("recipe"), "{err}");
    assert!(!tmp.path().join("v1").exists());
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/replication.toml"
    );
    let o = seal()
        .args(["dose", "--config", config, "--ratios", "0,1.5", "--shared"])
        .arg(&shared)
        .arg("--out")
        .arg(tmp.path().join("dose"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("1.5"), "{err}");
    assert!(!tmp.path().join("dose").exists());
    let o = seal()
        .args(["dose", "--config", config, "--finetune", "0", "--shared"])
        .arg(&shared)
        .arg("--out")
        .arg(tmp.path().join("dose"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--finetune"), "{err}");
    assert!(!tmp.path().join("dose").exists());
    // The λ sweep: a λ outside [0, 1] and an unknown solver.
    for (flag, value, needle) in [
        ("--lambdas", "1,1.5", "1.5"),
        ("--solver", "no-such-solver", "--solver"),
    ] {
        let o = seal()
            .args(["lambda-sweep", "--config", config, flag, value, "--out"])
            .arg(tmp.path().join("sweep"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{err}");
        assert!(!tmp.path().join("sweep").exists());
    }
}

/// The `seal` binary's malloc is jemalloc (seal-cli's `alloc` module): the
/// process answers jemalloc's own configuration variable, and the executable
/// defines `malloc` and `posix_memalign`, so the dynamic linker binds
/// libtorch's tensor allocations to jemalloc too.
#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_allocates_with_jemalloc() {
    let out = seal()
        .arg("--version")
        .env("MALLOC_CONF", "seal_test_unknown_option:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<jemalloc>") && stderr.contains("seal_test_unknown_option"),
        "jemalloc did not read MALLOC_CONF: {stderr}"
    );
}
