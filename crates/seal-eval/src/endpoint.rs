//! Judges over any OpenAI-compatible chat-completions endpoint (a hosted
//! model, vLLM, llama.cpp's server, or `seal serve`).
//!
//! [`EndpointJudge`] implements [`Judge`]: harm verdicts under one of the
//! [`HarmRubric`]s, refusal verdicts and pairwise preferences, each asked
//! with the prompts of [`crate::rubrics`] at temperature 0 and parsed
//! strictly. Around every request:
//!
//! * **the key** comes from an environment variable named in the
//!   configuration; it is sent as a bearer token and nowhere else: not in
//!   `Debug` output, errors, logs or the cache;
//! * **retries** with exponential back-off on transport errors, timeouts,
//!   429 and 5xx answers; other HTTP errors fail at once with the server's
//!   message;
//! * **an answer that is not in the asked format** is asked once more, then
//!   counted as unparsable ([`EndpointStats::unparsable`], shown in
//!   reports) and recorded as not harmful / not a refusal / a tie, with
//!   the rationale `unparsable: ...`;
//! * **a response cache on disk**, one file per request keyed by the judge
//!   kind, model and rendered prompt (hence the prompt and the responses
//!   judged), written atomically, so a rerun asks nothing twice;
//! * **parallel requests** in batches (`concurrency` at a time).

use crate::error::{EvalError, Result};
use crate::judge::{HarmQuery, HarmVerdict, Judge, PairQuery, Preference, RefusalVerdict, Winner};
use crate::rubrics::{self, HarmRubric, JudgePrompt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where the judge is and how it is asked.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The API base, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
    pub url: String,
    /// The model name sent with every request.
    pub model: String,
    /// The environment variable holding the API key (none: no
    /// `Authorization` header).
    pub api_key_env: Option<String>,
    /// How harm is asked about.
    pub rubric: HarmRubric,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt (transport errors, 429, 5xx).
    pub max_retries: usize,
    /// First back-off; doubled after every retry, at most 8 s.
    pub backoff: Duration,
    /// Requests in flight at once in the batch methods.
    pub concurrency: usize,
    /// Answers cached here (none: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl EndpointConfig {
    /// `model` at `url`, keyless, with the defaults: the behaviour rubric,
    /// 60 s timeout, 4 retries from 0.5 s, 8 requests at a time, no cache.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            rubric: HarmRubric::default(),
            timeout: Duration::from_secs(60),
            max_retries: 4,
            backoff: Duration::from_millis(500),
            concurrency: 8,
            cache_dir: None,
        }
    }
}

/// An API key: shown as `***` by `Debug`, never written anywhere.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What an [`EndpointJudge`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Questions asked (cached or not).
    pub questions: usize,
    /// HTTP requests sent (retries and re-asks included).
    pub requests: usize,
    /// Questions answered from the cache.
    pub cache_hits: usize,
    /// Requests retried after a transport error, 429 or 5xx.
    pub retries: usize,
    /// Answers still not in the asked format after one re-ask.
    pub unparsable: usize,
}

#[derive(Default)]
struct Counters {
    questions: AtomicUsize,
    requests: AtomicUsize,
    cache_hits: AtomicUsize,
    retries: AtomicUsize,
    unparsable: AtomicUsize,
}

/// A judge behind an OpenAI-compatible endpoint (see the module docs).
pub struct EndpointJudge {
    config: EndpointConfig,
    key: Option<Secret>,
    agent: ureq::Agent,
    name: String,
    counters: Counters,
}

impl std::fmt::Debug for EndpointJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointJudge")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("key", &self.key)
            .finish()
    }
}

/// The cached answer to one question.
#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    answer: String,
}

/// The chat-completions request body.
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 2],
    temperature: f64,
    max_tokens: usize,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatReply,
}

#[derive(Deserialize)]
struct ChatReply {
    #[serde(default)]
    content: Option<String>,
}

/// What kind of question a cache entry answers.
#[derive(Clone, Copy)]
enum Question {
    Harm(HarmRubric),
    Refusal,
    Preference,
}

impl Question {
    fn tag(self) -> String {
        match self {
            Question::Harm(r) => format!("harm-{}", r.name()),
            Question::Refusal => "refusal".into(),
            Question::Preference => "preference".into(),
        }
    }
}

