//! What can go wrong talking to a server: [`RemoteError`], and server messages shortened
//! for it.

use super::ServerKind;

/// What can go wrong talking to a server. Every message names the server's URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The configuration cannot work (an empty URL).
    #[error("remote backend: {0}")]
    InvalidConfig(String),
    /// [`RemoteConfig::api_key_env`] names a variable that is not set.
    ///
    /// [`RemoteConfig::api_key_env`]: super::RemoteConfig::api_key_env
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
    ///
    /// [`RemoteConfig`]: super::RemoteConfig
    #[error("the inference server at {url} timed out {what}")]
    Timeout {
        /// The URL called.
        url: String,
        /// When: connecting, before answering, mid-stream, or past the line's whole time.
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
    /// One line of the event stream is longer than any chat completion chunk: a broken
    /// server or proxy (a server's chunk is a few hundred bytes, a few KiB with
    /// log-probabilities). The stream is closed unread past the limit.
    #[error(
        "the inference server at {url} sent an event line over {limit} bytes (a broken server or proxy); the line was cut off"
    )]
    EventTooLarge {
        /// The URL called.
        url: String,
        /// The longest line read, in bytes.
        limit: usize,
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

/// Longest part of an error body kept in a message.
const MAX_MESSAGE: usize = 300;

/// `text` cut to [`MAX_MESSAGE`] bytes at a character boundary, trimmed.
pub(super) fn shorten(text: &str) -> String {
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
    fn long_messages_are_shortened_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE + 10);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_MESSAGE + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("  ok  "), "ok");
    }
}
