//! The bad-input matrix: the `seal` binary run as a new user would, on
//! malformed and hostile inputs and on outputs that cannot be written. Each
//! case must give a clear error naming what is wrong, exit non-zero, leave
//! no partial output and leave everything written before untouched (or,
//! where the input is fine, do the right thing). The matrix is written as
//! a Markdown table; `docs/bad-input-matrix.md` must equal it (regenerate
//! with `SEAL_BLESS=1 cargo test -p seal-cli --test bad_input`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The fixtures every case starts from.
struct Fx {
    tmp: tempfile::TempDir,
    model: PathBuf,
    finetune: PathBuf,
    safe: PathBuf,
    align: PathBuf,
}

impl Fx {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        tiny_model(&model, |_| {});
        let b = seal_data::embedded::embedded_default().unwrap();
        let finetune = tmp.path().join("finetune.jsonl");
        let safe = tmp.path().join("safe.jsonl");
        let align = tmp.path().join("align.jsonl");
        seal_data::write_jsonl_samples(&finetune, &b.finetune).unwrap();
        seal_data::write_jsonl_samples(&safe, &b.safe).unwrap();
        seal_data::write_jsonl_samples(&align, &b.align).unwrap();
        Self {
            tmp,
            model,
            finetune,
            safe,
            align,
        }
    }

    /// A fresh path for a case.
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A JSONL file with the given lines.
    fn jsonl(&self, name: &str, lines: &[&[u8]]) -> PathBuf {
        let p = self.path(name);
        let mut f = std::fs::File::create(&p).unwrap();
        for l in lines {
            f.write_all(l).unwrap();
            f.write_all(b"\n").unwrap();
        }
        p
    }
}

fn tiny_model(dir: &Path, configure: impl FnOnce(&mut seal_model::LlamaConfig)) {
    seal_testkit::write_tiny_model_dir(dir, |c| {
        c.hidden_size = 64;
        c.intermediate_size = 128;
        c.num_hidden_layers = 2;
        c.head_dim = 16;
        configure(c);
    })
    .unwrap();
}

fn seal(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seal"));
    for a in args {
        c.arg(a);
    }
    c.env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null());
    c
}

fn output(mut c: Command) -> Output {
    c.output().unwrap()
}

type Check = Result<(), String>;

/// The command failed and its error names every one of `needles`.
fn fails_naming(o: &Output, needles: &[&str]) -> Check {
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        return Err(format!("exited 0; stderr: {err}"));
    }
    if err.contains("panicked") {
        return Err(format!("panicked: {err}"));
    }
    for n in needles {
        if !err.contains(n) {
            return Err(format!("the error does not name `{n}`: {err}"));
        }
    }
    Ok(())
}

fn succeeds(o: &Output) -> Check {
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn missing(p: &Path) -> Check {
    if p.exists() {
        Err(format!("{} was left behind", p.display()))
    } else {
        Ok(())
    }
}

fn unchanged(p: &Path, bytes: &[u8]) -> Check {
    match std::fs::read(p) {
        Ok(b) if b == bytes => Ok(()),
        Ok(_) => Err(format!("{} was changed", p.display())),
        Err(e) => Err(format!("{} is gone: {e}", p.display())),
    }
}

fn char_device(p: &str) -> Check {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::metadata(p).map_err(|e| format!("{p}: {e}"))?;
    if m.file_type().is_char_device() {
        Ok(())
    } else {
        Err(format!("{p} is no longer a character device"))
    }
}

/// Entries of `dir` (names), for "nothing was added or removed".
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn same_listing(dir: &Path, before: &[String]) -> Check {
    let now = listing(dir);
    if now == before {
        Ok(())
    } else {
        Err(format!("{} changed: {before:?} -> {now:?}", dir.display()))
    }
}

/// A stored (uncompressed) zip archive with the given files, as
/// `torch.save` writes them.
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u32.to_le_bytes()); // time, date
            h.extend(crc.sum().to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(*data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

struct Row {
    command: &'static str,
    input: &'static str,
    expected: &'static str,
    result: Check,
}

#[derive(Default)]
struct Matrix {
    rows: Vec<Row>,
}

impl Matrix {
    fn case(
        &mut self,
        command: &'static str,
        input: &'static str,
        expected: &'static str,
        run: impl FnOnce() -> Check,
    ) {
        let result = run();
        if let Err(e) = &result {
            eprintln!("FAILED: seal {command}: {input}: {e}");
        }
        self.rows.push(Row {
            command,
            input,
            expected,
            result,
        });
    }

    fn markdown(&self) -> String {
        let mut s = String::from(
            "# The bad-input matrix\n\n\
             Written by `crates/seal-cli/tests/bad_input.rs` (one integration test over the \
             `seal` binary; regenerate with `SEAL_BLESS=1 cargo test -p seal-cli --test \
             bad_input`). Every case checks the exit status, that the error names what is \
             wrong, that no partial output is left and that nothing written before was \
             changed.\n\n\
             | command | bad input | expected | result |\n|---|---|---|---|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| `seal {}` | {} | {} | {} |\n",
                r.command,
                r.input,
                r.expected,
                if r.result.is_ok() { "pass" } else { "FAIL" }
            ));
        }
        let passed = self.rows.iter().filter(|r| r.result.is_ok()).count();
        s.push_str(&format!("\n{passed} of {} cases pass.\n", self.rows.len()));
        s
    }
}

