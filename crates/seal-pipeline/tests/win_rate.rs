//! Win rates in the pipeline (`[eval.win_rate]`): every method against the
//! reference on each evaluation set, per seed, first through the built-in
//! `endpoint` judge (a stub OpenAI-compatible server on 127.0.0.1 that always
//! prefers the first answer: every win rate must come out ½, and the API key
//! must appear in no output), then, resuming the same run, through a user's
//! judge that prefers the longer answer (recomputed from the recorded
//! responses, nothing else rerun).

// Only the fixtures, not the shared tiny config.
#[allow(dead_code)]
mod common;

use common::{tiny_bench_dir, tiny_model_dir};
use seal_eval::judge::{Preference, Winner};
use seal_pipeline::config::EvalConfig;
use seal_pipeline::{PipelineConfig, PipelineJudge, RunOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tch::Device;

const KEY_VAR: &str = "SEAL_PIPELINE_WIN_RATE_TEST_KEY";
const SENTINEL: &str = "sk-pipeline-sentinel-7d3e";

/// What the stub saw.
#[derive(Default)]
struct Seen {
    pairwise: AtomicUsize,
    other: AtomicUsize,
    authorization: Mutex<Vec<String>>,
}

/// A stub chat-completions server: `[[A]]` to every pairwise question, an
/// unparsable "maybe" to everything else.
fn stub() -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || answer(stream, &s));
        }
    });
    (url, seen)
}

