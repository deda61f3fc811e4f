//! The HTTP side: routes, request parsing and validation, and the
//! translation of engine events into OpenAI responses and server-sent
//! event streams.

use crate::engine::{Event, GenParams, Job, Shared, TokenInfo};
use crate::protocol::{
    ApiError, AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, ChatLogprobs, ChatMessage, Completion, CompletionChoice,
    CompletionLogprobs, CompletionRequest, ErrorResponse, FinishReason, Health, ModelCard,
    ModelList, Stop, StreamOptions, TokenLogprob, Usage,
};
use crate::ServeConfig;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use seal_data::{Message, TextTokenizer};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Most stop strings per request (OpenAI's limit).
const MAX_STOPS: usize = 4;
/// Most choices per request.
const MAX_N: usize = 8;
/// Default `max_tokens` of `/v1/completions` (OpenAI's).
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// What every handler shares.
pub(crate) struct AppState {
    pub config: ServeConfig,
    pub tokenizer: Arc<TextTokenizer>,
    pub jobs: SyncSender<Job>,
    pub shared: Arc<Shared>,
    /// Unix time the server started.
    pub created: u64,
    pub counter: AtomicU64,
}

/// The server's routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error answered in OpenAI's format.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    error: ApiError,
}

impl HttpError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ApiError {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
        }
    }

    /// 400 `invalid_request_error` naming the field `param`.
    fn invalid(message: impl Into<String>, param: &str) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        );
        e.error.param = Some(param.into());
        e
    }

    fn code(mut self, code: &str) -> Self {
        self.error.code = Some(code.into());
        self
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
        .code("server_shutting_down")
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorResponse { error: self.error })).into_response()
    }
}

async fn not_found() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown path: this server serves /v1/models, /v1/chat/completions, /v1/completions and /health",
    )
    .code("unknown_url")
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this path",
    )
}

fn card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.config.model_name.clone(),
        object: "model".into(),
        created: state.created,
        owned_by: "seal-rs".into(),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![card(&state)],
    })
}

async fn model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, HttpError> {
    state.check_model(&model)?;
    Ok(Json(card(&state)))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    let s = &state.shared;
    let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
    Json(Health {
        status: if s.shutting_down.load(Ordering::SeqCst) {
            "shutting_down"
        } else {
            "ok"
        }
        .into(),
        model: state.config.model_name.clone(),
        active_rows: load(&s.active_rows),
        queued: load(&s.queued),
        served: load(&s.served),
        cancelled: load(&s.cancelled),
        aborted: load(&s.aborted),
        rejected: load(&s.rejected),
        peak_rows: load(&s.peak_rows),
        max_batch: state.config.max_batch as u64,
    })
}

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

/// A request validated, tokenised and handed to the engine.
struct Submitted {
    id: String,
    created: u64,
    n: usize,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
    events: UnboundedReceiver<Event>,
}

