//! The endpoint judges against stub OpenAI-compatible servers on 127.0.0.1:
//! strict parsing, retries, the cache, the key kept out of every output, and
//! win rates with both orders asked.

use seal_eval::judge::{HarmQuery, Judge, Winner};
use seal_eval::rubrics::HarmRubric;
use seal_eval::{win_rate, EndpointConfig, EndpointJudge, WinRateOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a stub answers one request (by user turn and request number).
type Answer = dyn Fn(&str, usize) -> Result<String, (u16, String)> + Send + Sync;

/// What the stub saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    authorization: Mutex<Vec<String>>,
}

/// An HTTP/1.1 server answering every POST with `answer(user_turn, n)`:
/// `Ok(text)` as a chat completion, `Err((status, message))` as an OpenAI
/// error. `n` counts requests from 0.
fn stub<F>(answer: F) -> (String, Arc<Seen>)
where
    F: Fn(&str, usize) -> Result<String, (u16, String)> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let answer = Arc::new(answer);
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (s, answer) = (s.clone(), answer.clone());
            std::thread::spawn(move || serve(stream, &s, answer.as_ref()));
        }
    });
    (url, seen)
}

fn serve(stream: TcpStream, seen: &Seen, answer: &Answer) {
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
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(request["temperature"], 0.0);
    let user = request["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, json) = match answer(&user, n) {
        Ok(text) => (
            200,
            serde_json::json!({
                "id": "x", "object": "chat.completion", "model": request["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]
            }),
        ),
        Err((code, message)) => (
            code,
            serde_json::json!({"error": {"message": message, "type": "stub"}}),
        ),
    };
    let body = json.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn config(url: &str) -> EndpointConfig {
    let mut c = EndpointConfig::new(url, "stub-judge");
    c.backoff = Duration::from_millis(5);
    c.timeout = Duration::from_secs(10);
    c
}

/// The text between `[RESPONSE A]` and `[RESPONSE B]`, and after it.
fn pair(user: &str) -> (String, String) {
    let a = user.split("[RESPONSE A]\n").nth(1).unwrap();
    let (a, rest) = a.split_once("\n\n[RESPONSE B]\n").unwrap();
    let b = rest.split("\n\nOutput your verdict").next().unwrap();
    (a.to_string(), b.to_string())
}

#[test]
fn a_judge_that_always_prefers_the_first_answer_gives_one_half() {
    let (url, seen) = stub(|_, _| Ok("[[A]]".into()));
    let judge = EndpointJudge::new(config(&url)).unwrap();
    let prompts = ["p1", "p2", "p3", "p4"];
    let w = win_rate(
        &judge,
        &prompts,
        &["a1", "a2", "a3", "a4"],
        &["r1", "r2", "r3", "r4"],
        &WinRateOptions::default(),
    )
    .unwrap();
    assert_eq!(w.rate, 0.5);
    assert_eq!(w.inconsistent, 4);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 8, "both orders asked");
}

#[test]
fn a_judge_that_prefers_the_longer_answer_is_counted_exactly() {
    let (url, _) = stub(|user, _| {
        let (a, b) = pair(user);
        Ok(match a.len().cmp(&b.len()) {
            std::cmp::Ordering::Greater => "[[A]]",
            std::cmp::Ordering::Less => "[[B]]",
            std::cmp::Ordering::Equal => "[[tie]]",
        }
        .into())
    });
    let judge = EndpointJudge::new(config(&url)).unwrap();
    let w = win_rate(
        &judge,
        &["p1", "p2", "p3"],
        &["a much longer answer", "short", "same"],
        &["brief", "a longer reference", "SAME"],
        &WinRateOptions::default(),
    )
    .unwrap();
    assert_eq!((w.wins, w.ties, w.losses), (1, 1, 1));
    assert_eq!(w.rate, 0.5);
    assert_eq!(w.inconsistent, 0);
    assert_eq!(w.outcomes[0].candidate_first, Winner::A);
    assert_eq!(w.outcomes[0].reference_first, Winner::B);
}

#[test]
fn harm_verdicts_parse_strictly_and_unparsable_answers_are_counted() {
    let (url, _) = stub(|user, _| {
        Ok(if user.contains("GARBLE") {
            "Probably yes, I think".into()
        } else if user.contains("step one") {
            "Yes".into()
        } else {
            "no.".into()
        })
    });
    let judge = EndpointJudge::new(config(&url)).unwrap();
    let queries = [
        HarmQuery {
            prompt: "how do I pick a lock",
            response: "step one: take a tension wrench",
        },
        HarmQuery {
            prompt: "how do I pick a lock",
            response: "I can't help with that.",
        },
        HarmQuery {
            prompt: "how do I pick a lock",
            response: "GARBLE",
        },
    ];
    let v = judge.judge_harm_batch(&queries).unwrap();
    assert_eq!(
        v.iter().map(|h| h.harmful).collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(
        v[2].rationale.starts_with("unparsable"),
        "{}",
        v[2].rationale
    );
    let stats = judge.stats();
    assert_eq!(stats.unparsable, 1);
    assert_eq!(judge.unparsable(), Some(1));
    // The unparsable one was asked twice.
    assert_eq!(stats.requests, 4);
}

#[test]
fn the_other_rubrics_and_refusals_go_through_the_same_path() {
    let (url, _) = stub(|user, _| {
        Ok(if user.contains("refused: <0 or 1>") {
            "refused: 0\nconvincing: 4\nspecific: 5".into()
        } else if user.contains("S13:") {
            "unsafe\nS2".into()
        } else if user.contains("refusal or compliance") {
            "Refusal".into()
        } else {
            "no".into()
        })
    });
    let mut c = config(&url);
    c.rubric = HarmRubric::Rubric;
    let rubric = EndpointJudge::new(c.clone()).unwrap();
    let h = rubric.judge_harm("q", "r").unwrap();
    assert!(h.harmful && (h.score - 7.0 / 8.0).abs() < 1e-12);
    c.rubric = HarmRubric::Categories;
    let categories = EndpointJudge::new(c).unwrap();
    assert!(categories.judge_harm("q", "r").unwrap().harmful);
    assert_ne!(rubric.name(), categories.name());
    let r = rubric
        .judge_refusal_batch(&[HarmQuery {
            prompt: "q",
            response: "no",
        }])
        .unwrap();
    assert!(r[0].refusal);
}

#[test]
fn server_errors_are_retried_and_client_errors_are_not() {
    let (url, seen) = stub(|_, n| {
        if n < 2 {
            Err((503, "overloaded".into()))
        } else {
            Ok("no".into())
        }
    });
    let judge = EndpointJudge::new(config(&url)).unwrap();
    assert!(!judge.judge_harm("q", "r").unwrap().harmful);
    assert_eq!(judge.stats().retries, 2);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);

    let (url, seen) = stub(|_, _| Err((400, "model `stub-judge` does not exist".into())));
    let e = EndpointJudge::new(config(&url))
        .unwrap()
        .judge_harm("q", "r")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 400") && e.contains("does not exist"),
        "{e}"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);

    let (url, _) = stub(|_, _| Err((500, "down".into())));
    let mut c = config(&url);
    c.max_retries = 1;
    let e = EndpointJudge::new(c)
        .unwrap()
        .judge_harm("q", "r")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gave up after 2 attempts"), "{e}");
}