fn answer(stream: TcpStream, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if lower.starts_with("authorization:") {
            seen.authorization
                .lock()
                .unwrap()
                .push(l["authorization:".len()..].trim().to_string());
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let user = request["messages"][1]["content"].as_str().unwrap_or("");
    let text = if user.contains("[RESPONSE A]") {
        seen.pairwise.fetch_add(1, Ordering::SeqCst);
        "[[A]]"
    } else {
        seen.other.fetch_add(1, Ordering::SeqCst);
        "maybe"
    };
    let body = serde_json::json!({
        "id": "x", "object": "chat.completion", "model": request["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}]
    })
    .to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Prefers the longer answer (a tie when equally long).
struct LongerJudge;

impl seal_eval::Judge for LongerJudge {
    fn name(&self) -> &str {
        "longer-answer"
    }
    fn judge_harm(&self, _: &str, _: &str) -> seal_eval::Result<seal_eval::HarmVerdict> {
        Err(seal_eval::EvalError::Unsupported {
            judge: "longer-answer".into(),
            what: "harm verdicts".into(),
        })
    }
    fn prefer(&self, _prompt: &str, a: &str, b: &str) -> seal_eval::Result<Preference> {
        let (winner, prob_a) = match a.chars().count().cmp(&b.chars().count()) {
            std::cmp::Ordering::Greater => (Winner::A, 1.0),
            std::cmp::Ordering::Less => (Winner::B, 0.0),
            std::cmp::Ordering::Equal => (Winner::Tie, 0.5),
        };
        Ok(Preference {
            winner,
            prob_a,
            rationale: "length".into(),
        })
    }
}

struct LongerFactory;

impl PipelineJudge for LongerFactory {
    fn name(&self) -> &str {
        "longer"
    }
    fn build(
        &self,
        _config: &EvalConfig,
        _device: Device,
    ) -> seal_pipeline::Result<Box<dyn seal_eval::Judge>> {
        Ok(Box::new(LongerJudge))
    }
}

fn config(root: &Path, url: &str, win_judge: &str) -> PipelineConfig {
    let text = format!(
        r#"
seeds = [1, 2]
max_len = 1024
progress = false
out = "out"
[model]
dir = "model"
[data]
dir = "bench"
eval_limit = 3
[align]
enabled = false
[select]
methods = ["random", "full"]
[finetune]
epochs = 1
batch = 4
max_steps = 2
lr = 0.001
[eval]
max_new_tokens = 4
batch = 4
gsm8k_accuracy = true
gsm8k_max_new_tokens = 4
judges = ["endpoint"]
[eval.endpoint]
url = "{url}"
model = "stub-judge"
api_key_env = "{KEY_VAR}"
timeout_seconds = 10
retries = 0
[eval.win_rate]
judge = "{win_judge}"
resamples = 200
"#
    );
    PipelineConfig::from_toml(&text, Path::new("win.toml"), root).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `(prompt id, response)` of a responses file.
fn responses(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["response"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn win_rates_against_the_reference_through_an_endpoint_and_a_user_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_model_dir(&root.join("model"));
    tiny_bench_dir(root);
    let (url, seen) = stub();
    std::env::set_var(KEY_VAR, SENTINEL);

    // Refused at parse: an unknown reference, a set GSM8K answers are off for.
    let mut bad = config(root, &url, "endpoint");
    bad.eval.win_rate.as_mut().unwrap().reference = "oracle".into();
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("eval.win_rate.reference") && e.contains("oracle"),
        "{e}"
    );
    let mut bad = config(root, &url, "endpoint");
    bad.eval.win_rate.as_mut().unwrap().judge = "nobody".into();
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("eval.win_rate.judge") && e.contains("endpoint"),
        "{e}"
    );

    let mut bad = config(root, &url, "endpoint");
    bad.eval.win_rate.as_mut().unwrap().judge = "keyword-gcg".into();
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("no pairwise preferences"), "{e}");

    let cfg = config(root, &url, "endpoint");
    let r = seal_pipeline::run(&cfg).unwrap();
    assert_eq!(r.runs.len(), 4);
    for run in &r.runs {
        if run.method == "full" {
            assert!(run.win_rates.is_empty(), "the reference has no win rate");
            continue;
        }
        let sets: Vec<&str> = run.win_rates.keys().map(String::as_str).collect();
        assert_eq!(sets, ["benign", "gsm8k", "safety"]);
        for (set, w) in &run.win_rates {
            // Always "A", asked in both orders: every prompt scores ½.
            assert_eq!(w.reference, "full");
            assert_eq!(w.win_rate.judge, "endpoint-behavior:stub-judge");
            assert_eq!(w.win_rate.prompts, 3, "{set}");
            assert_eq!(
                (w.win_rate.rate, w.win_rate.low, w.win_rate.high),
                (0.5, 0.5, 0.5)
            );
            assert_eq!(w.win_rate.inconsistent, 3);
            assert_eq!(w.unparsable, Some(0));
        }
        // The stub's harm and refusal answers never parse: counted.
        let unparsable = run.eval.unparsable_by_judge["endpoint-behavior:stub-judge"];
        assert!(unparsable >= 3, "{:?}", run.eval.unparsable_by_judge);
    }
    // At most two seeds × three sets × three prompts × both orders: a pair
    // the seeds share is answered from the run's cache.
    let pairwise = seen.pairwise.load(Ordering::SeqCst);
    assert!((1..=2 * 3 * 3 * 2).contains(&pairwise), "{pairwise}");
    let report = std::fs::read_to_string(cfg.out.join("report.md")).unwrap();
    assert!(report.contains("## Win rates"), "{report}");
    assert!(report.contains("0.500 [0.500, 0.500]"), "{report}");
    assert!(report.contains("not in the asked format"), "{report}");
    assert!(cfg.out.join("win_rates.svg").is_file());
    assert!(cfg.out.join("cache/judge-endpoint").is_dir());
    // The key went out in the header, and nowhere into the run's files.
    assert!(seen
        .authorization
        .lock()
        .unwrap()
        .iter()
        .all(|h| h == &format!("Bearer {SENTINEL}")));
    for p in files_under(&cfg.out) {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SENTINEL),
            "{}",
            p.display()
        );
    }

    // Another judge on the same run: resumed, only the win rates change.
    seal_pipeline::register_judge(Arc::new(LongerFactory)).unwrap();
    let asked = seen.other.load(Ordering::SeqCst);
    let cfg = config(root, &url, "longer");
    let resume = RunOptions { resume: true };
    let again = seal_pipeline::run_with(&cfg, &resume).unwrap();
    assert_eq!(
        seen.other.load(Ordering::SeqCst),
        asked,
        "nothing re-judged"
    );
    for run in again.runs.iter().filter(|r| r.method == "random") {
        let before = r
            .runs
            .iter()
            .find(|b| b.seed == run.seed && b.method == "random")
            .unwrap();
        assert_eq!(run.eval, before.eval, "the evaluation was kept");
        for (set, file) in [
            ("safety", "safety_responses.jsonl"),
            ("benign", "benign_responses.jsonl"),
            ("gsm8k", "gsm8k_responses.jsonl"),
        ] {
            let w = &run.win_rates[set];
            assert_eq!(w.win_rate.judge, "longer-answer");
            assert_eq!(w.unparsable, None);
            let seed_dir = cfg.out.join(format!("seed-{}", run.seed));
            let cand = responses(&seed_dir.join("random").join(file));
            let refs = responses(&seed_dir.join("full").join(file));
            let expected: f64 = cand
                .iter()
                .map(|(id, c)| {
                    let (_, rf) = refs.iter().find(|(i, _)| i == id).unwrap();
                    match c.chars().count().cmp(&rf.chars().count()) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Less => 0.0,
                        std::cmp::Ordering::Equal => 0.5,
                    }
                })
                .sum::<f64>()
                / cand.len() as f64;
            assert!((w.win_rate.rate - expected).abs() < 1e-12, "{set}");
            assert!(w.win_rate.low <= w.win_rate.high);
            assert_eq!(
                w.win_rate.inconsistent, 0,
                "a length rule has no position bias"
            );
        }
    }
}