async fn chat(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match state.chat(body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match state.completions(body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

impl AppState {
    fn check_open(&self) -> Result<(), HttpError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(HttpError::shutting_down());
        }
        Ok(())
    }

    fn check_model(&self, model: &str) -> Result<(), HttpError> {
        if model != self.config.model_name {
            let mut e = HttpError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "The model `{model}` does not exist: this server serves `{}`",
                    self.config.model_name
                ),
            )
            .code("model_not_found");
            e.error.param = Some("model".into());
            return Err(e);
        }
        Ok(())
    }

    async fn chat(&self, body: Result<Bytes, BytesRejection>) -> Result<Response, HttpError> {
        self.check_open()?;
        let mut fields = Fields::parse(body)?;
        let req = ChatCompletionRequest {
            model: fields.required("model")?,
            messages: fields.required("messages")?,
            max_tokens: fields.get("max_tokens")?,
            max_completion_tokens: fields.get("max_completion_tokens")?,
            temperature: fields.get("temperature")?,
            top_p: fields.get("top_p")?,
            seed: fields.get("seed")?,
            stop: fields.get("stop")?,
            n: fields.get("n")?,
            stream: fields.get("stream")?,
            stream_options: fields.get("stream_options")?,
            logprobs: fields.get("logprobs")?,
        };
        self.check_model(&req.model)?;
        let (max_tokens, max_param) = match (req.max_completion_tokens, req.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let params = self.params(
            max_tokens,
            max_param,
            self.config.max_tokens_limit,
            Sampling {
                temperature: req.temperature,
                top_p: req.top_p,
                seed: req.seed,
                stop: req.stop.as_ref(),
                n: req.n,
            },
            req.logprobs.unwrap_or(false),
        )?;
        let messages = chat_messages(&req.messages)?;
        let tokenizer = Arc::clone(&self.tokenizer);
        let prompt = tokio::task::spawn_blocking(move || tokenizer.encode_chat(&messages, true))
            .await
            .map_err(|e| HttpError::internal(format!("tokenising: {e}")))?
            .map_err(|e| {
                HttpError::invalid(format!("the chat template failed: {e}"), "messages")
            })?;
        let submitted = self.submit(
            Api::Chat,
            prompt,
            "messages",
            params,
            req.stream.unwrap_or(false),
            req.stream_options.as_ref(),
        )?;
        self.respond(Api::Chat, submitted).await
    }

    async fn completions(
        &self,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Response, HttpError> {
        self.check_open()?;
        let mut fields = Fields::parse(body)?;
        let req = CompletionRequest {
            model: fields.required("model")?,
            prompt: fields.required("prompt")?,
            max_tokens: fields.get("max_tokens")?,
            temperature: fields.get("temperature")?,
            top_p: fields.get("top_p")?,
            seed: fields.get("seed")?,
            stop: fields.get("stop")?,
            n: fields.get("n")?,
            stream: fields.get("stream")?,
            stream_options: fields.get("stream_options")?,
            logprobs: fields.get("logprobs")?,
        };
        self.check_model(&req.model)?;
        if req.logprobs.is_some_and(|k| k > 5) {
            return Err(HttpError::invalid(
                "`logprobs` must be between 0 and 5",
                "logprobs",
            ));
        }
        let params = self.params(
            Some(
                req.max_tokens
                    .unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS as u64),
            ),
            "max_tokens",
            self.config.max_tokens_limit,
            Sampling {
                temperature: req.temperature,
                top_p: req.top_p,
                seed: req.seed,
                stop: req.stop.as_ref(),
                n: req.n,
            },
            req.logprobs.is_some(),
        )?;
        let tokenizer = Arc::clone(&self.tokenizer);
        let text = req.prompt;
        let prompt = tokio::task::spawn_blocking(move || tokenizer.encode(&text, true))
            .await
            .map_err(|e| HttpError::internal(format!("tokenising: {e}")))?
            .map_err(|e| HttpError::invalid(format!("tokenising the prompt: {e}"), "prompt"))?;
        let submitted = self.submit(
            Api::Completions,
            prompt,
            "prompt",
            params,
            req.stream.unwrap_or(false),
            req.stream_options.as_ref(),
        )?;
        self.respond(Api::Completions, submitted).await
    }

    /// Validates the sampling fields shared by both APIs.
    fn params(
        &self,
        max_tokens: Option<u64>,
        max_param: &str,
        limit: usize,
        s: Sampling<'_>,
        logprobs: bool,
    ) -> Result<GenParams, HttpError> {
        let max_tokens = match max_tokens {
            None => limit,
            Some(0) => {
                return Err(HttpError::invalid(
                    format!("`{max_param}` must be at least 1"),
                    max_param,
                ))
            }
            Some(m) if m > limit as u64 => {
                return Err(HttpError::invalid(
                    format!("`{max_param}` is {m}, above this server's limit of {limit} tokens"),
                    max_param,
                ))
            }
            Some(m) => m as usize,
        };
        let temperature = s.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(HttpError::invalid(
                format!("`temperature` is {temperature}: it must be between 0 and 2"),
                "temperature",
            ));
        }
        let top_p = s.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(HttpError::invalid(
                format!("`top_p` is {top_p}: it must be above 0 and at most 1"),
                "top_p",
            ));
        }
        let n = s.n.unwrap_or(1);
        let most = MAX_N.min(self.config.max_batch);
        if n < 1 || n > most as u64 {
            return Err(HttpError::invalid(
                format!("`n` is {n}: it must be between 1 and {most}"),
                "n",
            ));
        }
        let stop = s.stop.map(Stop::to_vec).unwrap_or_default();
        if stop.len() > MAX_STOPS {
            return Err(HttpError::invalid(
                format!(
                    "`stop` has {} strings, at most {MAX_STOPS} are allowed",
                    stop.len()
                ),
                "stop",
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(HttpError::invalid(
                "`stop` strings must not be empty",
                "stop",
            ));
        }
        Ok(GenParams {
            max_tokens,
            temperature,
            top_p,
            seed: s.seed.map(|s| s as u64),
            stop,
            n: n as usize,
            logprobs,
        })
    }

    /// Checks the prompt's length and queues the request (429 when the
    /// queue is full).
    fn submit(
        &self,
        api: Api,
        prompt: Vec<u32>,
        prompt_param: &str,
        params: GenParams,
        stream: bool,
        stream_options: Option<&StreamOptions>,
    ) -> Result<Submitted, HttpError> {
        if prompt.is_empty() {
            return Err(HttpError::invalid(
                format!("`{prompt_param}` is empty: it has no tokens"),
                prompt_param,
            ));
        }
        let limit = self.config.max_prompt_tokens;
        if prompt.len() > limit {
            return Err(HttpError::invalid(
                format!(
                    "`{prompt_param}` has {} tokens, more than this server's prompt limit of {limit}",
                    prompt.len()
                ),
                prompt_param,
            )
            .code("context_length_exceeded"));
        }
        let created = unix_now();
        let count = self.counter.fetch_add(1, Ordering::SeqCst);
        let id = match api {
            Api::Chat => format!("chatcmpl-{created:x}{count:08x}"),
            Api::Completions => format!("cmpl-{created:x}{count:08x}"),
        };
        let (n, logprobs) = (params.n, params.logprobs);
        let (tx, rx) = unbounded_channel();
        let job = Job {
            id: id.clone(),
            prompt,
            params,
            events: tx,
        };
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                tracing::debug!("queue full: request refused");
                return Err(HttpError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    format!(
                        "the server is busy: {} requests are already waiting; retry later",
                        self.config.queue
                    ),
                )
                .code("rate_limit_exceeded"));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(HttpError::shutting_down());
            }
        }
        Ok(Submitted {
            id,
            created,
            n,
            logprobs,
            stream,
            include_usage: stream_options.is_some_and(|o| o.include_usage),
            events: rx,
        })
    }

    /// The response: a stream of server-sent events, or the whole answer
    /// once every choice ended.
    async fn respond(&self, api: Api, mut s: Submitted) -> Result<Response, HttpError> {
        let model = self.config.model_name.clone();
        if s.stream {
            let stream = EventStream::new(api, s, model);
            return Ok(Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response());
        }
        let mut texts = vec![String::new(); s.n];
        let mut tokens: Vec<Vec<TokenInfo>> = vec![Vec::new(); s.n];
        let mut reasons = vec![FinishReason::Length; s.n];
        let usage = loop {
            match s.events.recv().await {
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                }) => {
                    texts[choice].push_str(&text);
                    tokens[choice].extend(logprobs);
                }
                Some(Event::Finished { choice, reason }) => reasons[choice] = reason,
                Some(Event::Done { usage }) => break usage,
                Some(Event::Failed { status, error }) => {
                    return Err(HttpError {
                        status: StatusCode::from_u16(status)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        error,
                    })
                }
                None => return Err(HttpError::internal("the engine stopped")),
            }
        };
        let choices = texts.into_iter().zip(tokens).zip(reasons).enumerate();
        let json = match api {
            Api::Chat => serde_json::to_value(ChatCompletion {
                id: s.id,
                object: "chat.completion".into(),
                created: s.created,
                model,
                choices: choices
                    .map(|(i, ((text, tokens), reason))| ChatChoice {
                        index: i as u32,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: text,
                        },
                        logprobs: s.logprobs.then(|| chat_logprobs(&tokens)),
                        finish_reason: reason,
                    })
                    .collect(),
                usage,
            }),
            Api::Completions => serde_json::to_value(Completion {
                id: s.id,
                object: "text_completion".into(),
                created: s.created,
                model,
                choices: choices
                    .map(|(i, ((text, tokens), reason))| CompletionChoice {
                        text,
                        index: i as u32,
                        logprobs: s.logprobs.then(|| completion_logprobs(&tokens)),
                        finish_reason: Some(reason),
                    })
                    .collect(),
                usage: Some(usage),
            }),
        }
        .map_err(|e| HttpError::internal(e.to_string()))?;
        Ok(Json(json).into_response())
    }
}

