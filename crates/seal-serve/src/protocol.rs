//! The OpenAI wire format the server speaks: requests, responses, stream
//! chunks and errors of the Chat Completions, Completions and Models APIs
//! (<https://platform.openai.com/docs/api-reference>), as serde types.
//!
//! Requests and responses are `#[non_exhaustive]`: build a request with its
//! `new` function and set the optional fields, and read responses by field.
//! Fields this server does not implement are left out; requests that carry
//! them (clients send many) are still accepted, the fields ignored.

use serde::{Deserialize, Serialize};

/// Who speaks a chat turn: `system` (OpenAI's `developer` is read as
/// `system`), `user` or `assistant`.
pub type Role = String;

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: Role,
    /// The text, or text parts.
    pub content: MessageContent,
}

impl ChatMessage {
    /// A message of `role` with plain text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: MessageContent::Text(content.into()),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A message's content: a string, or an array of content parts of which
/// this server reads the `text` ones (any other part is an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts, e.g. `[{"type": "text", "text": "Hi"}]`.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text of a string, or of the text parts joined together; `None`
    /// if a part is not text.
    pub fn text(&self) -> Option<String> {
        match self {
            MessageContent::Text(t) => Some(t.clone()),
            MessageContent::Parts(parts) => parts
                .iter()
                .map(|p| (p.kind == "text").then_some(p.text.as_deref()).flatten())
                .collect::<Option<Vec<&str>>>()
                .map(|t| t.concat()),
        }
    }
}

/// One part of an array content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContentPart {
    /// The part's `type`; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ContentPart {
    /// A `text` part.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".into(),
            text: Some(text.into()),
        }
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Send a last chunk with the request's token usage (and no choices)
    /// before `data: [DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

impl StreamOptions {
    /// Options with `include_usage` set as given.
    pub fn with_usage(include_usage: bool) -> Self {
        Self { include_usage }
    }
}

/// A `POST /v1/chat/completions` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatCompletionRequest {
    /// The served model's id (see `GET /v1/models`).
    pub model: String,
    /// The conversation; the model's chat template renders it with the
    /// generation prompt.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate per choice (deprecated by OpenAI in favour
    /// of `max_completion_tokens`, which wins when both are given). Default:
    /// the server's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most tokens to generate per choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature in [0, 2]; 0 is greedy decoding. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1]. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed: choice `i` samples with seed `seed + i`; without a
    /// seed, from the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Up to four strings that end a choice; the text is cut before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices, 1 to 8. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Answer with server-sent `chat.completion.chunk` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Return the log-probability of each chosen token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
}

impl ChatCompletionRequest {
    /// A request for `model` with `messages` and every option at its
    /// default.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            ..Self::default()
        }
    }
}

/// A `POST /v1/completions` request (the legacy text completion API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CompletionRequest {
    /// The served model's id.
    pub model: String,
    /// The raw prompt, tokenised without the chat template.
    pub prompt: String,
    /// Most tokens to generate per choice. Default 16, as OpenAI's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling temperature in [0, 2]; 0 is greedy decoding. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1]. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed (choice `i` uses `seed + i`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Up to four stop strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices, 1 to 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Answer with server-sent `text_completion` chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Return the chosen tokens' log-probabilities (0 to 5; this server
    /// never returns alternatives, so `top_logprobs` is `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u64>,
}

impl CompletionRequest {
    /// A request for `model` with `prompt` and every option at its default.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            prompt: prompt.into(),
            ..Self::default()
        }
    }
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The `max_tokens` budget.
    Length,
}

/// Token counts of a request: the prompt once, the completion summed over
/// choices (end-of-sequence tokens not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Tokens of the (templated) prompt.
    pub prompt_tokens: u64,
    /// Generated tokens over all choices.
    pub completion_tokens: u64,
    /// The sum of both.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage of `prompt` and `completion` tokens.
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// An alternative token at a position (never filled by this server:
/// `top_logprobs` is always empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// The UTF-8 bytes of `token`.
    pub bytes: Option<Vec<u8>>,
}

/// The log-probability of one chosen token (chat format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenLogprob {
    /// The token's text (U+FFFD where it holds part of a UTF-8 character).
    pub token: String,
    /// log softmax of the model's raw logits at the chosen token (before
    /// temperature and nucleus), ≤ 0.
    pub logprob: f64,
    /// The UTF-8 bytes of `token`.
    pub bytes: Option<Vec<u8>>,
    /// Alternatives: always empty here.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion or chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatLogprobs {
    /// One entry per generated token, in order (end-of-sequence excluded;
    /// tokens of a cut stop string included).
    pub content: Vec<TokenLogprob>,
}

/// The assistant's message of a chat choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatChoice {
    /// The choice's index (0 to n - 1).
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// The chosen tokens' log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// A `chat.completion` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix time of the request, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The choices, by index.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// `choices[].delta` of a chat stream chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatDelta {
    /// `assistant`, in the first chunk of each choice only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text (empty in the first chunk; absent in the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatChunkChoice {
    /// The choice's index.
    pub index: u32,
    /// What is new.
    pub delta: ChatDelta,
    /// Log-probabilities of the tokens behind `delta.content`, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk only.
    pub finish_reason: Option<FinishReason>,
}

/// A `chat.completion.chunk` stream event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatCompletionChunk {
    /// The same id in every chunk of a stream.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix time of the request, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// One choice (empty in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Only in the last chunk, with `stream_options.include_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `choices[].logprobs` of a text completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CompletionLogprobs {
    /// The chosen tokens' texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities (log softmax of the raw logits), ≤ 0.
    pub token_logprobs: Vec<f64>,
    /// Alternatives: always `null` here.
    pub top_logprobs: Option<Vec<serde_json::Value>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<u64>,
}

/// One choice of a text completion (or of a stream chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CompletionChoice {
    /// The generated text (in a chunk: the new text).
    pub text: String,
    /// The choice's index.
    pub index: u32,
    /// The tokens' log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// Why it ended (`null` in a chunk that does not end the choice).
    pub finish_reason: Option<FinishReason>,
}

/// A `text_completion` response, or one chunk of a completion stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Completion {
    /// `cmpl-...`.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix time of the request, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The choices (a chunk: one; the usage chunk: none).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (in a stream: the last chunk only, when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelCard {
    /// The served model's id.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time the server started, in seconds.
    pub created: u64,
    /// Always `seal-rs`.
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// The body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ApiError,
}

/// An OpenAI error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApiError {
    /// A readable message.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_exceeded`, `server_error`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`,
    /// `context_length_exceeded`...), if any.
    pub code: Option<String>,
}

/// `GET /health`: the server's state and counters (not an OpenAI API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// `ok`, or `shutting_down` once shutdown began.
    pub status: String,
    /// The served model's id.
    pub model: String,
    /// Rows (choices) in the running batch.
    pub active_rows: u64,
    /// Requests accepted and waiting for room in the batch.
    pub queued: u64,
    /// Requests answered in full.
    pub served: u64,
    /// Rows dropped because their client went away.
    pub cancelled: u64,
    /// Rows cut when the shutdown grace period ran out.
    pub aborted: u64,
    /// Requests refused with 429 (queue full).
    pub rejected: u64,
    /// The most rows the batch has held at once.
    pub peak_rows: u64,
    /// The batch's capacity in rows.
    pub max_batch: u64,
}
