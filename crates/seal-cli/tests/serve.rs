//! `seal serve` as a process: it prints the address it bound, answers an
//! OpenAI chat request, and exits with status 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if the test fails before it stopped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn serve_answers_a_chat_request_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-model");
    std::fs::create_dir(&dir).unwrap();
    seal_testkit::write_tiny_model_dir(&dir, |_| {}).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["serve", "--model"])
        .arg(&dir)
        .args(["--port", "0", "--device", "cpu", "--threads", "1"])
        .args(["--max-tokens-limit", "64", "--shutdown-grace", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut stderr = server.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Some((_, addr)) = line.trim().split_once("http://") else {
        drop(server);
        panic!("no address in {line:?}; stderr: {}", logs.join().unwrap());
    };

    let body = serde_json::json!({"model": "tiny-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0, "max_tokens": 5})
    .to_string();
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json: serde_json::Value =
        serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(
        json["model"], "tiny-model",
        "the directory's name by default"
    );
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert!(json["usage"]["completion_tokens"].as_u64().unwrap() <= 5);

    // Safety: sending SIGTERM to the child this test started.
    let sent = unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs = logs.join().unwrap();
    assert!(status.success(), "{status}; stderr: {logs}");
    assert!(logs.contains("signal received"), "{logs}");
}

/// The endpoint judges and the win rate against a real `seal serve` (a tiny
/// random model as the judge: its answers rarely parse, which the report
/// must count), with an API key that must appear in no output.
#[test]
fn win_rate_runs_against_seal_serve_and_keeps_the_key_out_of_every_output() {
    const SENTINEL: &str = "sk-seal-cli-sentinel-51c2";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("judge-model");
    std::fs::create_dir(&dir).unwrap();
    seal_testkit::write_tiny_model_dir(&dir, |_| {}).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["serve", "--model"])
        .arg(&dir)
        .args(["--port", "0", "--device", "cpu", "--threads", "1"])
        .args(["--max-tokens-limit", "16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().split_once("http://").unwrap().1.to_string();

    let write = |name: &str, answers: &[&str]| {
        let path = tmp.path().join(name);
        let text: String = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "{}\n",
                    serde_json::json!({"id": format!("s{i}"), "prompt": format!("question {i}"),
                                       "response": a, "refusal_marker": null})
                )
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let cand = write("cand.jsonl", &["a detailed answer", "yes", "no idea"]);
    let refr = write(
        "ref.jsonl",
        &["short", "a longer reference answer", "maybe"],
    );
    let out = tmp.path().join("win");
    let cache = tmp.path().join("cache");
    let run = Command::new(env!("CARGO_BIN_EXE_seal"))
        .env("SEAL_TEST_WIN_KEY", SENTINEL)
        .args(["eval", "win-rate", "--candidate"])
        .arg(&cand)
        .arg("--reference")
        .arg(&refr)
        .args(["--label", "safety", "--judge-endpoint"])
        .arg(format!("http://{addr}/v1"))
        .args([
            "--judge-model",
            "judge-model",
            "--judge-key-env",
            "SEAL_TEST_WIN_KEY",
        ])
        .args(["--judge-concurrency", "3", "--judge-cache"])
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&run.stdout).to_string(),
        String::from_utf8_lossy(&run.stderr).to_string(),
    );
    assert!(run.status.success(), "{so}\n{se}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("win_rates.json")).unwrap())
            .unwrap();
    let w = &record["sets"][0]["win_rate"];
    assert_eq!(w["prompts"], 3);
    let rate = w["rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    let stats = &record["stats"];
    assert_eq!(stats["questions"], 6, "both orders of 3 prompts");
    // Every answer is either parsed or counted as unparsable (and asked twice).
    assert!(stats["requests"].as_u64().unwrap() >= 6);
    assert!(out.join("win_rate.svg").is_file() && out.join("win_rate.md").is_file());
    // The key is in no output: files, cache, stdout, stderr.
    assert!(!so.contains(SENTINEL) && !se.contains(SENTINEL));
    let mut stack = vec![out.clone(), cache.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(SENTINEL),
                    "{}",
                    p.display()
                );
            }
        }
    }
    // Safety: stopping the child this test started.
    unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) };
    let _ = server.0.wait();
}

/// `seal serve` driven by the official `openai` Python client
/// (`scripts/openai_client_check.py`): model listing, chat with `n` and
/// logprobs, streaming with usage, text completions, and a malformed
/// request surfacing as the client's `BadRequestError`. Skipped when the
/// project's `.venv` has no `openai` package (`cargo xtask setup` installs
/// it).
#[test]
fn the_openai_python_client_talks_to_seal_serve() {
    let Some(python) = seal_testkit::venv_python() else {
        seal_data::testing::skip(
            "python",
            "no Python environment at $SEAL_VENV (run `cargo xtask setup`)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-model");
    std::fs::create_dir(&dir).unwrap();
    seal_testkit::write_tiny_model_dir(&dir, |_| {}).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["serve", "--model"])
        .arg(&dir)
        .args(["--port", "0", "--device", "cpu", "--threads", "1"])
        .args(["--max-tokens-limit", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().split_once("http://").unwrap().1.to_string();

    let script = seal_testkit::workspace_root().join("scripts/openai_client_check.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg("--base-url")
        .arg(format!("http://{addr}/v1"))
        .args(["--model", "tiny-model"])
        .output()
        .unwrap();
    // Safety: stopping the child this test started.
    unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) };
    let _ = server.0.wait();
    let (so, se) = (
        String::from_utf8_lossy(&run.stdout).to_string(),
        String::from_utf8_lossy(&run.stderr).to_string(),
    );
    if run.status.code() == Some(3) {
        seal_data::testing::skip("python", "the `openai` package is not in .venv");
        return;
    }
    assert!(run.status.success(), "{so}\n{se}");
    let v: serde_json::Value = serde_json::from_str(so.trim()).unwrap();
    assert_eq!(v["models"], serde_json::json!(["tiny-model"]));
    let chat = &v["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"], 2, "n = 2");
    let tokens = chat["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&tokens), "{chat}");
    for (reason, n) in chat["finish_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .zip(chat["logprob_tokens"].as_array().unwrap())
    {
        assert!(reason == "length" || reason == "stop", "{chat}");
        let n = n.as_u64().unwrap();
        assert!(
            (1..=6).contains(&n),
            "one logprob per generated token: {chat}"
        );
    }
    assert_eq!(chat["logprobs_finite_nonpositive"], true);
    // Greedy decoding: both choices are the same text.
    assert_eq!(chat["texts"][0], chat["texts"][1]);
    let stream = &v["stream"];
    assert!(stream["finish_reason"] == "length" || stream["finish_reason"] == "stop");
    let streamed = stream["completion_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&streamed), "{stream}");
    assert_eq!(v["completion"]["object"], "text_completion");
    assert!(v["completion"]["completion_tokens"].as_u64().unwrap() <= 4);
    let bad = &v["empty_messages"];
    assert_eq!(bad["raised"], "BadRequestError", "{bad}");
    assert_eq!(bad["status"], 400);
    assert!(
        bad["message"].as_str().unwrap().contains("messages"),
        "{bad}"
    );
}