/// The sampling fields of a request, before validation.
struct Sampling<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<&'a Stop>,
    n: Option<u64>,
}

/// A request body's top-level fields, read one by one so that an error
/// names the field at fault. Fields not read are ignored.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(body: Result<Bytes, BytesRejection>) -> Result<Self, HttpError> {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "the request body is larger than this server accepts",
                )
                .code("request_too_large")
            } else {
                HttpError::new(
                    rejection.status(),
                    "invalid_request_error",
                    format!("reading the request body: {}", rejection.body_text()),
                )
            }
        })?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request body must be a JSON object",
            )),
            Err(e) => Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body is not valid JSON: {e}"),
            )),
        }
    }

    /// Field `name`; `None` when absent or null.
    fn get<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, HttpError> {
        match self.0.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| HttpError::invalid(format!("invalid `{name}`: {e}"), name)),
        }
    }

    /// Field `name`, which must be present.
    fn required<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, HttpError> {
        self.get(name)?
            .ok_or_else(|| HttpError::invalid(format!("missing required field `{name}`"), name))
    }
}

/// The conversation of a chat request, checked.
fn chat_messages(messages: &[ChatMessage]) -> Result<Vec<Message>, HttpError> {
    if messages.is_empty() {
        return Err(HttpError::invalid(
            "`messages` must hold at least one message",
            "messages",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = m.content.text().ok_or_else(|| {
                HttpError::invalid(
                    format!("messages[{i}]: only text content parts are supported"),
                    "messages",
                )
            })?;
            match m.role.as_str() {
                "system" | "developer" => Ok(Message::system(content)),
                "user" => Ok(Message::user(content)),
                "assistant" => Ok(Message::assistant(content)),
                other => Err(HttpError::invalid(
                    format!(
                        "messages[{i}]: role `{other}` is not supported (system, developer, user \
                         or assistant)"
                    ),
                    "messages",
                )),
            }
        })
        .collect()
}

fn chat_logprobs(tokens: &[TokenInfo]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| TokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: Some(t.token.as_bytes().to_vec()),
                top_logprobs: Vec::new(),
            })
            .collect(),
    }
}

