//! Generation on an inference server over the OpenAI-compatible chat completions API
//! (llama.cpp's server, vLLM, SGLang, Ollama, TGI, hosted APIs), for games whose model does not
//! run in the game process.
//!
//! Bevy-free, like the engine: [`RemoteClient::chat`] blocks its thread and streams the line
//! through a callback, with the engine's stop strings, sentence rules and [`Generation`]
//! result, so the plugin treats a server's line as it treats a local one. The server applies
//! its own chat template to the messages.
//!
//! The HTTP client is `ureq`, blocking, on the caller's thread: the plugin already runs
//! generation off the main thread, and an async runtime would be one more thread pool in
//! every game for a handful of concurrent streams.
//!
//! ```no_run
//! use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, GenerateParams};
//! use bevy_llm_dialogue::remote::{ChatRequest, RemoteClient, RemoteConfig};
//!
//! let client = RemoteClient::new(RemoteConfig::new("http://127.0.0.1:8080/v1", "smollm2"))?;
//! let messages = [ChatMessage::user("Hello!")];
//! let params = GenerateParams::default();
//! let mut shown = String::new();
//! let line = client.chat(
//!     &ChatRequest { messages: &messages, params: &params, schema: None, logprobs: false },
//!     &CancelToken::new(),
//!     |delta| shown.push_str(delta),
//! )?;
//! assert_eq!(line.text, shown);
//! # Ok::<(), bevy_llm_dialogue::remote::RemoteError>(())
//! ```

mod body;
mod events;

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::stream::TextStream;
use crate::engine::{
    CancelToken, ChatMessage, GenerateParams, Generation, GenerationStats, ModelInfo, StopReason,
};
use events::Event;

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
    /// server).
    pub stall_timeout: Duration,
    /// How many times a request the server refuses as busy (429, 503) is sent again.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one. A `Retry-After`
    /// header (in seconds) is honoured up to eight times this.
    pub retry_delay: Duration,
}

impl RemoteConfig {
    /// A llama.cpp-style server at `base_url` serving `model`, no API key, 16 requests at
    /// once, 5 s to connect, 60 s to start answering, 30 s between parts of a stream, 3
    /// retries from 0.5 s.
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
    TextOnly,
}

/// What can go wrong talking to a server. Every message names the server's URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The configuration cannot work (an empty URL).
    #[error("remote backend: {0}")]
    InvalidConfig(String),
    /// [`RemoteConfig::api_key_env`] names a variable that is not set.
    #[error("the API key variable {var} is not set (the remote backend reads the key from it)")]
    MissingKey {
        /// The variable.
        var: String,
    },
    /// Nothing answered: the server is down, the address is wrong, or the network is.
    #[error("the inference server at {url} cannot be reached: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What the connection said.
        reason: String,
    },
    /// 401 or 403: the key is missing, wrong or not allowed.
    #[error("the inference server at {url} refused the request ({status}): {hint}")]
    Unauthorized {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to check: the key's variable, or that a key is needed.
        hint: String,
    },
    /// 429 or 503 on every try: the server is overloaded or rate-limits this game.
    #[error("the inference server at {url} was busy ({status}) on all {attempts} tries")]
    Busy {
        /// The URL called.
        url: String,
        /// The last HTTP status.
        status: u16,
        /// Requests sent.
        attempts: u32,
    },
    /// Any other error status, with the server's message.
    #[error("the inference server at {url} answered {status}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error message (shortened).
        message: String,
    },
    /// The server reported an error inside the stream, or ended the line for a reason
    /// other than its end or its length (an abort, a content filter).
    #[error("the inference server at {url} failed the line: {message}")]
    Failed {
        /// The URL called.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The server took longer than a [`RemoteConfig`] timeout.
    #[error("the inference server at {url} timed out {what}")]
    Timeout {
        /// The URL called.
        url: String,
        /// When: connecting, before answering, or mid-stream.
        what: String,
    },
    /// The stream ended before the server said the line was done.
    #[error("the stream from {url} stopped in the middle of the line")]
    StreamCut {
        /// The URL called.
        url: String,
    },
    /// The server sent something that is not a chat completion event.
    #[error("the inference server at {url} sent a malformed event: {reason}")]
    Malformed {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Structured output was asked of a server that cannot constrain it.
    #[error(
        "{kind:?} servers cannot constrain output; scenes' choices and actions need a server kind with structured output (LlamaCpp, Vllm, OpenAi)"
    )]
    Unconstrained {
        /// The configured kind.
        kind: ServerKind,
    },
    /// The constraint is a Lark or regex grammar; servers take JSON schemas.
    #[error(
        "an inference server constrains output by JSON schema; this request's grammar is not one"
    )]
    NotJsonSchema,
}