#[test]
fn bad_input_matrix() {
    let fx = Fx::new();
    let mut m = Matrix::default();
    let model = &fx.model;

    // ---- Never destroy what the user did not ask to replace ----
    m.case(
        "align",
        "`--out` is a non-empty directory of the user's",
        "refused before training; its files untouched",
        || {
            let out = fx.path("users-dir");
            std::fs::create_dir(&out).unwrap();
            std::fs::write(out.join("notes.txt"), b"mine").unwrap();
            let o = output(seal(&[
                &"align", &"--model", model, &"--data", &fx.align, &"--out", &out,
            ]));
            fails_naming(&o, &["users-dir", "not empty", "--force"])?;
            unchanged(&out.join("notes.txt"), b"mine")?;
            same_listing(&out, &["notes.txt".to_string()])
        },
    );
    m.case(
        "align",
        "`--out .` (the working directory, holding the data)",
        "refused; nothing deleted",
        || {
            let cwd = fx.path("cwd");
            std::fs::create_dir(&cwd).unwrap();
            let data = cwd.join("align.jsonl");
            std::fs::copy(&fx.align, &data).unwrap();
            let before = listing(&cwd);
            let mut c = seal(&[
                &"align",
                &"--model",
                model,
                &"--data",
                &"align.jsonl",
                &"--out",
                &".",
            ]);
            c.current_dir(&cwd);
            fails_naming(&output(c), &["not empty"])?;
            same_listing(&cwd, &before)?;
            unchanged(&data, &std::fs::read(&fx.align).unwrap())
        },
    );
    m.case(
        "align",
        "`--out` is an existing file",
        "refused before training; no staging directory left",
        || {
            let file = fx.path("a-file");
            std::fs::write(&file, b"keep").unwrap();
            let parent_before = listing(fx.tmp.path());
            let o = output(seal(&[
                &"align", &"--model", model, &"--data", &fx.align, &"--out", &file,
            ]));
            fails_naming(&o, &["a-file", "not a directory"])?;
            unchanged(&file, b"keep")?;
            same_listing(fx.tmp.path(), &parent_before)
        },
    );
    m.case(
        "align",
        "a staging directory left by a killed run",
        "removed by the next run, which succeeds",
        || {
            let out = fx.path("aligned");
            let stale = fx.path(".aligned.partial-4194999-7");
            std::fs::create_dir(&stale).unwrap();
            std::fs::write(stale.join("model.safetensors"), vec![0u8; 1024]).unwrap();
            let o = output(seal(&[
                &"align",
                &"--model",
                model,
                &"--data",
                &fx.align,
                &"--out",
                &out,
                &"--max-steps",
                &"1",
                &"--batch",
                &"2",
                &"--max-len",
                &"256",
                &"--no-progress",
            ]));
            succeeds(&o)?;
            missing(&stale)?;
            if !out.join("model.safetensors").is_file() {
                return Err("no model written".into());
            }
            Ok(())
        },
    );
    m.case(
        "rank",
        "`--out /proc/seal-out` (cannot be created)",
        "refused before loading anything",
        || {
            let o = output(seal(&[
                &"rank",
                &"--model",
                model,
                &"--finetune",
                &fx.finetune,
                &"--safe",
                &fx.safe,
                &"--out",
                &"/proc/seal-out",
            ]));
            fails_naming(&o, &["/proc"])?;
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("steps") {
                return Err(format!("training ran before the check: {err}"));
            }
            Ok(())
        },
    );
    m.case(
        "select",
        "`--out /dev/null`",
        "written in place; /dev/null stays a device",
        || {
            let o = output(seal(&[
                &"select",
                &"--rule",
                &"random",
                &"--dataset",
                &fx.finetune,
                &"--out",
                &"/dev/null",
            ]));
            succeeds(&o)?;
            char_device("/dev/null")
        },
    );
    m.case(
        "select",
        "`--scored /dev/full` (a full disk)",
        "error naming /dev/full; the device stays",
        || {
            let out = fx.path("kept.txt");
            let o = output(seal(&[
                &"select",
                &"--rule",
                &"random",
                &"--dataset",
                &fx.finetune,
                &"--out",
                &out,
                &"--scored",
                &"/dev/full",
            ]));
            fails_naming(&o, &["/dev/full"])?;
            char_device("/dev/full")
        },
    );
    m.case(
        "select",
        "`--summary` is a directory",
        "refused before selecting; directory untouched",
        || {
            let dir = fx.path("summary-dir");
            std::fs::create_dir(&dir).unwrap();
            let out = fx.path("kept2.txt");
            let o = output(seal(&[
                &"select",
                &"--rule",
                &"random",
                &"--dataset",
                &fx.finetune,
                &"--out",
                &out,
                &"--summary",
                &dir,
            ]));
            fails_naming(&o, &["--summary", "summary-dir", "directory"])?;
            missing(&out)?;
            same_listing(&dir, &[])
        },
    );
    m.case(
        "generate",
        "`--dataset … --out /dev/full`",
        "error naming /dev/full; the device stays",
        || {
            let o = output(seal(&[
                &"generate",
                &"--model",
                model,
                &"--dataset",
                &fx.safe,
                &"--out",
                &"/dev/full",
                &"--max-new-tokens",
                &"2",
            ]));
            fails_naming(&o, &["/dev/full"])?;
            char_device("/dev/full")
        },
    );
    m.case(
        "generate",
        "`--logits-json /dev/null`",
        "written in place; /dev/null stays a device",
        || {
            let o = output(seal(&[
                &"generate",
                &"--model",
                model,
                &"--prompt",
                &"hi",
                &"--max-new-tokens",
                &"2",
                &"--logits-json",
                &"/dev/null",
            ]));
            succeeds(&o)?;
            char_device("/dev/null")
        },
    );
    m.case(
        "data inspect",
        "standard output is `/dev/full`",
        "error about standard output, no panic",
        || {
            let mut c = seal(&[&"data", &"inspect", &"--format", &"seal", &fx.safe]);
            c.stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
            fails_naming(&output(c), &["standard output"])
        },
    );

    // ---- Silent corruptions ----
    for (command, flag) in [
        ("finetune", "--lr"),
        ("rank", "--lambda"),
        ("rank", "--ranker-lr"),
        ("align", "--lr"),
    ] {
        m.case(
            command,
            match (command, flag) {
                ("finetune", _) => "`--lr=NaN`",
                ("rank", "--lambda") => "`--lambda=NaN`",
                ("rank", _) => "`--ranker-lr=NaN`",
                _ => "`--lr=NaN`",
            },
            "refused when parsed, naming the option",
            || {
                let out = fx.path(&format!("nan-{command}{flag}"));
                let data_flag = if command == "rank" {
                    "--finetune"
                } else {
                    "--data"
                };
                let data = if command == "align" {
                    &fx.align
                } else {
                    &fx.finetune
                };
                let mut c = seal(&[
                    &command, &"--model", model, &data_flag, data, &"--out", &out,
                ]);
                if command == "rank" {
                    c.arg("--safe").arg(&fx.safe);
                }
                c.arg(format!("{flag}=NaN"));
                fails_naming(&output(c), &[flag, "finite"])?;
                missing(&out)
            },
        );
    }
    m.case("finetune", "`--batch 0`", "refused when parsed", || {
        let out = fx.path("batch0");
        let o = output(seal(&[
            &"finetune",
            &"--model",
            model,
            &"--data",
            &fx.finetune,
            &"--out",
            &out,
            &"--batch",
            &"0",
        ]));
        fails_naming(&o, &["--batch"])?;
        missing(&out)
    });
    m.case(
        "generate",
        "a model whose weights hold NaN",
        "refused on load, naming the tensor",
        || {
            let dir = fx.path("nan-model");
            tiny_model(&dir, |_| {});
            let st = dir.join("model.safetensors");
            let files = seal_model::weights::WeightFiles::open_file(&st).unwrap();
            let mut tensors: Vec<(String, tch::Tensor)> = files
                .names()
                .map(|n| (n.to_string(), files.load_raw(n).unwrap()))
                .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            drop(files);
            let bytes = {
                // Written by hand: the library refuses to save NaN.
                let t = tensors
                    .iter_mut()
                    .find(|(n, _)| n == "model.norm.weight")
                    .unwrap();
                let _ = t.1.get(0).fill_(f64::NAN);
                let host: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
                    .iter()
                    .map(|(n, t)| {
                        (
                            n.clone(),
                            Vec::<f32>::try_from(t.flatten(0, -1))
                                .unwrap()
                                .iter()
                                .flat_map(|x| x.to_le_bytes())
                                .collect(),
                            t.size().iter().map(|&d| d as usize).collect(),
                        )
                    })
                    .collect();
                let views: Vec<(String, safetensors::tensor::TensorView)> = host
                    .iter()
                    .map(|(n, v, s)| {
                        let b: &[u8] = v;
                        (
                            n.clone(),
                            safetensors::tensor::TensorView::new(
                                safetensors::Dtype::F32,
                                s.clone(),
                                b,
                            )
                            .unwrap(),
                        )
                    })
                    .collect();
                safetensors::serialize(views, None).unwrap()
            };
            std::fs::write(&st, bytes).unwrap();
            let o = output(seal(&[
                &"generate",
                &"--model",
                &dir,
                &"--prompt",
                &"hi",
                &"--max-new-tokens",
                &"2",
            ]));
            fails_naming(&o, &["model.norm.weight", "NaN"])
        },
    );
    m.case(
        "rank",
        "`--resume` with another `--ranker-lr`",
        "refused, naming the changed option; checkpoints kept",
        || {
            let out = fx.path("rank-resume");
            let common: [&dyn AsRef<std::ffi::OsStr>; 16] = [
                &"rank",
                &"--model",
                model,
                &"--finetune",
                &fx.finetune,
                &"--safe",
                &fx.safe,
                &"--out",
                &out,
                &"--max-steps",
                &"2",
                &"--checkpoint-every",
                &"1",
                &"--batch",
                &"2",
                &"--no-progress",
            ];
            succeeds(&output(seal(&common)))?;
            let latest =
                std::fs::read(out.join("checkpoints/latest")).map_err(|e| e.to_string())?;
            let mut c = seal(&common);
            c.args(["--resume", "--ranker-lr", "0.5"]);
            fails_naming(&output(c), &["--ranker-lr", "--resume"])?;
            unchanged(&out.join("checkpoints/latest"), &latest)
        },
    );
    m.case(
        "import-selector",
        "a `.pt` whose pickle names `os.system`",
        "refused (as `weights_only`), naming the global; no output",
        || {
            let pickle: &[u8] =
                b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
            let pt = fx.path("evil.pt");
            std::fs::write(
                &pt,
                stored_zip(&[("evil/data.pkl", pickle), ("evil/version", b"3\n")]),
            )
            .unwrap();
            let out = fx.path("evil-out");
            let o = output(seal(&[&"import-selector", &"--pt", &pt, &"--out", &out]));
            fails_naming(&o, &["evil.pt", "os", "system"])?;
            missing(&out)
        },
    );
    m.case(
        "finetune",
        "a weights file whose weight overflows f32 (a poisoned sample)",
        "stops at the step, naming it and the sample ids; no adapter",
        || {
            let weights = fx.path("poison-weights.jsonl");
            let samples = seal_data::read_jsonl_samples(&fx.finetune).unwrap();
            let mut text = String::new();
            for (i, s) in samples.iter().enumerate() {
                let w = if i == 3 { 1e300 } else { 1.0 };
                text.push_str(&serde_json::json!({"id": s.id, "weight": w}).to_string());
                text.push('\n');
            }
            std::fs::write(&weights, text).unwrap();
            let out = fx.path("poisoned");
            let o = output(seal(&[
                &"finetune",
                &"--model",
                model,
                &"--data",
                &fx.finetune,
                &"--weights",
                &weights,
                &"--out",
                &out,
                &"--batch",
                &"96",
                &"--max-steps",
                &"1",
                &"--no-progress",
            ]));
            fails_naming(&o, &["non-finite", "step 0", &samples[3].id])?;
            missing(&out.join("adapter_model.safetensors"))?;
            missing(&out)
        },
    );

    // ---- Crashes ----
    let huge_prompt = {
        let p = fx.path("huge.jsonl");
        let text = "a".repeat(5 << 20);
        let line = serde_json::json!({"id": "huge-1", "source": "t", "label": "harmful",
                "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]});
        std::fs::write(&p, format!("{line}\n")).unwrap();
        p
    };
    m.case(
        "eval",
        "a 5 MB prompt in `--safety`",
        "error naming the sample and the prompt limit",
        || {
            let out = fx.path("eval-huge");
            let o = output(seal(&[
                &"eval",
                &"--model",
                model,
                &"--safety",
                &huge_prompt,
                &"--out",
                &out,
            ]));
            fails_naming(&o, &["huge-1", "prompt limit"])?;
            missing(&out)
        },
    );
    m.case(
        "generate",
        "a 5 MB prompt in `--dataset`",
        "error naming the sample and the prompt limit",
        || {
            let out = fx.path("gen-huge.jsonl");
            let o = output(seal(&[
                &"generate",
                &"--model",
                model,
                &"--dataset",
                &huge_prompt,
                &"--out",
                &out,
            ]));
            fails_naming(&o, &["huge-1", "prompt limit"])?;
            missing(&out)
        },
    );
    m.case(
        "generate",
        "`num_hidden_layers: 1000000000` in config.json",
        "refused before allocating, naming the first missing tensor",
        || {
            let dir = fx.path("absurd-model");
            tiny_model(&dir, |_| {});
            let cfg_path = dir.join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
            cfg["num_hidden_layers"] = serde_json::json!(1_000_000_000u64);
            std::fs::write(&cfg_path, cfg.to_string()).unwrap();
            let o = output(seal(&[&"generate", &"--model", &dir, &"--prompt", &"hi"]));
            fails_naming(&o, &["model.layers.2"])
        },
    );

    // ---- Malformed inputs, every training command ----
    let bad_json = fx.jsonl(
        "bad-json.jsonl",
        &[
            br#"{"id":"a","source":"t","messages":[{"role":"user","content":"p"},{"role":"assistant","content":"r"}]}"#,
            b"{not json",
        ],
    );
    let no_prompt = fx.jsonl("no-prompt.jsonl", &[br#"{"id":"a","source":"t"}"#]);
    let bad_utf8 = fx.jsonl(
        "bad-utf8.jsonl",
        &[
            br#"{"id":"a","source":"t","messages":[{"role":"user","content":"p"},{"role":"assistant","content":"r"}]}"#,
            b"{\"id\":\"b\",\"source\":\"t\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"},{\"role\":\"assistant\",\"content\":\"r\"}]}",
        ],
    );
    let empty_resp = fx.jsonl(
        "empty-response.jsonl",
        &[br#"{"id":"a","source":"t","messages":[{"role":"user","content":"p"},{"role":"assistant","content":""}]}"#],
    );
    for (file, what, needles) in [
        (
            &bad_json,
            "a malformed JSONL line",
            vec!["bad-json.jsonl:2"],
        ),
        (
            &no_prompt,
            "a line without `messages`",
            vec!["no-prompt.jsonl:1", "messages"],
        ),
        (
            &bad_utf8,
            "invalid UTF-8 on line 2",
            vec!["bad-utf8.jsonl:2", "UTF-8"],
        ),
        (
            &empty_resp,
            "an empty response",
            vec!["empty-response.jsonl:1", "response"],
        ),
        (
            &fx.path("no-such.jsonl"),
            "a missing file",
            vec!["no-such.jsonl"],
        ),
    ] {
        for command in ["finetune", "rank", "align"] {
            let input: &'static str = Box::leak(what.to_string().into_boxed_str());
            m.case(
                command,
                input,
                "error naming the file, line and field; no output",
                || {
                    let out = fx.path(&format!(
                        "out-{command}-{}",
                        file.file_name().unwrap().to_string_lossy()
                    ));
                    let data_flag = if command == "rank" {
                        "--finetune"
                    } else {
                        "--data"
                    };
                    let mut c = seal(&[
                        &command,
                        &"--model",
                        model,
                        &data_flag,
                        file,
                        &"--out",
                        &out,
                        &"--no-progress",
                    ]);
                    if command == "rank" {
                        c.arg("--safe").arg(&fx.safe);
                    }
                    fails_naming(&output(c), &needles)?;
                    missing(&out)
                },
            );
        }
    }
    m.case(
        "finetune",
        "a model tensor of the wrong shape",
        "error naming the tensor and both shapes",
        || {
            let dir = fx.path("wrong-shape");
            tiny_model(&dir, |_| {});
            let cfg_path = dir.join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
            cfg["intermediate_size"] = serde_json::json!(96);
            std::fs::write(&cfg_path, cfg.to_string()).unwrap();
            let out = fx.path("wrong-shape-out");
            let o = output(seal(&[
                &"finetune",
                &"--model",
                &dir,
                &"--data",
                &fx.finetune,
                &"--out",
                &out,
            ]));
            fails_naming(&o, &["gate_proj.weight", "96"])?;
            missing(&out)
        },
    );
    m.case(
        "import-gguf",
        "a truncated GGUF",
        "error naming the file; no output directory",
        || {
            let gguf = fx.path("cut.gguf");
            let mut bytes = b"GGUF".to_vec();
            bytes.extend(3u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes()); // one tensor
            bytes.extend(5u64.to_le_bytes()); // five metadata keys, none written
            std::fs::write(&gguf, bytes).unwrap();
            let out = fx.path("cut-out");
            let o = output(seal(&[&"import-gguf", &"--gguf", &gguf, &"--out", &out]));
            fails_naming(&o, &["cut.gguf"])?;
            missing(&out)
        },
    );
    m.case(
        "import-gguf",
        "a GGUF tensor of an unknown quantisation type",
        "error naming the tensor and its type; no output",
        || {
            let gguf = fx.path("unknown-quant.gguf");
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(1u64.to_le_bytes()); // tensors
            b.extend(1u64.to_le_bytes()); // metadata
            let key = b"general.architecture";
            b.extend((key.len() as u64).to_le_bytes());
            b.extend(key);
            b.extend(8u32.to_le_bytes()); // string
            b.extend(5u64.to_le_bytes());
            b.extend(b"llama");
            let name = b"token_embd.weight";
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name);
            b.extend(2u32.to_le_bytes()); // dims
            b.extend(32u64.to_le_bytes());
            b.extend(4u64.to_le_bytes());
            b.extend(9999u32.to_le_bytes()); // type
            b.extend(0u64.to_le_bytes()); // offset
            while b.len() % 32 != 0 {
                b.push(0);
            }
            b.extend(vec![0u8; 512]);
            std::fs::write(&gguf, b).unwrap();
            let out = fx.path("unknown-quant-out");
            let o = output(seal(&[&"import-gguf", &"--gguf", &gguf, &"--out", &out]));
            fails_naming(&o, &["unknown-quant.gguf", "token_embd.weight", "9999"])?;
            missing(&out)
        },
    );

    // ---- A full disk for directory outputs ----
    let mount = fx.path("small-fs");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&mount)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if mounted {
        m.case(
            "finetune",
            "`--out` on a full filesystem (8 KiB tmpfs)",
            "error naming the file; no partial adapter",
            || {
                let out = mount.join("adapter");
                let o = output(seal(&[
                    &"finetune",
                    &"--model",
                    model,
                    &"--data",
                    &fx.finetune,
                    &"--out",
                    &out,
                    &"--max-steps",
                    &"1",
                    &"--batch",
                    &"2",
                    &"--no-progress",
                    &"--lora-r",
                    &"64",
                ]));
                let r = fails_naming(&o, &["No space left"]);
                let left = listing(&mount);
                r?;
                if left
                    .iter()
                    .any(|n| n.contains("partial") || n.contains(".tmp-"))
                {
                    return Err(format!("partial output left: {left:?}"));
                }
                missing(&out.join("adapter_model.safetensors"))
            },
        );
        let _ = Command::new("umount").arg(&mount).status();
    } else {
        seal_data::testing::skip(
            "tmpfs",
            "cannot mount a small tmpfs for the full-disk case (needs root)",
        );
    }

    let table = m.markdown();
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bad-input-matrix.md");
    let _ = std::fs::write(&target, &table);
    let failed: Vec<String> = m
        .rows
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("seal {}: {}: {e}", r.command, r.input))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/bad-input-matrix.md");
    if std::env::var_os("SEAL_BLESS").is_some() {
        std::fs::write(&docs, &table).unwrap();
    } else if mounted {
        let committed = std::fs::read_to_string(&docs).unwrap_or_default();
        assert!(
            committed == table,
            "docs/bad-input-matrix.md is not the matrix this test ran (see target/bad-input-matrix.md; \
             regenerate with SEAL_BLESS=1)"
        );
    }
}
