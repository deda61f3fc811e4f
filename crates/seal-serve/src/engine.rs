//! The engine: one thread that owns the model and runs a single decoding
//! loop for every client (continuous batching).
//!
//! Requests wait in a bounded queue. Whenever the running batch has room
//! (`max_batch` rows; a request with `n` choices takes `n` rows), the
//! engine takes the next requests, pre-fills their prompts together
//! (left-padded, one forward pass into a fresh KV cache, each prompt once,
//! its rows copied `n` times) and merges them into the running batch with
//! [`KvCache::concat_rows`]. Each step then runs one forward pass over the
//! last token of every row and picks each row's next token on the CPU
//! (greedy, or temperature and nucleus sampling with the row's own seeded
//! generator, exactly as `seal_model::generate::generate` does). Rows end
//! at an end-of-sequence token, their `max_tokens` or a stop string, or
//! when their client goes away; they leave the batch and the cache
//! ([`KvCache::select_rows`], then [`KvCache::trim_left`] drops the
//! padding nobody needs any more).

use crate::protocol::{ApiError, FinishReason, Usage};
use crate::text::TextTracker;
use seal_data::rng::SplitMix64;
use seal_data::TextTokenizer;
use seal_model::{CausalLm, KvCache};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

/// How long the idle engine waits for a request before looking at the
/// shutdown flags again.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Validated generation settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenParams {
    /// Most new tokens per choice (≥ 1).
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Seed of choice 0 (choice i uses seed + i); the clock when `None`.
    pub seed: Option<u64>,
    /// Non-empty stop strings.
    pub stop: Vec<String>,
    /// Number of choices.
    pub n: usize,
    /// Whether to report the chosen tokens' log-probabilities.
    pub logprobs: bool,
}

/// One request handed to the engine.
pub(crate) struct Job {
    /// A short id for the logs (never the request's content).
    pub id: String,
    /// The prompt's tokens (non-empty, within the prompt limit).
    pub prompt: Vec<u32>,
    /// Its settings.
    pub params: GenParams,
    /// Where the engine reports; closed when the client went away.
    pub events: UnboundedSender<Event>,
}

/// One chosen token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenInfo {
    /// The token decoded alone (special tokens kept).
    pub token: String,
    /// log softmax of the raw logits at the token.
    pub logprob: f64,
    /// Character offset of the token in the choice's text.
    pub offset: usize,
}

/// What the engine tells a request's handler.
#[derive(Debug)]
pub(crate) enum Event {
    /// New text of a choice, with the log-probabilities (when asked for)
    /// of the tokens generated since the last delta.
    Delta {
        choice: usize,
        text: String,
        logprobs: Vec<TokenInfo>,
    },
    /// A choice ended (after its last delta).
    Finished { choice: usize, reason: FinishReason },
    /// Every choice ended.
    Done { usage: Usage },
    /// The request failed (shutdown grace over, or an engine error).
    Failed { status: u16, error: ApiError },
}

/// Counters and flags shared by the engine, the HTTP handlers and the
/// shutdown handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Shutdown began: new requests are refused.
    pub shutting_down: AtomicBool,
    /// The grace period is over: the engine fails what is left.
    pub abort: AtomicBool,
    /// Rows in the running batch.
    pub active_rows: AtomicU64,
    /// Requests accepted and not yet admitted into the batch.
    pub queued: AtomicU64,
    /// Requests answered in full.
    pub served: AtomicU64,
    /// Rows dropped because their client went away.
    pub cancelled: AtomicU64,
    /// Rows cut at the end of the shutdown grace period.
    pub aborted: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// The most rows the batch held at once.
    pub peak_rows: AtomicU64,
}

