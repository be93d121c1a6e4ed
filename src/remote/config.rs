//! Where the server is and how to talk to it: [`RemoteConfig`] and the server's dialect,
//! [`ServerKind`].

use std::time::Duration;

/// Where the server is and how to talk to it.
///
/// ```
/// use bevy_llm_dialogue::remote::{RemoteConfig, ServerKind};
/// let vllm = RemoteConfig::new("http://10.0.0.5:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
///     .with_kind(ServerKind::Vllm)
///     .with_api_key_env("VLLM_API_KEY");
/// assert_eq!(vllm.max_in_flight, 16);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteConfig {
    /// The API's base URL, up to and including `/v1`: `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// The model name sent with every request (vLLM and hosted APIs need the served name;
    /// llama.cpp's server answers with its one model whatever the name).
    pub model: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer`. Read
    /// when the backend starts, never stored in assets or saves. `None`: no key.
    pub api_key_env: Option<String>,
    /// Which request fields the server takes (structured output differs between servers).
    pub kind: ServerKind,
    /// Requests sent at once; the rest wait in priority order. Servers batch concurrent
    /// requests, so this is not the local worker's one batch.
    pub max_in_flight: usize,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// Longest wait for the first text of an answer (the server's queue and the prompt).
    pub response_timeout: Duration,
    /// Longest wait between two parts of an answer once its text has started (a stalled
    /// server). Only text counts as a part: keep-alive comments and empty chunks do not.
    pub stall_timeout: Duration,
    /// Longest a whole line may take, from sending the request to the stream's end, busy
    /// retries and their waits included: a server that keeps streaming slowly is cut off
    /// here. It also ends the request's own HTTP exchange (no thread outlives it).
    pub line_timeout: Duration,
    /// How many times a request the server refuses as busy (429, 503) is sent again.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one. A `Retry-After`
    /// header (in seconds) is honoured up to eight times this. No wait is over a minute,
    /// whatever the header or this say.
    pub retry_delay: Duration,
}

impl RemoteConfig {
    /// A llama.cpp-style server at `base_url` serving `model`, no API key, 16 requests at
    /// once, 5 s to connect, 60 s to start answering, 30 s between parts of a stream, 180 s
    /// for a whole line, 3 retries from 0.5 s.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            kind: ServerKind::default(),
            max_in_flight: 16,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            line_timeout: Duration::from_secs(180),
            retries: 3,
            retry_delay: Duration::from_millis(500),
        }
    }

    /// Sends the key held by the environment variable `var`.
    pub fn with_api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// Talks to a server of this kind.
    pub fn with_kind(mut self, kind: ServerKind) -> Self {
        self.kind = kind;
        self
    }
}

/// The server's dialect of the chat completions API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerKind {
    /// llama.cpp's `llama-server` and llama-cpp-python's server: structured output as
    /// `response_format: {"type": "json_object", "schema": ...}`; `top_k`, `min_p` and
    /// `repeat_penalty` pass through.
    #[default]
    LlamaCpp,
    /// vLLM and SGLang: `response_format: {"type": "json_schema", ...}`; `top_k`, `min_p` and
    /// `repetition_penalty` pass through.
    Vllm,
    /// OpenAI's API and servers that take only its fields: `json_schema` with `strict`, no
    /// `top_k`/`min_p`/repeat penalty. Its strict mode wants an object at the top of a
    /// schema, so other schemas (an action's `anyOf`, a choice list's array) are sent inside
    /// `{"value": ...}` and taken out of the answer.
    OpenAi,
    /// A server that cannot constrain output: free-text lines only; scenes' choices and
    /// actions fail with [`RemoteError::Unconstrained`] rather than come back unchecked.
    ///
    /// [`RemoteError::Unconstrained`]: super::RemoteError::Unconstrained
    TextOnly,
}
