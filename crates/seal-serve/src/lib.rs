//! # seal-serve
//!
//! An OpenAI-compatible HTTP server for a local seal-rs model (any family
//! `seal_model` loads, with or without a LoRA adapter), the library behind
//! `seal serve`. The protocol followed is OpenAI's API reference
//! (<https://platform.openai.com/docs/api-reference>): the Chat Completions,
//! (legacy) Completions and Models endpoints, their JSON bodies, their
//! server-sent event streams and their error format.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1/models` | the one served model |
//! | `POST /v1/chat/completions` | chat-templated generation, streaming or not |
//! | `POST /v1/completions` | generation from a raw prompt |
//! | `GET /health` | state and counters ([`protocol::Health`]) |
//!
//! Supported request fields: `model`, `messages` (text content, as a string
//! or text parts) or `prompt` (a string), `max_tokens` /
//! `max_completion_tokens`, `temperature` (0 is greedy), `top_p`, `seed`,
//! `stop` (up to four strings), `n` (1 to 8), `stream`,
//! `stream_options.include_usage` and `logprobs` (the chosen tokens'
//! log-probabilities; never alternatives). Other fields are ignored.
//! Errors are `{"error": {"message", "type", "param", "code"}}`: 400 for a
//! malformed body or a bad field (named in `param`), 404 for an unknown
//! model or path, 413 for a body above the limit, 429 when the queue is
//! full, 503 while shutting down.
//!
//! ## Continuous batching
//!
//! One engine thread owns the model and runs one decoding loop for every
//! client (see the `engine` module's source): requests wait in a bounded
//! queue, join the running batch whenever it has room (pre-filled together,
//! then merged into the batch's KV cache with
//! [`seal_model::KvCache::concat_rows`]), decode one token per step with
//! every other row, and leave it when they end or their client goes away.
//! A greedy answer is the one `seal_model::generate::generate` gives for
//! the same prompt, whatever else is being decoded at the same time.
//!
//! ## Shutdown
//!
//! [`ShutdownHandle::shutdown`] (or SIGTERM / Ctrl-C with
//! [`ServeConfig::handle_signals`]) stops accepting connections and answers
//! new requests with 503; requests in flight go on. After
//! [`ServeConfig::shutdown_grace`] the requests still running are failed:
//! a non-streaming request gets a 503 error, a stream ends with an
//! `data: {"error": ...}` event and no `data: [DONE]`.
//!
//! ## Example
//!
//! The protocol types build requests and read responses (a server is
//! started with [`Server::start`] and a loader that returns the model and
//! its tokenizer, e.g. from `seal_model::Pretrained::load`):
//!
//! ```
//! use seal_serve::protocol::{ChatCompletion, ChatCompletionRequest, ChatMessage, Stop};
//!
//! let mut request = ChatCompletionRequest::new("smollm2", vec![ChatMessage::user("Hi!")]);
//! request.temperature = Some(0.0);
//! request.max_tokens = Some(32);
//! request.stop = Some(Stop::One("\n\n".into()));
//! let body = serde_json::to_value(&request)?;
//! assert_eq!(body["messages"][0]["content"], "Hi!");
//! assert_eq!(body["temperature"], 0.0);
//!
//! let answer: ChatCompletion = serde_json::from_str(
//!     r#"{"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "smollm2",
//!         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
//!                      "logprobs": null, "finish_reason": "stop"}],
//!         "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}"#,
//! )?;
//! assert_eq!(answer.choices[0].message.content, "Hello!");
//! assert_eq!(answer.usage.total_tokens, 12);
//! # Ok::<(), serde_json::Error>(())
//! ```
#![warn(missing_docs)]

mod engine;
pub mod error;
mod http;
pub mod protocol;
mod text;

pub use error::{Result, ServeError};

use engine::{Engine, EngineConfig, Shared};
use seal_data::TextTokenizer;
use seal_model::CausalLm;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// How long the server waits for connections to close after the grace
/// period before it stops anyway.
const CLOSE_SLACK: Duration = Duration::from_secs(5);