fn completion_logprobs(tokens: &[TokenInfo]) -> CompletionLogprobs {
    CompletionLogprobs {
        tokens: tokens.iter().map(|t| t.token.clone()).collect(),
        token_logprobs: tokens.iter().map(|t| t.logprob).collect(),
        top_logprobs: None,
        text_offset: tokens.iter().map(|t| t.offset as u64).collect(),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A request's engine events as server-sent events: `data: {chunk}` per
/// event, `data: [DONE]` at the end; a failure (shutdown grace over, engine
/// error) ends the stream with `data: {"error": {...}}` and no `[DONE]`.
/// Dropping it (the client went away) closes the engine's channel, and
/// the engine drops the request's rows at its next step.
struct EventStream {
    api: Api,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
    events: UnboundedReceiver<Event>,
    out: VecDeque<SseEvent>,
    done: bool,
}

impl EventStream {
    fn new(api: Api, s: Submitted, model: String) -> Self {
        let mut stream = Self {
            api,
            id: s.id,
            created: s.created,
            model,
            logprobs: s.logprobs,
            include_usage: s.include_usage,
            events: s.events,
            out: VecDeque::new(),
            done: false,
        };
        if api == Api::Chat {
            for choice in 0..s.n {
                let delta = ChatDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                };
                stream.chat_chunk(choice, delta, None, None);
            }
        }
        stream
    }

    fn push(&mut self, value: &impl serde::Serialize) {
        match serde_json::to_string(value) {
            Ok(json) => self.out.push_back(SseEvent::default().data(json)),
            Err(e) => tracing::error!("serialising a chunk: {e}"),
        }
    }

    fn chat_chunk(
        &mut self,
        choice: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<FinishReason>,
    ) {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChatChunkChoice {
                index: choice as u32,
                delta,
                logprobs,
                finish_reason,
            }],
            usage: None,
        };
        self.push(&chunk);
    }

    fn text_chunk(&mut self, choices: Vec<CompletionChoice>, usage: Option<Usage>) {
        let chunk = Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        self.push(&chunk);
    }

    /// Turns one engine event into the events to send.
    fn convert(&mut self, event: Option<Event>) {
        match (event, self.api) {
            (
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                }),
                Api::Chat,
            ) => {
                let delta = ChatDelta {
                    role: None,
                    content: Some(text),
                };
                let lp = self.logprobs.then(|| chat_logprobs(&logprobs));
                self.chat_chunk(choice, delta, lp, None);
            }
            (
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                }),
                Api::Completions,
            ) => {
                let choice = CompletionChoice {
                    text,
                    index: choice as u32,
                    logprobs: self.logprobs.then(|| completion_logprobs(&logprobs)),
                    finish_reason: None,
                };
                self.text_chunk(vec![choice], None);
            }
            (Some(Event::Finished { choice, reason }), Api::Chat) => {
                self.chat_chunk(choice, ChatDelta::default(), None, Some(reason));
            }
            (Some(Event::Finished { choice, reason }), Api::Completions) => {
                let choice = CompletionChoice {
                    text: String::new(),
                    index: choice as u32,
                    logprobs: None,
                    finish_reason: Some(reason),
                };
                self.text_chunk(vec![choice], None);
            }
            (Some(Event::Done { usage }), api) => {
                if self.include_usage {
                    match api {
                        Api::Chat => {
                            let chunk = ChatCompletionChunk {
                                id: self.id.clone(),
                                object: "chat.completion.chunk".into(),
                                created: self.created,
                                model: self.model.clone(),
                                choices: Vec::new(),
                                usage: Some(usage),
                            };
                            self.push(&chunk);
                        }
                        Api::Completions => self.text_chunk(Vec::new(), Some(usage)),
                    }
                }
                self.out.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
            (Some(Event::Failed { error, .. }), _) => {
                self.push(&ErrorResponse { error });
                self.done = true;
            }
            (None, _) => {
                let error = HttpError::internal("the engine stopped").error;
                self.push(&ErrorResponse { error });
                self.done = true;
            }
        }
    }
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.events.poll_recv(cx) {
                Poll::Ready(event) => this.convert(event),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