/// One choice being generated.
struct Row {
    /// Key of its request in [`Engine::requests`].
    request: u64,
    choice: usize,
    rng: SplitMix64,
    tokens: Vec<u32>,
    /// The token to feed at the next step.
    next_input: i64,
    text: TextTracker,
    /// Characters of the text before the latest token (for offsets).
    chars: usize,
    /// Log-probabilities not sent yet.
    pending: Vec<TokenInfo>,
    finished: Option<FinishReason>,
}

/// A request being served.
struct Active {
    id: String,
    params: GenParams,
    events: UnboundedSender<Event>,
    prompt_tokens: usize,
    completion_tokens: usize,
    rows_left: usize,
    reasons: Vec<Option<FinishReason>>,
    started: Instant,
}

/// The engine's settings.
pub(crate) struct EngineConfig {
    pub max_batch: usize,
}

/// The decoding loop and its state.
pub(crate) struct Engine<M> {
    model: M,
    tokenizer: Arc<TextTokenizer>,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    max_batch: usize,
    eos: Vec<u32>,
    pad: i64,
    cache: KvCache,
    rows: Vec<Row>,
    requests: HashMap<u64, Active>,
    next_request: u64,
    /// A request taken from the queue that does not fit yet.
    waiting: Option<Job>,
    /// Every sender is gone: no request will come any more.
    disconnected: bool,
}

impl<M: CausalLm> Engine<M> {
    /// An engine over `model` that takes its requests from `jobs`.
    pub fn new(
        model: M,
        tokenizer: Arc<TextTokenizer>,
        jobs: Receiver<Job>,
        shared: Arc<Shared>,
        config: EngineConfig,
    ) -> Self {
        let eos = tokenizer.eos_token_ids().to_vec();
        let pad = tokenizer
            .pad_token_id()
            .or_else(|| eos.first().copied())
            .unwrap_or(0);
        let cache = model.new_cache();
        Self {
            model,
            tokenizer,
            jobs,
            shared,
            max_batch: config.max_batch,
            eos,
            pad: i64::from(pad),
            cache,
            rows: Vec::new(),
            requests: HashMap::new(),
            next_request: 0,
            waiting: None,
            disconnected: false,
        }
    }