/// Settings of a server. Build with [`ServeConfig::default`] and set the
/// fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Address to listen on. Default `127.0.0.1`.
    pub host: String,
    /// Port; 0 picks a free one ([`RunningServer::addr`] tells which).
    /// Default 8000.
    pub port: u16,
    /// The served model's id (`model` of requests and responses). Default
    /// `seal`.
    pub model_name: String,
    /// Rows (choices) decoded together at most. Default 16.
    pub max_batch: usize,
    /// Requests waiting for room in the batch at most; one more is
    /// refused with 429. Default 64.
    pub queue: usize,
    /// Largest `max_tokens` a request may ask for (and the default of chat
    /// requests). Default 2048.
    pub max_tokens_limit: usize,
    /// Longest prompt in tokens (after the chat template). Default 4096.
    pub max_prompt_tokens: usize,
    /// Largest request body in bytes; a larger one is refused with 413.
    /// Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long requests in flight may run on after shutdown began.
    /// Default 30 s.
    pub shutdown_grace: Duration,
    /// Shut down on SIGTERM and Ctrl-C (for a server process; leave off in
    /// tests and embedding programs). Default off.
    pub handle_signals: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            model_name: "seal".into(),
            max_batch: 16,
            queue: 64,
            max_tokens_limit: 2048,
            max_prompt_tokens: 4096,
            max_body_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(30),
            handle_signals: false,
        }
    }
}

impl ServeConfig {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("max_batch", self.max_batch),
            ("queue", self.queue),
            ("max_tokens_limit", self.max_tokens_limit),
            ("max_prompt_tokens", self.max_prompt_tokens),
            ("max_body_bytes", self.max_body_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ServeError::Config(format!("{name} must be at least 1")));
        }
        if self.model_name.is_empty() {
            return Err(ServeError::Config("model_name must not be empty".into()));
        }
        Ok(())
    }
}

/// Starts servers.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Loads the model on a new engine thread with `loader` (the model
    /// never leaves that thread, so it need not be `Send`), binds
    /// `host:port` and serves until shut down. Returns once the model is
    /// loaded and the socket bound; an error if either fails.
    ///
    /// The end-of-sequence tokens are the tokenizer's
    /// ([`TextTokenizer::eos_token_ids`]), the padding token its pad token
    /// (or first end token), and chat prompts go through its chat template.
    pub fn start<M, F>(config: ServeConfig, loader: F) -> Result<RunningServer>
    where
        M: CausalLm + 'static,
        F: FnOnce() -> Result<(M, TextTokenizer)> + Send + 'static,
    {
        config.validate()?;
        let (trigger, _) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let handle = ShutdownHandle {
            shared: Arc::clone(&shared),
            trigger: trigger.clone(),
        };
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(config.queue);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let engine_shared = Arc::clone(&shared);
        let max_batch = config.max_batch;
        let engine = std::thread::Builder::new()
            .name("seal-serve-engine".into())
            .spawn(move || {
                let (model, tokenizer) = match loader() {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let tokenizer = Arc::new(tokenizer);
                let _ = ready_tx.send(Ok(Arc::clone(&tokenizer)));
                Engine::new(
                    model,
                    tokenizer,
                    jobs_rx,
                    engine_shared,
                    EngineConfig { max_batch },
                )
                .run();
            })
            .map_err(|e| ServeError::Io {
                what: "starting the engine thread".into(),
                source: e,
            })?;
        let tokenizer = match ready_rx.recv() {
            Ok(Ok(tokenizer)) => tokenizer,
            Ok(Err(e)) => {
                let _ = engine.join();
                return Err(e);
            }
            Err(_) => {
                let _ = engine.join();
                return Err(ServeError::Internal(
                    "the engine thread panicked while loading the model".into(),
                ));
            }
        };
        match listen(config, tokenizer, jobs_tx, &handle) {
            Ok((addr, http)) => Ok(RunningServer {
                addr,
                handle,
                http: Some(http),
                engine: Some(engine),
            }),
            Err(e) => {
                // `listen` dropped the request sender: the engine stops.
                let _ = engine.join();
                Err(e)
            }
        }
    }
}

