//! The server end to end over HTTP on tiny random Llama model directories:
//! the OpenAI formats, greedy answers equal to `generate`, streaming,
//! continuous batching of concurrent clients, errors, disconnects, a full
//! queue, stop strings and graceful shutdown.

use seal_data::{Message, TextTokenizer};
use seal_model::generate::{generate, GenerationOptions, Sampling};
use seal_model::{DynLm, LoadOptions, Pretrained};
use seal_serve::{RunningServer, ServeConfig, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MODEL: &str = "tiny";

/// A server on a tiny model directory of its own.
struct Fixture {
    dir: tempfile::TempDir,
    server: Option<RunningServer>,
    base: String,
}

impl Fixture {
    /// Starts a server on port 0; `no_eos` removes the end-of-sequence
    /// token, so that answers only end at their budget or a stop string.
    fn start(no_eos: bool, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        // One intra-op thread: a tiny model gains nothing from more, and
        // OpenMP workers spinning on a busy 2-core machine cost 10×.
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path());
        if no_eos {
            let path = dir.path().join("tokenizer_config.json");
            let mut config: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            config.as_object_mut().unwrap().remove("eos_token");
            std::fs::write(&path, config.to_string()).unwrap();
        }
        let mut config = ServeConfig::default();
        config.port = 0;
        config.model_name = MODEL.into();
        configure(&mut config);
        let path = dir.path().to_path_buf();
        let server = Server::start(config, move || {
            let pre = Pretrained::load(&path, &LoadOptions::default())?;
            Ok((pre.model, pre.tokenizer))
        })
        .unwrap();
        let base = format!("http://{}", server.addr());
        Self {
            dir,
            server: Some(server),
            base,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn health(&self) -> Value {
        ureq::get(&self.url("/health"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    /// Polls /health until `ok` holds of it (or fails after 20 s).
    fn wait_health(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let h = self.health();
            if ok(&h) {
                return h;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: {h}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Writes the tiny random model directory with its weights (all but the
/// norms) scaled up tenfold: at `Llama::random`'s N(0, 0.02) the tied
/// embeddings dominate and every greedy answer repeats the prompt's last
/// token, which would make the equality tests below trivial; scaled, the
/// answers depend on the whole prompt (and on the KV cache being right).
fn write_model(dir: &Path) {
    seal_testkit::write_tiny_model_dir(dir, |_| {}).unwrap();
    let pre = reference(dir);
    tch::no_grad(|| {
        for (name, mut weight) in pre.model.base_parameters() {
            if !name.contains("norm") {
                let _ = weight.g_mul_scalar_(10.0);
            }
        }
    });
    pre.model.save_pretrained(dir).unwrap();
}

/// The model and tokenizer of a fixture, loaded here for reference answers.
fn reference(dir: &Path) -> Pretrained<DynLm> {
    Pretrained::load(dir, &LoadOptions::default()).unwrap()
}

/// `generate`'s answer (decoded, and its token count) to `prompt`.
fn expected(
    pre: &Pretrained<DynLm>,
    prompt: Vec<u32>,
    opts: &GenerationOptions,
) -> (String, usize) {
    let out = generate(&pre.model, &[prompt], opts).unwrap();
    (pre.tokenizer.decode(&out[0], true).unwrap(), out[0].len())
}

fn chat_prompt(tok: &TextTokenizer, user: &str) -> Vec<u32> {
    tok.encode_chat(&[Message::user(user)], true).unwrap()
}

/// POSTs JSON; the status and the JSON body, whatever the status.
fn post(url: &str, body: Value) -> (u16, Value) {
    match ureq::post(url).send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn chat(f: &Fixture, body: Value) -> (u16, Value) {
    post(&f.url("/v1/chat/completions"), body)
}

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `data:` payloads of a server-sent event stream, in order.
fn stream(url: &str, body: Value) -> Vec<String> {
    let r = ureq::post(url).send_json(body).unwrap();
    assert_eq!(r.content_type(), "text/event-stream");
    BufReader::new(r.into_reader())
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// Asserts an OpenAI error body with `status`, `type` and `param`.
fn assert_error(got: (u16, Value), status: u16, kind: &str, param: Option<&str>) {
    let (code, body) = got;
    assert_eq!(code, status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
    assert!(e.get("code").is_some(), "{body}");
}

#[test]
fn models_chat_and_completions_follow_the_openai_format_and_match_generate() {
    let f = Fixture::start(false, |_| {});
    let pre = reference(f.path());

    let models: Value = ureq::get(&f.url("/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "seal-rs");
    assert!(models["data"][0]["created"].is_u64());
    let card: Value = ureq::get(&f.url(&format!("/v1/models/{MODEL}")))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(card, models["data"][0]);
    match ureq::get(&f.url("/v1/models/other")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("{other:?}"),
    }

    // Greedy: exactly `generate`'s answer.
    let user = "Hello there, how are you?";
    let (want, want_tokens) = expected(
        &pre,
        chat_prompt(&pre.tokenizer, user),
        &GenerationOptions::greedy(&pre.tokenizer, 12),
    );
    let request = json!({"model": MODEL, "messages": [{"role": "user", "content": user}],
        "temperature": 0, "max_tokens": 12});
    let (status, v) = chat(&f, request.clone());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(content(&v, 0), want);
    let distinct: std::collections::BTreeSet<char> = want.chars().collect();
    assert!(distinct.len() >= 3, "a degenerate answer: {want:?}");
    let reason = if want_tokens == 12 { "length" } else { "stop" };
    assert_eq!(v["choices"][0]["finish_reason"], reason);
    let prompt_tokens = chat_prompt(&pre.tokenizer, user).len();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": want_tokens,
            "total_tokens": prompt_tokens + want_tokens})
    );

    // Text parts, `max_completion_tokens` and unknown fields.
    let (status, parts) = chat(
        &f,
        json!({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello there, "}, {"type": "text", "text": "how are you?"}]}],
            "temperature": 0, "max_completion_tokens": 12, "frequency_penalty": 0.5,
            "user": "someone", "tools": []}),
    );
    assert_eq!(status, 200, "{parts}");
    assert_eq!(content(&parts, 0), want);

    // n = 2, greedy: two identical choices.
    let mut two = request.clone();
    two["n"] = json!(2);
    let (_, v2) = chat(&f, two);
    assert_eq!(v2["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v2["choices"][1]["index"], 1);
    assert_eq!(content(&v2, 0), want);
    assert_eq!(content(&v2, 1), want);
    assert_eq!(v2["usage"]["completion_tokens"], 2 * want_tokens);

    // Seeded sampling: reproducible, and `generate`'s sample for that seed.
    let sampled = |seed: u64| {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": user}],
            "temperature": 1.0, "top_p": 0.9, "seed": seed, "max_tokens": 10});
        content(&chat(&f, body).1, 0)
    };
    let a = sampled(7);
    assert_eq!(a, sampled(7));
    assert_ne!(a, sampled(8));
    let mut opts = GenerationOptions::greedy(&pre.tokenizer, 10);
    opts.sampling = Sampling::TopP {
        temperature: 1.0,
        top_p: 0.9,
    };
    opts.seed = Some(7);
    assert_eq!(
        a,
        expected(&pre, chat_prompt(&pre.tokenizer, user), &opts).0
    );

    // Logprobs: one per generated token, each ≤ 0.
    let mut with_lp = request.clone();
    with_lp["logprobs"] = json!(true);
    let (_, v) = chat(&f, with_lp);
    let lp = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), want_tokens);
    for t in lp {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0, "{t}");
        assert!(t["token"].is_string() && t["bytes"].is_array(), "{t}");
        assert_eq!(t["top_logprobs"], json!([]));
    }
    assert!(v["choices"][0].get("logprobs").is_some());
    let (_, plain) = chat(&f, request);
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);

    // /v1/completions: the raw prompt, no chat template.
    let prompt = "Once upon a time";
    let (want, want_tokens) = expected(
        &pre,
        pre.tokenizer.encode(prompt, true).unwrap(),
        &GenerationOptions::greedy(&pre.tokenizer, 8),
    );
    let (status, v) = post(
        &f.url("/v1/completions"),
        json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 8,
            "logprobs": 0}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"], want_tokens);
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), want_tokens);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), want_tokens);
    assert!(lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x.as_f64().unwrap() <= 0.0));
    assert_eq!(lp["top_logprobs"], Value::Null);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets.first(), Some(&0));
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
}

/// Parses a stream's chunks (all but `[DONE]`, which must come last).
fn parse_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[test]
fn streams_carry_the_same_text_in_openai_chunks() {
    let f = Fixture::start(false, |_| {});
    let url = f.url("/v1/chat/completions");
    for (user, max_tokens) in [("Tell me a story", 20), ("Hi", 7)] {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": user}],
            "temperature": 0, "max_tokens": max_tokens, "logprobs": true});
        let (_, whole) = chat(&f, body.clone());
        let mut body = body;
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let chunks = parse_chunks(&stream(&url, body));
        let first = &chunks[0];
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let id = first["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-"));
        assert!(chunks.iter().all(|c| c["id"] == id && c["model"] == MODEL));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, content(&whole, 0));
        let logprobs: usize = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
            .map(Vec::len)
            .sum();
        assert_eq!(
            logprobs as u64,
            whole["usage"]["completion_tokens"].as_u64().unwrap()
        );
        // The last choice chunk has the finish reason, then the usage chunk.
        let (usage, rest) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], whole["usage"]);
        let last = rest.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]
        );
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(
            rest.iter()
                .filter(|c| !c["choices"][0]["finish_reason"].is_null())
                .count(),
            1
        );
    }

    // Without include_usage there is no usage chunk.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0, "max_tokens": 5, "stream": true});
    let chunks = parse_chunks(&stream(&url, body));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(!chunks.last().unwrap()["choices"][0]["finish_reason"].is_null());

    // Completions stream: text_completion chunks with the same text.
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "temperature": 0,
        "max_tokens": 9});
    let (_, whole) = post(&f.url("/v1/completions"), body.clone());
    let mut body = body;
    body["stream"] = json!(true);
    let chunks = parse_chunks(&stream(&f.url("/v1/completions"), body));
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
}