    /// Runs until every sender of requests is gone and the batch is empty.
    pub fn run(mut self) {
        let _guard = tch::no_grad_guard();
        loop {
            if self.shared.abort.load(Ordering::SeqCst) {
                self.abort_all();
            }
            self.drop_cancelled();
            let admitted = self.admit();
            if self.rows.is_empty() && admitted.is_empty() {
                if self.disconnected {
                    break;
                }
                match self.jobs.recv_timeout(IDLE_POLL) {
                    Ok(job) => self.waiting = Some(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.disconnected = true,
                }
                continue;
            }
            let step =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(admitted)));
            let error = match step {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
            };
            tracing::error!("decoding step failed: {error}");
            self.fail_all(500, server_error(format!("generation failed: {error}")));
        }
        tracing::info!("engine stopped");
    }

    /// Takes queued requests while the batch has room for all their rows,
    /// in arrival order; requests whose client left while queued are
    /// dropped.
    fn admit(&mut self) -> Vec<Job> {
        let mut free = self.max_batch.saturating_sub(self.rows.len());
        let mut admitted = Vec::new();
        while free > 0 {
            let job = match self.waiting.take() {
                Some(job) => job,
                None => match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.disconnected = true;
                        break;
                    }
                },
            };
            if job.events.is_closed() {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                self.shared
                    .cancelled
                    .fetch_add(job.params.n as u64, Ordering::SeqCst);
                tracing::info!(request = %job.id, "client left while queued");
                continue;
            }
            if job.params.n > free {
                self.waiting = Some(job);
                break;
            }
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            free -= job.params.n;
            admitted.push(job);
        }
        admitted
    }

    /// One step: pre-fill the admitted requests, decode one token for the
    /// running rows, merge, pick every row's next token, retire the
    /// finished rows.
    fn step(&mut self, admitted: Vec<Job>) -> Result<(), String> {
        let device = self.model.device();
        let mut logits = Vec::new();
        if !self.rows.is_empty() {
            let ids: Vec<i64> = self.rows.iter().map(|r| r.next_input).collect();
            let ids = Tensor::from_slice(&ids)
                .view([ids.len() as i64, 1])
                .to_device(device);
            logits.push(
                self.model
                    .last_logits(&ids, None, Some(&mut self.cache))
                    .map_err(|e| e.to_string())?,
            );
        }
        if !admitted.is_empty() {
            logits.push(self.prefill(admitted)?);
        }
        let logits = Tensor::cat(&logits, 0)
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let logprobs = self
            .rows
            .iter()
            .any(|r| self.requests[&r.request].params.logprobs)
            .then(|| logits.log_softmax(-1, Kind::Float));
        for i in 0..self.rows.len() {
            let row_logits = logits.get(i as i64);
            let row = &mut self.rows[i];
            let params = &self.requests[&row.request].params;
            let token = choose(&row_logits, params.temperature, params.top_p, &mut row.rng)
                .map_err(|e| e.to_string())?;
            let logprob = logprobs
                .as_ref()
                .filter(|_| params.logprobs)
                .map(|lp| lp.double_value(&[i as i64, token]));
            self.advance(i, token, logprob)?;
        }
        self.retire_finished();
        Ok(())
    }

    /// Pre-fills the admitted requests' prompts (left-padded, one forward
    /// pass), merges their rows into the batch and returns their last
    /// logits, one row per choice.
    fn prefill(&mut self, admitted: Vec<Job>) -> Result<Tensor, String> {
        let device = self.model.device();
        let b = admitted.len();
        let l = admitted.iter().map(|j| j.prompt.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad; b * l];
        let mut mask = vec![0i64; b * l];
        let mut expand = Vec::new();
        for (i, job) in admitted.iter().enumerate() {
            let off = l - job.prompt.len();
            for (t, &tok) in job.prompt.iter().enumerate() {
                ids[i * l + off + t] = i64::from(tok);
                mask[i * l + off + t] = 1;
            }
            expand.extend(std::iter::repeat_n(i as i64, job.params.n));
        }
        let shape = [b as i64, l as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let mut cache = self.model.new_cache();
        let logits = self
            .model
            .last_logits(&ids, Some(&mask), Some(&mut cache))
            .map_err(|e| e.to_string())?;
        let expand = Tensor::from_slice(&expand).to_device(device);
        if expand.size()[0] != b as i64 {
            cache.select_rows(&expand);
        }
        let logits = logits.index_select(0, &expand);
        let old = std::mem::take(&mut self.cache);
        self.cache = KvCache::concat_rows(old, cache).map_err(|e| e.to_string())?;
        let clock = clock_seed();
        for job in admitted {
            let key = self.next_request;
            self.next_request += 1;
            let n = job.params.n;
            for choice in 0..n {
                let seed = job.params.seed.unwrap_or(clock).wrapping_add(choice as u64);
                self.rows.push(Row {
                    request: key,
                    choice,
                    rng: SplitMix64::new(seed),
                    tokens: Vec::new(),
                    next_input: 0,
                    text: TextTracker::new(job.params.stop.clone()),
                    chars: 0,
                    pending: Vec::new(),
                    finished: None,
                });
            }
            tracing::debug!(request = %job.id, prompt_tokens = job.prompt.len(), n, "admitted");
            self.requests.insert(
                key,
                Active {
                    id: job.id,
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: 0,
                    rows_left: n,
                    reasons: vec![None; n],
                    params: job.params,
                    events: job.events,
                    started: Instant::now(),
                },
            );
        }
        let rows = self.rows.len() as u64;
        self.shared.active_rows.store(rows, Ordering::SeqCst);
        self.shared.peak_rows.fetch_max(rows, Ordering::SeqCst);
        Ok(logits)
    }

    /// Appends `token` to row `i` (or ends it at an end-of-sequence
    /// token), sends the text that became safe to send, and on the row's
    /// last token sends the rest and ends the choice (and the request, with
    /// its last choice).
    fn advance(&mut self, i: usize, token: i64, logprob: Option<f64>) -> Result<(), String> {
        let row = &mut self.rows[i];
        let active = self
            .requests
            .get_mut(&row.request)
            .ok_or("a row without its request")?;
        let token = token as u32;
        let mut delta = String::new();
        if self.eos.contains(&token) {
            row.finished = Some(FinishReason::Stop);
        } else {
            row.tokens.push(token);
            row.next_input = i64::from(token);
            active.completion_tokens += 1;
            let text = self
                .tokenizer
                .decode(&row.tokens, true)
                .map_err(|e| e.to_string())?;
            if let Some(logprob) = logprob {
                let piece = self
                    .tokenizer
                    .decode(&[token], false)
                    .map_err(|e| e.to_string())?;
                row.pending.push(TokenInfo {
                    token: piece,
                    logprob,
                    offset: row.chars,
                });
            }
            row.chars = text.chars().count();
            let update = row.text.update(text);
            delta = update.delta;
            if update.stopped {
                row.finished = Some(FinishReason::Stop);
            } else if row.tokens.len() >= active.params.max_tokens {
                row.finished = Some(FinishReason::Length);
            }
        }
        let Some(mut reason) = row.finished else {
            if !delta.is_empty() {
                let _ = active.events.send(Event::Delta {
                    choice: row.choice,
                    text: delta,
                    logprobs: std::mem::take(&mut row.pending),
                });
            }
            return Ok(());
        };
        let end = row.text.finish();
        delta.push_str(&end.delta);
        if end.stopped {
            reason = FinishReason::Stop;
        }
        // The row leaves the batch at the end of the step; counted out now,
        // before the client hears of it, so that /health agrees.
        self.shared.active_rows.fetch_sub(1, Ordering::SeqCst);
        if !delta.is_empty() || !row.pending.is_empty() {
            let _ = active.events.send(Event::Delta {
                choice: row.choice,
                text: delta,
                logprobs: std::mem::take(&mut row.pending),
            });
        }
        let _ = active.events.send(Event::Finished {
            choice: row.choice,
            reason,
        });
        active.reasons[row.choice] = Some(reason);
        active.rows_left -= 1;
        if active.rows_left == 0 {
            // Counted before the answer goes out: a client that asks
            // /health right after it sees it.
            self.shared.served.fetch_add(1, Ordering::SeqCst);
            let _ = active.events.send(Event::Done {
                usage: Usage::new(active.prompt_tokens as u64, active.completion_tokens as u64),
            });
            log_summary(active, "served");
            let key = row.request;
            self.requests.remove(&key);
        }
        Ok(())
    }

    /// Removes the finished rows from the batch and the cache.
    fn retire_finished(&mut self) {
        self.retain_rows(|row| row.finished.is_none());
    }

    /// Keeps the rows `keep` accepts, in the batch and the cache.
    fn retain_rows(&mut self, keep: impl Fn(&Row) -> bool) {
        let kept: Vec<i64> = (0..self.rows.len())
            .filter(|&i| keep(&self.rows[i]))
            .map(|i| i as i64)
            .collect();
        if kept.len() == self.rows.len() {
            return;
        }
        if kept.is_empty() {
            self.rows.clear();
            self.cache = self.model.new_cache();
        } else {
            let index = Tensor::from_slice(&kept).to_device(self.model.device());
            self.cache.select_rows(&index);
            if let Err(e) = self.cache.trim_left() {
                tracing::warn!("trimming the KV cache: {e}");
            }
            let mut i = 0;
            self.rows.retain(|_| {
                let k = kept.binary_search(&i).is_ok();
                i += 1;
                k
            });
        }
        self.shared
            .active_rows
            .store(self.rows.len() as u64, Ordering::SeqCst);
    }

    /// Drops the rows (and requests) whose client went away.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&k, _)| k)
            .collect();
        if gone.is_empty() {
            return;
        }
        let before = self.rows.len();
        self.retain_rows(|row| !gone.contains(&row.request));
        self.shared
            .cancelled
            .fetch_add((before - self.rows.len()) as u64, Ordering::SeqCst);
        for key in gone {
            if let Some(active) = self.requests.remove(&key) {
                log_summary(&active, "cancelled (client left)");
            }
        }
    }

    /// Fails every running and queued request (the shutdown grace period
    /// is over).
    fn abort_all(&mut self) {
        let rows = self.rows.len() as u64;
        let error = || ApiError {
            message: "the server shut down before the request finished".into(),
            kind: "server_error".into(),
            param: None,
            code: Some("server_shutting_down".into()),
        };
        if rows > 0 || !self.requests.is_empty() {
            self.shared.aborted.fetch_add(rows, Ordering::SeqCst);
            self.fail_all(503, error());
        }
        let mut queued = Vec::new();
        queued.extend(self.waiting.take());
        queued.extend(self.jobs.try_iter());
        for job in queued {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = job.events.send(Event::Failed {
                status: 503,
                error: error(),
            });
        }
    }

    /// Fails every running request with `error` and empties the batch.
    fn fail_all(&mut self, status: u16, error: ApiError) {
        for (_, active) in self.requests.drain() {
            let _ = active.events.send(Event::Failed {
                status,
                error: error.clone(),
            });
            log_summary(&active, "failed");
        }
        self.rows.clear();
        self.cache = self.model.new_cache();
        self.shared.active_rows.store(0, Ordering::SeqCst);
    }
}