/// Binds the address and starts the HTTP thread; the bound address and
/// the thread.
fn listen(
    config: ServeConfig,
    tokenizer: Arc<TextTokenizer>,
    jobs: std::sync::mpsc::SyncSender<engine::Job>,
    handle: &ShutdownHandle,
) -> Result<(SocketAddr, JoinHandle<Result<()>>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("seal-serve-http")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io {
            what: "starting the HTTP runtime".into(),
            source: e,
        })?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((
            config.host.as_str(),
            config.port,
        )))
        .map_err(|e| ServeError::Io {
            what: format!("binding {}:{}", config.host, config.port),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Io {
        what: "reading the bound address".into(),
        source: e,
    })?;
    tracing::info!(
        %addr,
        model = %config.model_name,
        max_batch = config.max_batch,
        queue = config.queue,
        "serving"
    );
    let grace = config.shutdown_grace;
    let signals = config.handle_signals;
    let state = Arc::new(http::AppState {
        config,
        tokenizer,
        jobs,
        shared: Arc::clone(&handle.shared),
        created: http::unix_now(),
        counter: Default::default(),
    });
    let router = http::router(state);
    let handle = handle.clone();
    let http = std::thread::Builder::new()
        .name("seal-serve-http".into())
        .spawn(move || runtime.block_on(serve(listener, router, handle, grace, signals)))
        .map_err(|e| ServeError::Io {
            what: "starting the HTTP thread".into(),
            source: e,
        })?;
    Ok((addr, http))
}

/// Serves until shutdown: stops accepting, lets requests finish, fails
/// what is left after `grace`, and gives up on open connections
/// [`CLOSE_SLACK`] later.
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    handle: ShutdownHandle,
    grace: Duration,
    signals: bool,
) -> Result<()> {
    if signals {
        let handle = handle.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            handle.shutdown();
        });
    }
    let mut begun = handle.trigger.subscribe();
    let mut begun2 = handle.trigger.subscribe();
    let graceful = async move {
        let _ = begun.wait_for(|&b| b).await;
        tracing::info!("shutting down: refusing new requests, finishing those in flight");
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(graceful);
    let shared = Arc::clone(&handle.shared);
    let deadline = async move {
        let _ = begun2.wait_for(|&b| b).await;
        tokio::time::sleep(grace).await;
        if !shared.abort.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "shutdown grace period of {:.1} s over: failing the requests left",
                grace.as_secs_f64()
            );
        }
        tokio::time::sleep(CLOSE_SLACK).await;
    };
    let result = tokio::select! {
        r = server.into_future() => r.map_err(|e| ServeError::Io {
            what: "serving".into(),
            source: e,
        }),
        () = deadline => {
            tracing::warn!("connections still open after the grace period: closing them");
            Ok(())
        }
    };
    tracing::info!("stopped serving");
    result
}

/// SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Starts a running server's graceful shutdown; cheap to clone and usable
/// from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    trigger: watch::Sender<bool>,
}

impl ShutdownHandle {
    /// Stops accepting connections and answers new requests with 503;
    /// requests in flight finish (or fail when the grace period is over).
    /// Returns at once; [`RunningServer::wait`] waits for the end.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.trigger.send_replace(true);
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }
}

/// A server started by [`Server::start`]. Dropping it shuts the server
/// down at once (no grace period) and waits for its threads.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    handle: ShutdownHandle,
    http: Option<JoinHandle<Result<()>>>,
    engine: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address (with the port picked when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that starts the graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Blocks until the server stopped (after a shutdown through a handle
    /// or a signal): connections closed, engine thread ended.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Starts the graceful shutdown and waits for it to end.
    pub fn shutdown(self) -> Result<()> {
        self.handle.shutdown();
        self.wait()
    }

    fn join(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(http) = self.http.take() {
            result = http
                .join()
                .unwrap_or_else(|_| Err(ServeError::Internal("the HTTP thread panicked".into())));
        }
        if let Some(engine) = self.engine.take() {
            if engine.join().is_err() && result.is_ok() {
                result = Err(ServeError::Internal("the engine thread panicked".into()));
            }
        }
        tracing::info!("server stopped");
        result
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.http.is_some() || self.engine.is_some() {
            self.handle.shared.abort.store(true, Ordering::SeqCst);
            self.handle.shutdown();
            let _ = self.join();
        }
    }
}