#[test]
fn concurrent_clients_get_what_they_get_alone() {
    let f = Fixture::start(false, |c| c.max_batch = 16);
    let requests: Vec<Value> = (0..8)
        .map(|i| {
            let user = "Tell me about the number ".to_string() + &"seven ".repeat(i) + "please";
            let mut body = json!({"model": MODEL,
                "messages": [{"role": "user", "content": user}],
                "temperature": 0, "max_tokens": 6 + 5 * i});
            if i == 3 {
                body["n"] = json!(2);
            }
            if i == 5 {
                body["temperature"] = json!(0.8);
                body["seed"] = json!(11);
            }
            body
        })
        .collect();
    let alone: Vec<Value> = requests.iter().map(|r| chat(&f, r.clone()).1).collect();
    let barrier = Arc::new(Barrier::new(requests.len()));
    let url = f.url("/v1/chat/completions");
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (barrier, url) = (Arc::clone(&barrier), url.clone());
                s.spawn(move || {
                    barrier.wait();
                    // Staggered: later requests join a batch already decoding.
                    std::thread::sleep(Duration::from_millis(3 * i as u64));
                    post(&url, r.clone()).1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"], t["choices"], "request {i}");
        assert_eq!(a["usage"], t["usage"], "request {i}");
    }
    let h = f.health();
    assert!(h["peak_rows"].as_u64().unwrap() >= 2, "{h}");
    assert_eq!(h["active_rows"], 0);
    assert_eq!(h["served"], 16);
}

/// Sends raw bytes; the status code and the body.
fn raw(f: &Fixture, request: &[u8]) -> (u16, Value) {
    let addr = f.server.as_ref().unwrap().addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    // Read to the end, or to a reset after the response (a server that
    // refuses a body it did not read may reset the connection).
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn raw_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn bad_requests_get_openai_errors_naming_the_field() {
    let f = Fixture::start(false, |c| {
        c.max_prompt_tokens = 64;
        c.max_tokens_limit = 50;
        c.max_body_bytes = 4096;
    });
    let invalid = "invalid_request_error";
    let msg = json!([{"role": "user", "content": "Hi"}]);
    let with = |key: &str, value: Value| {
        let mut body = json!({"model": MODEL, "messages": msg, "max_tokens": 3});
        body[key] = value;
        chat(&f, body)
    };
    assert_error(
        raw(&f, &raw_post("/v1/chat/completions", "{\"model\": ")),
        400,
        invalid,
        None,
    );
    assert_error(
        raw(&f, &raw_post("/v1/chat/completions", "[1, 2]")),
        400,
        invalid,
        None,
    );
    assert_error(
        chat(&f, json!({"model": MODEL})),
        400,
        invalid,
        Some("messages"),
    );
    assert_error(
        with("messages", json!("Hi")),
        400,
        invalid,
        Some("messages"),
    );
    assert_error(with("messages", json!([])), 400, invalid, Some("messages"));
    assert_error(
        with(
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        ),
        400,
        invalid,
        Some("messages"),
    );
    assert_error(
        with("messages", json!([{"role": "tool", "content": "x"}])),
        400,
        invalid,
        Some("messages"),
    );
    assert_error(
        with("temperature", json!(-1)),
        400,
        invalid,
        Some("temperature"),
    );
    assert_error(
        with("temperature", json!("hot")),
        400,
        invalid,
        Some("temperature"),
    );
    assert_error(with("top_p", json!(0)), 400, invalid, Some("top_p"));
    assert_error(with("top_p", json!(1.5)), 400, invalid, Some("top_p"));
    assert_error(with("n", json!(0)), 400, invalid, Some("n"));
    assert_error(with("n", json!(9)), 400, invalid, Some("n"));
    assert_error(
        with("max_tokens", json!(0)),
        400,
        invalid,
        Some("max_tokens"),
    );
    assert_error(
        with("max_tokens", json!(51)),
        400,
        invalid,
        Some("max_tokens"),
    );
    assert_error(
        with("max_completion_tokens", json!(100)),
        400,
        invalid,
        Some("max_completion_tokens"),
    );
    assert_error(
        with("stop", json!(["a", "b", "c", "d", "e"])),
        400,
        invalid,
        Some("stop"),
    );
    assert_error(with("stop", json!("")), 400, invalid, Some("stop"));
    let (status, body) = with("model", json!("gpt-4"));
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_error((status, body), 404, invalid, Some("model"));
    let long = "word ".repeat(40);
    let (status, body) = with("messages", json!([{"role": "user", "content": long}]));
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_error((status, body), 400, invalid, Some("messages"));

    // Completions: the prompt is required and limited too.
    let completions = f.url("/v1/completions");
    assert_error(
        post(&completions, json!({"model": MODEL})),
        400,
        invalid,
        Some("prompt"),
    );
    assert_error(
        post(&completions, json!({"model": MODEL, "prompt": long})),
        400,
        invalid,
        Some("prompt"),
    );
    assert_error(
        post(
            &completions,
            json!({"model": MODEL, "prompt": "x", "logprobs": 6}),
        ),
        400,
        invalid,
        Some("logprobs"),
    );

    // Unknown path, wrong method, body above the limit.
    assert_error(
        raw(
            &f,
            b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        404,
        invalid,
        None,
    );
    assert_error(
        raw(
            &f,
            b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        405,
        invalid,
        None,
    );
    let big = format!(
        "{{\"model\": \"{MODEL}\", \"messages\": [], \"pad\": \"{}\"}}",
        "x".repeat(5000)
    );
    assert_error(
        raw(&f, &raw_post("/v1/chat/completions", &big)),
        413,
        invalid,
        None,
    );

    // The server still answers well-formed requests.
    let (status, _) = with("max_tokens", json!(2));
    assert_eq!(status, 200);
    assert_eq!(f.health()["served"], 1);
}

#[test]
fn a_client_that_leaves_mid_stream_is_dropped_and_others_are_served() {
    let f = Fixture::start(true, |c| c.max_tokens_limit = 5000);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Go on"}],
        "temperature": 0, "max_tokens": 5000, "stream": true})
    .to_string();
    let addr = f.server.as_ref().unwrap().addr();
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&raw_post("/v1/chat/completions", &body))
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        // Read up to the first content chunk, then hang up.
        while !line.contains("\"content\":\"") || line.contains("\"role\"") {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        f.wait_health("the row is running", |h| h["active_rows"] == 1);
    }
    let h = f.wait_health("the row is dropped", |h| {
        h["active_rows"] == 0 && h["cancelled"] == 1
    });
    assert_eq!(h["served"], 0);
    // The same for a client that hangs up while waiting for a whole answer.
    let mut body: Value = serde_json::from_str(&body).unwrap();
    body["stream"] = json!(false);
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&raw_post("/v1/chat/completions", &body.to_string()))
            .unwrap();
        f.wait_health("the row is running", |h| h["active_rows"] == 1);
    }
    let h = f.wait_health("the row is dropped", |h| {
        h["active_rows"] == 0 && h["cancelled"] == 2
    });
    assert_eq!(h["served"], 0);
    // Still serving.
    let (status, v) = chat(
        &f,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0, "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[test]
fn a_full_queue_answers_429_and_the_others_are_served() {
    let f = Fixture::start(true, |c| {
        c.max_batch = 1;
        c.queue = 1;
    });
    let clients = 5;
    let barrier = Arc::new(Barrier::new(clients));
    let url = f.url("/v1/chat/completions");
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (barrier, url) = (Arc::clone(&barrier), url.clone());
                s.spawn(move || {
                    barrier.wait();
                    let body = json!({"model": MODEL,
                        "messages": [{"role": "user", "content": format!("Client {i}")}],
                        "temperature": 0, "max_tokens": 300});
                    post(&url, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "{results:?}");
    for (status, body) in &results {
        match status {
            200 => assert_eq!(body["usage"]["completion_tokens"], 300),
            429 => {
                assert_eq!(body["error"]["type"], "rate_limit_exceeded");
                assert!(body["error"]["message"].is_string());
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(results.iter().any(|(s, _)| *s == 200), "{results:?}");
    let h = f.health();
    assert_eq!(h["rejected"].as_u64().unwrap() as usize, refused.len());
    assert_eq!(h["queued"], 0);

    // Step by step: one request running, one queued, the third refused.
    let long = |i: usize| {
        json!({"model": MODEL,
            "messages": [{"role": "user", "content": format!("Client {i}")}],
            "temperature": 0, "max_tokens": 300})
    };
    let running = {
        let (url, body) = (url.clone(), long(0));
        std::thread::spawn(move || post(&url, body))
    };
    f.wait_health("one request runs", |h| h["active_rows"] == 1);
    let queued = {
        let (url, body) = (url.clone(), long(1));
        std::thread::spawn(move || post(&url, body))
    };
    f.wait_health("one request waits", |h| h["queued"] == 1);
    let (status, body) = post(&url, long(2));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    for handle in [running, queued] {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 300);
    }
}

#[test]
fn stop_strings_cut_the_text_streaming_or_not() {
    let f = Fixture::start(true, |_| {});
    let request = |stop: Option<&str>, stream: bool| {
        let mut body = json!({"model": MODEL,
            "messages": [{"role": "user", "content": "Say something"}],
            "temperature": 1, "seed": 5, "max_tokens": 40, "stream": stream});
        if let Some(s) = stop {
            body["stop"] = json!([s, "never-produced-string"]);
        }
        body
    };
    // (Seeded sampling: the tiny model's greedy answers repeat one character.)
    let (_, full) = chat(&f, request(None, false));
    let full = content(&full, 0);
    // A stop string from the middle of the answer: two characters
    // that are neither unfinished UTF-8 nor whitespace.
    let chars: Vec<char> = full.chars().collect();
    let at = (3..chars.len() - 1)
        .find(|&i| {
            chars[i..i + 2]
                .iter()
                .all(|c| *c != '\u{FFFD}' && !c.is_whitespace())
        })
        .unwrap_or_else(|| panic!("a long enough answer: {full:?}"));
    let stop: String = chars[at..at + 2].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];

    let (_, v) = chat(&f, request(Some(&stop), false));
    assert_eq!(content(&v, 0), cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let chunks = parse_chunks(&stream(
        &f.url("/v1/chat/completions"),
        request(Some(&stop), true),
    ));
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(pieces.concat(), cut);
    assert!(pieces.iter().all(|p| !p.contains(&stop)));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

/// Waits for a server's threads to end (or fails after 20 s).
fn wait_stopped(server: RunningServer) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.wait()).unwrap());
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the server stops")
        .unwrap();
}

#[test]
fn graceful_shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let mut f = Fixture::start(true, |c| c.shutdown_grace = Duration::from_secs(20));
    let handle = f.server.as_ref().unwrap().shutdown_handle();
    let url = f.url("/v1/chat/completions");
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Long"}],
        "temperature": 0, "max_tokens": 400});
    let in_flight = {
        let (url, body) = (url.clone(), body.clone());
        std::thread::spawn(move || post(&url, body))
    };
    f.wait_health("the request is running", |h| h["active_rows"] == 1);
    handle.shutdown();
    assert!(handle.is_shutting_down());
    // A new request: refused (connection refused, or 503 on a connection
    // accepted before the listener closed).
    match ureq::post(&url).send_json(body) {
        Err(ureq::Error::Status(code, r)) => {
            assert_eq!(code, 503);
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["type"], "server_error");
        }
        Err(ureq::Error::Transport(_)) => {}
        Ok(r) => panic!("accepted during shutdown: {}", r.status()),
    }
    let (status, v) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 400);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    wait_stopped(f.server.take().unwrap());
    assert!(TcpStream::connect(f.base.trim_start_matches("http://")).is_err());
}