impl EndpointJudge {
    /// A judge for `config`; reads the key from `config.api_key_env` now
    /// (an error naming the variable when it is unset or empty).
    pub fn new(config: EndpointConfig) -> Result<Self> {
        if config.url.trim().is_empty() || config.model.trim().is_empty() {
            return Err(EvalError::invalid(
                "judge endpoint",
                "the endpoint URL and the model name must be given",
            ));
        }
        if config.concurrency == 0 {
            return Err(EvalError::invalid(
                "judge endpoint",
                "concurrency must be at least 1",
            ));
        }
        let key = match &config.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Some(Secret(k.trim().to_string())),
                _ => {
                    return Err(EvalError::invalid(
                        "judge endpoint",
                        format!("the API key variable `{var}` is unset or empty"),
                    ))
                }
            },
            None => None,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(config.timeout)
            .max_idle_connections_per_host(config.concurrency)
            .build();
        let name = format!("endpoint-{}:{}", config.rubric.name(), config.model);
        Ok(Self {
            config,
            key,
            agent,
            name,
            counters: Counters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Counts so far.
    pub fn stats(&self) -> EndpointStats {
        let c = &self.counters;
        EndpointStats {
            questions: c.questions.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            unparsable: c.unparsable.load(Ordering::Relaxed),
        }
    }

    fn cache_path(&self, question: Question, prompt: &JudgePrompt) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?;
        let mut h = Sha256::new();
        // Length-prefixed fields: no two different questions hash alike.
        for part in [
            question.tag().as_str(),
            self.config.model.as_str(),
            prompt.system.as_str(),
            prompt.user.as_str(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update((prompt.max_tokens as u64).to_le_bytes());
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(&hex[..2]).join(format!("{hex}.json")))
    }

    /// One HTTP request with retries; the answer's text.
    fn request(&self, prompt: &JudgePrompt) -> Result<String> {
        let url = format!("{}/chat/completions", self.config.url.trim_end_matches('/'));
        let body = ChatRequest {
            model: &self.config.model,
            messages: [
                ChatMessage {
                    role: "system",
                    content: &prompt.system,
                },
                ChatMessage {
                    role: "user",
                    content: &prompt.user,
                },
            ],
            temperature: 0.0,
            max_tokens: prompt.max_tokens,
        };
        let mut backoff = self.config.backoff;
        let mut attempt = 0;
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self.agent.post(&url);
            if let Some(Secret(k)) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            let outcome = req.send_json(&body);
            let retryable = match outcome {
                Ok(response) => {
                    let parsed: ChatResponse = response.into_json().map_err(|e| {
                        EvalError::invalid(
                            "judge endpoint",
                            format!("{url}: the answer is not a chat completion: {e}"),
                        )
                    })?;
                    return parsed
                        .choices
                        .into_iter()
                        .next()
                        .and_then(|c| c.message.content)
                        .ok_or_else(|| {
                            EvalError::invalid(
                                "judge endpoint",
                                format!("{url}: the answer has no message content"),
                            )
                        });
                }
                Err(ureq::Error::Status(code, response)) => {
                    let message = server_message(response);
                    if code == 429 || code >= 500 {
                        format!("HTTP {code}: {message}")
                    } else {
                        return Err(EvalError::invalid(
                            "judge endpoint",
                            format!("{url}: HTTP {code}: {message}"),
                        ));
                    }
                }
                Err(ureq::Error::Transport(t)) => format!("transport: {}", t.kind()),
            };
            if attempt >= self.config.max_retries {
                return Err(EvalError::invalid(
                    "judge endpoint",
                    format!(
                        "{url}: gave up after {} attempts ({retryable})",
                        attempt + 1
                    ),
                ));
            }
            attempt += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%url, attempt, reason = %retryable, "judge request failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    /// Asks `prompt` (from the cache when it was asked before) and parses
    /// the answer with `parse`, re-asking once; `None` when unparsable.
    fn ask<T>(
        &self,
        question: Question,
        prompt: &JudgePrompt,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<(Option<T>, String)> {
        self.counters.questions.fetch_add(1, Ordering::Relaxed);
        let path = self.cache_path(question, prompt);
        if let Some(p) = &path {
            if let Ok(bytes) = std::fs::read(p) {
                // A damaged entry is asked again and rewritten.
                if let Ok(c) = serde_json::from_slice::<CachedAnswer>(&bytes) {
                    if let Some(v) = parse(&c.answer) {
                        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok((Some(v), c.answer));
                    }
                }
            }
        }
        let mut answer = self.request(prompt)?;
        let mut parsed = parse(&answer);
        if parsed.is_none() {
            answer = self.request(prompt)?;
            parsed = parse(&answer);
        }
        match (&parsed, &path) {
            (Some(_), Some(p)) => {
                let bytes = serde_json::to_vec(&CachedAnswer {
                    answer: answer.clone(),
                })
                .map_err(|e| EvalError::invalid("judge cache", e.to_string()))?;
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
                }
                seal_data::fsutil::write_atomic(p, &bytes)?;
            }
            (None, _) => {
                self.counters.unparsable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(judge = %self.name, answer = %shorten(&answer), "unparsable judge answer");
            }
            _ => {}
        }
        Ok((parsed, answer))
    }

    /// Runs `f` over `items` with `concurrency` requests in flight, keeping
    /// the order.
    fn parallel<I: Sync, T: Send>(
        &self,
        items: &[I],
        f: impl Fn(&I) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let workers = self.config.concurrency.min(items.len()).max(1);
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<T>>> = (0..items.len()).map(|_| None).collect();
        let results: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= items.len() {
                                break;
                            }
                            out.push((i, f(&items[i])));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, r) in results.into_iter().flatten() {
            slots[i] = Some(r);
        }
        slots
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    Err(EvalError::invalid(
                        "judge endpoint",
                        format!("item {i}: a worker thread panicked"),
                    ))
                })
            })
            .collect()
    }

    fn harm(&self, prompt: &str, response: &str) -> Result<HarmVerdict> {
        let rubric = self.config.rubric;
        let q = rubrics::harm_prompt(rubric, prompt, response);
        let (parsed, answer) = self.ask(Question::Harm(rubric), &q, |a| {
            rubrics::parse_harm(rubric, a)
        })?;
        Ok(match parsed {
            Some(h) => HarmVerdict {
                harmful: h.harmful,
                score: h.score,
                rationale: h.rationale,
            },
            None => HarmVerdict {
                harmful: false,
                score: 0.0,
                rationale: format!("unparsable: {}", shorten(&answer)),
            },
        })
    }

    fn refusal(&self, prompt: &str, response: &str) -> Result<RefusalVerdict> {
        let q = rubrics::refusal_prompt(prompt, response);
        let (parsed, answer) = self.ask(Question::Refusal, &q, rubrics::parse_refusal)?;
        Ok(match parsed {
            Some(r) => RefusalVerdict {
                refusal: r,
                score: if r { 1.0 } else { 0.0 },
                rationale: if r { "refusal" } else { "compliance" }.into(),
            },
            None => RefusalVerdict {
                refusal: false,
                score: 0.0,
                rationale: format!("unparsable: {}", shorten(&answer)),
            },
        })
    }

    fn preference(&self, prompt: &str, a: &str, b: &str) -> Result<Preference> {
        let q = rubrics::preference_prompt(prompt, a, b);
        let (parsed, answer) = self.ask(Question::Preference, &q, rubrics::parse_preference)?;
        Ok(match parsed {
            Some(w) => Preference {
                winner: w,
                prob_a: match w {
                    Winner::A => 1.0,
                    Winner::B => 0.0,
                    Winner::Tie => 0.5,
                },
                rationale: format!("{w:?}"),
            },
            None => Preference {
                winner: Winner::Tie,
                prob_a: 0.5,
                rationale: format!("unparsable: {}", shorten(&answer)),
            },
        })
    }
}