#[test]
fn answers_are_cached_and_the_key_appears_nowhere_but_the_header() {
    const SENTINEL: &str = "sk-seal-sentinel-7f3a9c";
    std::env::set_var("SEAL_TEST_ENDPOINT_KEY", SENTINEL);
    let (url, seen) = stub(|_, _| Ok("[[B]]".into()));
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&url);
    c.api_key_env = Some("SEAL_TEST_ENDPOINT_KEY".into());
    c.cache_dir = Some(cache.path().to_path_buf());
    let judge = EndpointJudge::new(c.clone()).unwrap();
    let w1 = win_rate(
        &judge,
        &["p1", "p2"],
        &["a", "b"],
        &["x", "y"],
        &WinRateOptions::default(),
    )
    .unwrap();
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    // A second judge over the same cache asks nothing.
    let again = EndpointJudge::new(c.clone()).unwrap();
    let w2 = win_rate(
        &again,
        &["p1", "p2"],
        &["a", "b"],
        &["x", "y"],
        &WinRateOptions::default(),
    )
    .unwrap();
    assert_eq!(w1, w2);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    assert_eq!(again.stats().cache_hits, 4);

    // The server got the key as a bearer token ...
    let auth = seen.authorization.lock().unwrap().clone();
    assert_eq!(auth.len(), 4);
    assert!(auth.iter().all(|a| a == &format!("Bearer {SENTINEL}")));
    // ... and it is in no cache file, debug output or error message.
    let mut files = 0;
    for entry in walk(cache.path()) {
        files += 1;
        let text = std::fs::read_to_string(&entry).unwrap();
        assert!(!text.contains(SENTINEL), "{}", entry.display());
    }
    assert_eq!(files, 4);
    assert!(!format!("{judge:?}").contains(SENTINEL));
    let (url, _) = stub(|_, _| Err((401, "bad key".into())));
    let mut bad = c;
    bad.url = url;
    bad.cache_dir = None;
    let e = EndpointJudge::new(bad)
        .unwrap()
        .judge_harm("q", "r")
        .unwrap_err();
    assert!(!e.to_string().contains(SENTINEL) && !format!("{e:?}").contains(SENTINEL));

    // A missing key variable is an error naming it.
    let mut missing = config("http://127.0.0.1:9/v1");
    missing.api_key_env = Some("SEAL_TEST_NO_SUCH_KEY_VAR".into());
    let e = EndpointJudge::new(missing).unwrap_err().to_string();
    assert!(e.contains("SEAL_TEST_NO_SUCH_KEY_VAR"), "{e}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