/// Shorthand for results of this module.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// One chat completion to ask for.
#[derive(Clone, Copy, Debug)]
pub struct ChatRequest<'a> {
    /// The conversation, system message first; the server renders it with its template.
    pub messages: &'a [ChatMessage],
    /// Length, sampling, stop strings and sentence rules, as for the engine.
    pub params: &'a GenerateParams,
    /// Output must match this JSON schema (the server constrains it; sentence rules and
    /// stop strings do not apply, as under a grammar in the engine).
    pub schema: Option<&'a serde_json::Value>,
    /// Ask for token log-probabilities (summed into the result's `stats.logprob`, where the
    /// server sends them; best-of ranks draws by them).
    pub logprobs: bool,
}

/// A connection to one inference server; share it between threads (`&self` everywhere).
pub struct RemoteClient {
    shared: Arc<Shared>,
}

/// What a request's HTTP thread needs of the client.
struct Shared {
    config: RemoteConfig,
    agent: ureq::Agent,
    key: Option<String>,
    chat_url: String,
    models_url: String,
}

impl std::fmt::Debug for RemoteClient {
    /// Everything but the key, which must not reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("config", &self.shared.config)
            .field("key", &self.shared.key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Longest part of an error body kept in a message.
const MAX_MESSAGE: usize = 300;

/// Longest line of an event stream (a broken server or proxy must not fill the memory).
const MAX_EVENT_LINE: u64 = 1 << 20;

/// How often a waiting request looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// What a request's HTTP thread sends the waiting caller.
enum Received {
    /// One line of the event stream.
    Line(String),
    /// The stream ended (`Ok`) or failed.
    End(Result<()>),
}

impl RemoteClient {
    /// A client for `config`; reads the API key from its variable now.
    pub fn new(config: RemoteConfig) -> Result<Self> {
        let base = config.base_url.trim().trim_end_matches('/').to_owned();
        if base.is_empty() {
            return Err(RemoteError::InvalidConfig(
                "RemoteConfig::base_url is empty (it should look like http://127.0.0.1:8080/v1)"
                    .into(),
            ));
        }
        let key = match &config.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| RemoteError::MissingKey { var: var.clone() })?,
            ),
            None => None,
        };
        // The response and stall timeouts are enforced by the waiting caller (which knows
        // whether text has started); these only end an HTTP thread nobody waits for.
        let backstop = config.response_timeout.max(config.stall_timeout);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(backstop))
            .timeout_per_read(Some(backstop))
            .build()
            .new_agent();
        Ok(Self {
            shared: Arc::new(Shared {
                chat_url: format!("{base}/chat/completions"),
                models_url: format!("{base}/models"),
                config,
                agent,
                key,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RemoteConfig {
        &self.shared.config
    }

    /// Asks the server which models it serves (`GET /models`): checks that it is up, that
    /// the key works and (for [`ServerKind::Vllm`] and [`ServerKind::OpenAi`], which route by
    /// name) that it serves [`RemoteConfig::model`], and describes that model.
    pub fn connect(&self) -> Result<ModelInfo> {
        let s = &self.shared;
        let url = &s.models_url;
        let mut request = s.agent.get(url);
        if let Some(key) = &s.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.call().map_err(|e| s.transport(url, e, false))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(s.status_error(url, status, &mut response));
        }
        let mut text = String::new();
        response
            .body_mut()
            .as_reader()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| s.io(url, e, false))?;
        let listed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RemoteError::Malformed {
                url: url.clone(),
                reason: format!("the model list is not JSON: {e}"),
            })?;
        let served: Vec<&str> = listed["data"]
            .as_array()
            .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        let model = &s.config.model;
        let routes_by_name = matches!(s.config.kind, ServerKind::Vllm | ServerKind::OpenAi);
        if routes_by_name
            && !model.is_empty()
            && !served.is_empty()
            && !served.contains(&model.as_str())
        {
            return Err(RemoteError::Status {
                url: url.clone(),
                status,
                message: shorten(&format!(
                    "it does not serve `{model}` (it serves: {})",
                    served.join(", ")
                )),
            });
        }
        let name = if model.is_empty() {
            served.first().map(|s| (*s).to_owned())
        } else {
            Some(model.clone())
        };
        Ok(ModelInfo {
            file: s.config.base_url.clone(),
            architecture: "remote".into(),
            name,
            train_context: 0,
            n_ctx: 0,
            vocab_size: 0,
            prefix_reuse: false,
        })
    }

    /// Generates one reply, streaming its text through `on_delta` as it arrives (the deltas
    /// add up to the result's text). Busy servers are retried per the configuration. A
    /// cancel returns at once (within 20 ms) as [`StopReason::Cancelled`]; the
    /// stream closes at its next part. The result has no token ids (`tokens` is empty); its
    /// counts come from the server's usage figures where it sends them, else one token per
    /// streamed part.
    ///
    /// The HTTP exchange runs on a thread of its own, so that a cancel or a timeout never
    /// waits for the server: [`RemoteConfig::response_timeout`] bounds the wait for the
    /// first text, [`RemoteConfig::stall_timeout`] each wait after it.
    pub fn chat(
        &self,
        request: &ChatRequest<'_>,
        cancel: &CancelToken,
        mut on_delta: impl FnMut(&str),
    ) -> Result<Generation> {
        let config = &self.shared.config;
        let params = request.params;
        let wrapped = body::wraps_schema(config.kind, request.schema);
        let body = body::chat_body(config, request)?.to_string();
        let started = Instant::now();
        let cancelled = |stats: GenerationStats| Generation {
            text: String::new(),
            tokens: Vec::new(),
            stop_reason: StopReason::Cancelled,
            stats,
            filtered: Vec::new(),
        };
        let url = self.shared.chat_url.clone();
        let lines = self.spawn_exchange(body, cancel.clone())?;
        let structured = request.schema.is_some();
        // A server's text cannot be taken back and written again: the guard holds back what
        // is forming and the line ends before its first hit.
        let mut stream = if structured {
            TextStream::new(&[])
        } else {
            TextStream::new(&params.stop)
                .with_max_sentences(params.max_sentences)
                .with_guard(params.guard.clone())
        };
        let mut filtered = Vec::new();
        let whole_sentences = params.whole_sentences && !structured;
        // As in the engine: the last third of the budget shows only whole sentences.
        let hold_from = params
            .max_tokens
            .saturating_sub((params.max_tokens / 3).max(8));
        let mut stats = GenerationStats::default();
        let mut parts = 0usize;
        let mut first_at: Option<Instant> = None;
        let mut last_part = Instant::now();
        let mut finish: Option<String> = None;
        let mut local_stop = None;
        // Text of a wrapped schema answer is shown once unwrapped; a guarded structured
        // answer once checked.
        let whole = wrapped || (structured && params.guard.is_some());
        let mut shown = |text: &str| {
            if !whole && !text.is_empty() {
                on_delta(text);
            }
        };
        loop {
            let (limit, what) = match first_at {
                None => (
                    config.response_timeout,
                    format!(
                        "before answering ({:?}, RemoteConfig::response_timeout)",
                        config.response_timeout
                    ),
                ),
                Some(_) => (
                    config.stall_timeout,
                    format!(
                        "mid-stream: nothing for {:?} (RemoteConfig::stall_timeout)",
                        config.stall_timeout
                    ),
                ),
            };
            let since = if first_at.is_none() {
                started
            } else {
                last_part
            };
            let line = match lines.recv_timeout(CANCEL_POLL) {
                Ok(Received::Line(line)) => line,
                Ok(Received::End(Ok(()))) => break,
                Ok(Received::End(Err(e))) => return Err(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.is_cancelled() {
                        return Ok(cancelled(stats));
                    }
                    if since.elapsed() > limit {
                        return Err(RemoteError::Timeout { url, what });
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RemoteError::StreamCut { url });
                }
            };
            if cancel.is_cancelled() {
                return Ok(cancelled(stats));
            }
            let event = events::parse_line(&line).map_err(|reason| RemoteError::Malformed {
                url: url.clone(),
                reason,
            })?;
            let chunk = match event {
                Event::Nothing => continue,
                Event::Done => break,
                Event::Error(message) => {
                    return Err(RemoteError::Failed {
                        url,
                        message: shorten(&message),
                    });
                }
                Event::Chunk(chunk) => chunk,
            };
            if let Some(logprob) = chunk.logprob {
                stats.logprob += logprob;
            }
            if let Some(usage) = chunk.usage {
                stats.prompt_tokens = usage.prompt_tokens;
                stats.cached_tokens = usage.cached_tokens;
                stats.generated_tokens = usage.completion_tokens;
            }
            if !chunk.content.is_empty() {
                parts += 1;
                last_part = Instant::now();
                if first_at.is_none() {
                    first_at = Some(last_part);
                    stats.time_to_first_token = started.elapsed();
                    stats.prefill_time = stats.time_to_first_token;
                }
                if whole_sentences && parts > hold_from {
                    stream.hold_partial_sentences();
                }
                let push = stream.push(chunk.content.as_bytes());
                shown(&push.delta);
                if let Some(hit) = push.hit {
                    filtered.push(hit.rule);
                    local_stop = Some(StopReason::Filtered);
                } else if push.stopped {
                    local_stop = Some(StopReason::StopString);
                } else if push.sentences_done {
                    local_stop = Some(StopReason::SentenceLimit);
                }
                if local_stop.is_some() {
                    // Dropping the receiver closes the stream at its next part: the server
                    // stops generating.
                    break;
                }
            }
            if let Some(reason) = chunk.finish_reason {
                finish = Some(reason);
            }
        }
        // A line the server did not finish (no finish reason: llama-cpp-python ends a stream
        // it interrupts with a bare `[DONE]`) is cut, not done; one it ended for a reason
        // other than its end or its length (vLLM's `abort`, a `content_filter`) failed.
        let reason = match (local_stop, finish.as_deref()) {
            (Some(reason), _) => reason,
            (None, Some("length")) => StopReason::MaxTokens,
            (None, Some("stop" | "eos" | "end_turn" | "stop_sequence")) => StopReason::Eos,
            (None, Some(other)) => {
                return Err(RemoteError::Failed {
                    url,
                    message: format!("the server ended the line early (`{other}`)"),
                });
            }
            (None, None) => return Err(RemoteError::StreamCut { url }),
        };
        // What was held back at the end may hold a hit too.
        let reason = match stream.final_hit() {
            Some(hit) if reason != StopReason::Filtered => {
                filtered.push(hit.rule);
                StopReason::Filtered
            }
            _ => reason,
        };
        let cut = matches!(
            reason,
            StopReason::MaxTokens | StopReason::Eos | StopReason::Filtered
        );
        let rest = if whole_sentences && cut {
            stream.finish_whole()
        } else {
            stream.finish()
        };
        shown(&rest);
        let mut text = stream.text().to_owned();
        if wrapped {
            text = body::unwrap_schema_answer(&text).ok_or_else(|| RemoteError::Malformed {
                url: url.clone(),
                reason: format!(
                    "the structured answer is not the object asked for: {}",
                    shorten(&text)
                ),
            })?;
        }
        if structured
            && let Some(guard) = &params.guard
            && let Some(hit) = guard.check().find(&text, 0, true)
        {
            return Err(RemoteError::Failed {
                url,
                message: format!(
                    "the structured answer broke the content rule `{}`",
                    hit.rule
                ),
            });
        }
        if whole {
            on_delta(&text);
        }
        stats.guard_time = stream.guard_time();
        if stats.generated_tokens == 0 {
            stats.generated_tokens = parts;
        }
        stats.decode_time = first_at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(Generation {
            text,
            tokens: Vec::new(),
            stop_reason: reason,
            stats,
            filtered,
        })
    }

    /// Starts the HTTP exchange for `body` on its own thread; its stream's lines arrive on
    /// the returned channel. The thread ends when the stream does, when the receiver is
    /// dropped (at the next line), or at the agent's backstop timeouts.
    fn spawn_exchange(
        &self,
        body: String,
        cancel: CancelToken,
    ) -> Result<std::sync::mpsc::Receiver<Received>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("llm-dialogue-http".into())
            .spawn(move || {
                let url = shared.chat_url.clone();
                let response = match shared.send(&body, &cancel) {
                    Ok(Some(response)) => response,
                    // Cancelled while waiting to retry: nobody is listening.
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Received::End(Err(e)));
                        return;
                    }
                };
                let mut reader = BufReader::new(response.into_body().into_reader());
                loop {
                    let mut line = String::new();
                    let read = (&mut reader).take(MAX_EVENT_LINE).read_line(&mut line);
                    let message = match read {
                        Ok(0) => Received::End(Ok(())),
                        Ok(n) if n as u64 == MAX_EVENT_LINE && !line.ends_with('\n') => {
                            Received::End(Err(RemoteError::Malformed {
                                url: url.clone(),
                                reason: format!(
                                    "a line of the stream is over {MAX_EVENT_LINE} bytes"
                                ),
                            }))
                        }
                        Ok(_) => Received::Line(line),
                        Err(e) => Received::End(Err(shared.io(&url, e, true))),
                    };
                    let end = matches!(message, Received::End(_));
                    // A caller that stopped listening (a cancel, a stop string) closes the
                    // stream by dropping the response here.
                    if tx.send(message).is_err() || end {
                        return;
                    }
                }
            })
            .map_err(|e| {
                RemoteError::InvalidConfig(format!("cannot start a request thread: {e}"))
            })?;
        Ok(rx)
    }
}