/// The server's error message in the OpenAI error format, or the body's
/// start.
fn server_message(response: ureq::Response) -> String {
    let text = response.into_string().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| shorten(&text))
}

/// At most 120 characters of `s`, on one line.
fn shorten(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 120 {
        format!("{}…", one.chars().take(120).collect::<String>())
    } else {
        one
    }
}

impl Judge for EndpointJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn judge_harm(&self, prompt: &str, response: &str) -> Result<HarmVerdict> {
        self.harm(prompt, response)
    }

    fn judge_harm_batch(&self, queries: &[HarmQuery<'_>]) -> Result<Vec<HarmVerdict>> {
        self.parallel(queries, |q| self.harm(q.prompt, q.response))
    }

    fn judge_refusal_batch(&self, queries: &[HarmQuery<'_>]) -> Result<Vec<RefusalVerdict>> {
        self.parallel(queries, |q| self.refusal(q.prompt, q.response))
    }

    fn prefer(&self, prompt: &str, a: &str, b: &str) -> Result<Preference> {
        self.preference(prompt, a, b)
    }

    fn prefer_batch(&self, queries: &[PairQuery<'_>]) -> Result<Vec<Preference>> {
        self.parallel(queries, |q| self.preference(q.prompt, q.a, q.b))
    }

    fn unparsable(&self) -> Option<usize> {
        Some(self.stats().unparsable)
    }
}