#[test]
fn requests_left_after_the_grace_period_fail_cleanly() {
    let mut f = Fixture::start(true, |c| {
        c.shutdown_grace = Duration::from_millis(300);
        c.max_tokens_limit = 20_000;
    });
    let url = f.url("/v1/chat/completions");
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Long"}],
        "temperature": 0, "max_tokens": 20_000});
    let plain = {
        let (url, body) = (url.clone(), body.clone());
        std::thread::spawn(move || post(&url, body))
    };
    let streamed = {
        let mut body = body;
        body["stream"] = json!(true);
        std::thread::spawn(move || stream(&url, body))
    };
    f.wait_health("both requests run", |h| h["active_rows"] == 2);
    let started = Instant::now();
    f.server.as_ref().unwrap().shutdown_handle().shutdown();
    let (status, v) = plain.join().unwrap();
    assert_error((status, v), 503, "server_error", None);
    let events = streamed.join().unwrap();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    wait_stopped(f.server.take().unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn start_reports_bad_settings_failed_loads_and_busy_ports() {
    let load = |dir: &Path| {
        let dir = dir.to_path_buf();
        move || {
            let pre = Pretrained::load(&dir, &LoadOptions::default())?;
            Ok((pre.model, pre.tokenizer))
        }
    };
    let f = Fixture::start(false, |_| {});
    let mut config = ServeConfig::default();
    config.max_batch = 0;
    let err = Server::start(config, load(f.path())).unwrap_err();
    assert!(err.to_string().contains("max_batch"), "{err}");

    let mut config = ServeConfig::default();
    config.port = 0;
    let missing = f.path().join("missing");
    let err = Server::start(config, load(&missing)).unwrap_err();
    assert!(matches!(err, seal_serve::ServeError::Model(_)), "{err}");

    let mut config = ServeConfig::default();
    config.port = f.server.as_ref().unwrap().addr().port();
    let err = Server::start(config, load(f.path())).unwrap_err();
    assert!(matches!(err, seal_serve::ServeError::Io { .. }), "{err}");
    // The first server is unaffected.
    assert_eq!(f.health()["status"], "ok");
}