/// A server error object.
pub(crate) fn server_error(message: String) -> ApiError {
    ApiError {
        message,
        kind: "server_error".into(),
        param: None,
        code: None,
    }
}

/// Logs one request's summary (ids and counts, never its content).
fn log_summary(active: &Active, outcome: &str) {
    let reasons: Vec<&str> = active
        .reasons
        .iter()
        .map(|r| match r {
            Some(FinishReason::Stop) => "stop",
            Some(FinishReason::Length) => "length",
            None => "-",
        })
        .collect();
    tracing::info!(
        request = %active.id,
        prompt_tokens = active.prompt_tokens,
        completion_tokens = active.completion_tokens,
        n = active.params.n,
        finish = %reasons.join(","),
        seconds = format_args!("{:.3}", active.started.elapsed().as_secs_f64()),
        "{outcome}"
    );
}

/// A seed from the clock, for requests without one.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Picks a row's next token from its logits `[V]` (f32, CPU): argmax when
/// `temperature` is 0, else a sample from softmax(logits / temperature)
/// restricted to the nucleus of mass `top_p`, with the same arithmetic as
/// `seal_model::generate::generate` (so a seeded one-choice request samples
/// what `generate` samples with that seed).
pub(crate) fn choose(
    logits: &Tensor,
    temperature: f64,
    top_p: f64,
    rng: &mut SplitMix64,
) -> Result<i64, tch::TchError> {
    if temperature == 0.0 {
        return logits.f_argmax(-1, false)?.f_int64_value(&[]);
    }
    let probs = Vec::<f64>::try_from(
        (logits.to_kind(Kind::Double) / temperature).softmax(-1, Kind::Double),
    )?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    // The nucleus: the smallest prefix whose mass reaches top_p.
    let mut mass = 0.0;
    let mut end = 0;
    while end < order.len() {
        mass += probs[order[end]];
        end += 1;
        if mass >= top_p {
            break;
        }
    }
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    let mut acc = 0.0;
    let mut pick = order[end.max(1) - 1];
    for &i in &order[..end] {
        acc += probs[i];
        if u < acc {
            pick = i;
            break;
        }
    }
    Ok(pick as i64)
}
