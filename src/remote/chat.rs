//! One streamed reply: [`ChatRequest`] and [`RemoteClient::chat`], which reads the server's
//! events as the engine reads its own tokens (stop strings, sentence rules, the guard,
//! timeouts, cancels) and builds the same [`Generation`].

use std::time::{Duration, Instant};

use super::error::shorten;
use super::events::{self, Event};
use super::http::CANCEL_POLL;
use super::lines::{Received, Waited};
use super::{RemoteClient, RemoteError, Result, body};
use crate::engine::stream::TextStream;
use crate::engine::{
    CancelToken, ChatMessage, GenerateParams, Generation, GenerationStats, StopReason,
};

/// Most bytes a streamed token may average before the line is cut as at its length: a
/// server that ignores `max_tokens` (or sends one huge part) stops at `max_tokens` times
/// this. Real tokens are a few bytes; a long run of spaces or dashes may reach 16.
pub const MAX_TOKEN_BYTES: usize = 32;

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

impl RemoteClient {
    /// Generates one reply, streaming its text through `on_delta` as it arrives (the deltas
    /// add up to the result's text). Busy servers are retried per the configuration. A
    /// cancel returns at once (within 20 ms) as [`StopReason::Cancelled`] and closes the
    /// connection. The result has no token ids (`tokens` is empty); its counts come from the
    /// server's usage figures where it sends them, else one token per streamed part.
    ///
    /// The server's `max_tokens` is not trusted: past that many streamed parts, or
    /// [`MAX_TOKEN_BYTES`] bytes a token, the line ends here as [`StopReason::MaxTokens`]
    /// and the stream is closed.
    ///
    /// The HTTP exchange runs on a thread of its own, so that a cancel or a timeout never
    /// waits for the server: [`RemoteConfig::response_timeout`] bounds the wait for the
    /// first text, [`RemoteConfig::stall_timeout`] each wait after it (keep-alive comments
    /// and empty chunks are not text), [`RemoteConfig::line_timeout`] the whole line.
    ///
    /// [`RemoteConfig::response_timeout`]: super::RemoteConfig::response_timeout
    /// [`RemoteConfig::stall_timeout`]: super::RemoteConfig::stall_timeout
    /// [`RemoteConfig::line_timeout`]: super::RemoteConfig::line_timeout
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
        // A timeout past what an `Instant` holds is a year.
        let deadline = started
            .checked_add(config.line_timeout)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
        let lines = self.spawn_exchange(body, cancel.clone(), deadline)?;
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
        let mut bytes = 0usize;
        let max_bytes = params.max_tokens.saturating_mul(MAX_TOKEN_BYTES);
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
            // On every event, not only when nothing comes: a server that sends keep-alive
            // comments or empty chunks every few milliseconds must not hold the timeouts off.
            // Only text counts as progress.
            let now = Instant::now();
            if now > deadline {
                return Err(self.shared.line_timed_out());
            }
            match first_at {
                None if now - started > config.response_timeout => {
                    return Err(RemoteError::Timeout {
                        url,
                        what: format!(
                            "before answering ({:?}, RemoteConfig::response_timeout)",
                            config.response_timeout
                        ),
                    });
                }
                Some(_) if now - last_part > config.stall_timeout => {
                    return Err(RemoteError::Timeout {
                        url,
                        what: format!(
                            "mid-stream: no text for {:?} (RemoteConfig::stall_timeout)",
                            config.stall_timeout
                        ),
                    });
                }
                _ => {}
            }
            let line = match lines.recv_timeout(CANCEL_POLL) {
                Ok(Received::Line(line)) => line,
                Ok(Received::End(Ok(()))) => break,
                Ok(Received::End(Err(e))) => return Err(e),
                Err(Waited::Timeout) => {
                    if cancel.is_cancelled() {
                        return Ok(cancelled(stats));
                    }
                    continue;
                }
                Err(Waited::Gone) => return Err(RemoteError::StreamCut { url }),
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
                if parts >= params.max_tokens || bytes >= max_bytes {
                    // A server that ignores `max_tokens`: the line ends at its budget here.
                    local_stop = Some(StopReason::MaxTokens);
                    break;
                }
                parts += 1;
                let mut content = chunk.content.as_str();
                let over = bytes + content.len() > max_bytes;
                if over {
                    let mut end = max_bytes - bytes;
                    while !content.is_char_boundary(end) {
                        end -= 1;
                    }
                    content = &content[..end];
                }
                bytes += content.len();
                if first_at.is_none() {
                    first_at = Some(Instant::now());
                    stats.time_to_first_token = started.elapsed();
                    stats.prefill_time = stats.time_to_first_token;
                }
                if whole_sentences && parts > hold_from {
                    stream.hold_partial_sentences();
                }
                let push = stream.push(content.as_bytes());
                shown(&push.delta);
                // The stall clock runs from here: time in the caller's callback is not the
                // server's.
                last_part = Instant::now();
                if let Some(hit) = push.hit {
                    filtered.push(hit.rule);
                    local_stop = Some(StopReason::Filtered);
                } else if push.stopped {
                    local_stop = Some(StopReason::StopString);
                } else if push.sentences_done {
                    local_stop = Some(StopReason::SentenceLimit);
                } else if over {
                    local_stop = Some(StopReason::MaxTokens);
                }
                if local_stop.is_some() {
                    // Dropping the exchange closes the connection: the server stops
                    // generating.
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
}
