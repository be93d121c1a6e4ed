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
//!
//! The module's parts: `config` (where the server is, its dialect), `error`, `client` (the
//! connection and `GET /models`), `chat` (one streamed reply, read as the engine reads its
//! own tokens), `http` (the exchange's thread, retries while the server is busy, errors from
//! statuses), `lines` (the stream's lines on their way to the caller, bounded in bytes),
//! `body` (the request in each dialect) and `events` (what one line says).
//!
//! A server is not trusted to behave: one that ignores `max_tokens` is cut off at the
//! request's budget (counted here: each streamed part at least one token, and at most 32
//! bytes a token), keep-alive comments and empty chunks do not hold off the timeouts, a
//! whole line has its own deadline ([`RemoteConfig::line_timeout`]), an event line has a
//! size limit, and a cancel closes the connection at once.
//!
//! [`Generation`]: crate::engine::Generation

mod body;
mod chat;
mod client;
mod config;
mod error;
mod events;
mod http;
mod lines;

pub use chat::{ChatRequest, MAX_TOKEN_BYTES};
pub use client::RemoteClient;
pub use config::{RemoteConfig, ServerKind};
pub use error::{RemoteError, Result};