impl Shared {
    /// Posts `body`, retrying while the server is busy; `None` if cancelled meanwhile.
    fn send(
        &self,
        body: &str,
        cancel: &CancelToken,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        let url = &self.chat_url;
        let mut attempt = 0;
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            attempt += 1;
            let mut request = self
                .agent
                .post(url)
                .header("Content-Type", "application/json")
                .header("Accept", "text/event-stream");
            if let Some(key) = &self.key {
                request = request.header("Authorization", format!("Bearer {key}"));
            }
            let mut response = request
                .send(body)
                .map_err(|e| self.transport(url, e, false))?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(Some(response));
            }
            if !matches!(status, 429 | 503) {
                return Err(self.status_error(url, status, &mut response));
            }
            if attempt > self.config.retries {
                return Err(RemoteError::Busy {
                    url: url.clone(),
                    status,
                    attempts: attempt,
                });
            }
            let backoff = self.config.retry_delay * 2u32.saturating_pow(attempt - 1);
            let asked = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let wait = asked.map_or(backoff, |a| a.min(self.config.retry_delay * 8));
            tracing::warn!("{url} is busy ({status}); retrying in {wait:?}");
            // Wait in slices so that a cancel is noticed.
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                std::thread::sleep((until - Instant::now()).min(CANCEL_POLL));
            }
        }
    }

    fn status_error(
        &self,
        url: &str,
        status: u16,
        response: &mut ureq::http::Response<ureq::Body>,
    ) -> RemoteError {
        let mut text = String::new();
        let _ = response
            .body_mut()
            .as_reader()
            .take(16 << 10)
            .read_to_string(&mut text);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .or(v["error"].as_str())
                    .or(v["detail"].as_str())
                    .or(v["message"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or(text);
        match status {
            401 | 403 => RemoteError::Unauthorized {
                url: url.to_owned(),
                status,
                hint: match &self.config.api_key_env {
                    Some(var) => format!("check the API key in ${var} ({})", shorten(&message)),
                    None => format!(
                        "it may need an API key: set RemoteConfig::api_key_env ({})",
                        shorten(&message)
                    ),
                },
            },
            _ => RemoteError::Status {
                url: url.to_owned(),
                status,
                message: shorten(&message),
            },
        }
    }

    /// A transport error; `streaming` says whether the answer had begun.
    fn transport(&self, url: &str, e: ureq::Error, streaming: bool) -> RemoteError {
        match e {
            ureq::Error::Timeout(what) => RemoteError::Timeout {
                url: url.to_owned(),
                what: if format!("{what:?}").contains("Connect") {
                    format!(
                        "connecting ({:?}, RemoteConfig::connect_timeout)",
                        self.config.connect_timeout
                    )
                } else {
                    format!(
                        "before answering ({:?}, RemoteConfig::response_timeout)",
                        self.config.response_timeout
                    )
                },
            },
            ureq::Error::Io(io) => self.io(url, io, streaming),
            other => RemoteError::Unreachable {
                url: url.to_owned(),
                reason: other.to_string(),
            },
        }
    }

    fn io(&self, url: &str, e: std::io::Error, streaming: bool) -> RemoteError {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) || e.to_string().to_lowercase().contains("timeout");
        if timed_out {
            return RemoteError::Timeout {
                url: url.to_owned(),
                what: "mid-stream (the connection's own read timeout)".into(),
            };
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
                if streaming =>
            {
                RemoteError::StreamCut {
                    url: url.to_owned(),
                }
            }
            _ => RemoteError::Unreachable {
                url: url.to_owned(),
                reason: e.to_string(),
            },
        }
    }
}

/// `text` cut to [`MAX_MESSAGE`] bytes at a character boundary, trimmed.
fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        // Cargo sets this variable for every test process: it stands in for a key.
        let client = RemoteClient::new(
            RemoteConfig::new("http://127.0.0.1:9/v1", "m").with_api_key_env("CARGO_PKG_NAME"),
        )
        .unwrap();
        let shown = format!("{client:?}");
        assert!(
            shown.contains("<set>") && !shown.contains(env!("CARGO_PKG_NAME")),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_url_or_an_unset_key_is_refused_up_front() {
        assert!(matches!(
            RemoteClient::new(RemoteConfig::new(" ", "m")),
            Err(RemoteError::InvalidConfig(_))
        ));
        let missing = RemoteConfig::new("http://127.0.0.1:9/v1", "m")
            .with_api_key_env("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET");
        assert!(matches!(
            RemoteClient::new(missing),
            Err(RemoteError::MissingKey { var }) if var == "LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET"
        ));
    }

    #[test]
    fn long_messages_are_shortened_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE + 10);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_MESSAGE + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("  ok  "), "ok");
    }
}
