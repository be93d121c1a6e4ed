//! The HTTP exchange of a request: on a thread of its own, with an agent of its own that the
//! caller shuts down when it stops listening, its stream's lines sent to the waiting caller
//! through a queue bounded in bytes ([`lines`](super::lines)); busy servers retried with
//! backoff; statuses and transport failures turned into [`RemoteError`]s that name the URL.
//!
//! Nothing a server sends can keep the thread alive for long: the whole exchange has a
//! deadline ([`RemoteConfig::line_timeout`], ureq's global timeout), a line of the stream has
//! a size limit, and a `Retry-After` is read defensively and capped.
//!
//! [`RemoteConfig::line_timeout`]: super::RemoteConfig::line_timeout

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use super::client::Shared;
use super::error::shorten;
use super::lines::{Exchange, LineSender, exchange};
use super::{RemoteClient, RemoteError, Result};
use crate::engine::CancelToken;

/// Longest line of an event stream, in bytes: a chunk is a few hundred bytes (a few KiB with
/// log-probabilities); a longer line is a broken server or proxy.
pub(super) const MAX_EVENT_LINE: usize = 256 << 10;

/// Longest wait before a retry, whatever a `Retry-After` header or the configuration ask.
pub(super) const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting request looks at its cancel token.
pub(super) const CANCEL_POLL: Duration = Duration::from_millis(20);

impl RemoteClient {
    /// Starts the HTTP exchange for `body` on its own thread, to end by `deadline`; its
    /// stream's lines arrive through the returned [`Exchange`]. The thread ends when the
    /// stream does, when the exchange is dropped (its connection is shut down, a blocked
    /// read included), or at the deadline.
    pub(super) fn spawn_exchange(
        &self,
        body: String,
        cancel: CancelToken,
        deadline: Instant,
    ) -> Result<Exchange> {
        let agent = ureq::Agent::new_with_config(self.shared.http.clone());
        let (tx, rx) = exchange(agent.clone());
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("llm-dialogue-http".into())
            .spawn(move || {
                let url = shared.chat_url.clone();
                let response = match shared.send(&agent, &body, &cancel, &tx, deadline) {
                    Ok(Some(response)) => response,
                    // Cancelled or abandoned while waiting to retry: nobody is listening.
                    Ok(None) => return,
                    Err(e) => return tx.end(Err(e)),
                };
                let mut reader = BufReader::new(response.into_body().into_reader());
                loop {
                    match read_line(&mut reader) {
                        Ok(Some(line)) => {
                            let Ok(line) = String::from_utf8(line) else {
                                return tx.end(Err(RemoteError::Malformed {
                                    url,
                                    reason: "a line of the stream is not UTF-8".into(),
                                }));
                            };
                            // The caller stopped listening (a cancel, a stop string): the
                            // exchange's agent is shut down, the response dropped here.
                            if !tx.line(line) {
                                return;
                            }
                        }
                        Ok(None) => return tx.end(Ok(())),
                        Err(LineError::TooLarge) => {
                            return tx.end(Err(RemoteError::EventTooLarge {
                                url,
                                limit: MAX_EVENT_LINE,
                            }));
                        }
                        Err(LineError::Io(e)) => return tx.end(Err(shared.io(&url, e, true))),
                    }
                }
            })
            .map_err(|e| {
                RemoteError::InvalidConfig(format!("cannot start a request thread: {e}"))
            })?;
        Ok(rx)
    }
}

/// Why [`read_line`] read no line.
enum LineError {
    /// The line is over [`MAX_EVENT_LINE`] bytes (it was read no further).
    TooLarge,
    Io(std::io::Error),
}

/// The next line of `reader`, with its line break; `None` at the end of the stream.
fn read_line(reader: &mut impl BufRead) -> std::result::Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    // One byte past the limit tells a line at the limit from a longer one.
    let read = reader
        .by_ref()
        .take(MAX_EVENT_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(LineError::Io)?;
    if read == 0 {
        Ok(None)
    } else if line.len() > MAX_EVENT_LINE {
        Err(LineError::TooLarge)
    } else {
        Ok(Some(line))
    }
}

/// The wait a `Retry-After` header asks for: at most [`MAX_RETRY_WAIT`]; `None` for what is
/// not a finite, non-negative number of seconds (an HTTP date, `inf`, `NaN`, `-1`, garbage),
/// which gets the usual backoff.
pub(super) fn retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds.min(MAX_RETRY_WAIT.as_secs_f64())).ok()
}

impl Shared {
    /// Posts `body` through `agent`, retrying while the server is busy, all by `deadline`;
    /// `None` if cancelled or abandoned meanwhile.
    fn send(
        &self,
        agent: &ureq::Agent,
        body: &str,
        cancel: &CancelToken,
        listener: &LineSender,
        deadline: Instant,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        let url = &self.chat_url;
        let gone = || cancel.is_cancelled() || listener.abandoned();
        let mut attempt = 0;
        loop {
            if gone() {
                return Ok(None);
            }
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.line_timed_out());
            }
            let mut request = agent
                .post(url)
                .header("Content-Type", "application/json")
                .header("Accept", "text/event-stream");
            if let Some(key) = &self.key {
                request = request.header("Authorization", format!("Bearer {key}"));
            }
            // The whole exchange, the stream's body included, ends by the deadline.
            let mut response = request
                .config()
                .timeout_global(Some(left))
                .build()
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
            let backoff = self
                .config
                .retry_delay
                .saturating_mul(2u32.saturating_pow(attempt - 1));
            let asked = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let wait = asked
                .map_or(backoff, |a| {
                    a.min(self.config.retry_delay.saturating_mul(8))
                })
                .min(MAX_RETRY_WAIT);
            tracing::warn!("{url} is busy ({status}); retrying in {wait:?}");
            // Wait in slices so that a cancel is noticed.
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if gone() {
                    return Ok(None);
                }
                std::thread::sleep((until - Instant::now()).min(CANCEL_POLL));
            }
        }
    }

    /// The error of a line past [`RemoteConfig::line_timeout`].
    ///
    /// [`RemoteConfig::line_timeout`]: super::RemoteConfig::line_timeout
    pub(super) fn line_timed_out(&self) -> RemoteError {
        RemoteError::Timeout {
            url: self.chat_url.clone(),
            what: format!(
                "before the line's end ({:?} in all, RemoteConfig::line_timeout)",
                self.config.line_timeout
            ),
        }
    }

    pub(super) fn status_error(
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

    /// The error of an exchange past its whole time: a line's, or the model list's.
    fn global_timeout(&self, url: &str) -> RemoteError {
        if url == self.chat_url {
            return self.line_timed_out();
        }
        RemoteError::Timeout {
            url: url.to_owned(),
            what: format!(
                "answering ({:?}, RemoteConfig::connect_timeout + response_timeout)",
                self.config
                    .connect_timeout
                    .saturating_add(self.config.response_timeout)
            ),
        }
    }

    /// A transport error; `streaming` says whether the answer had begun.
    pub(super) fn transport(&self, url: &str, e: ureq::Error, streaming: bool) -> RemoteError {
        match e {
            ureq::Error::Timeout(ureq::Timeout::Global) => self.global_timeout(url),
            ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                RemoteError::Timeout {
                    url: url.to_owned(),
                    what: format!(
                        "connecting ({:?}, RemoteConfig::connect_timeout)",
                        self.config.connect_timeout
                    ),
                }
            }
            ureq::Error::Timeout(_) => RemoteError::Timeout {
                url: url.to_owned(),
                what: format!(
                    "before answering ({:?}, RemoteConfig::response_timeout)",
                    self.config.response_timeout
                ),
            },
            ureq::Error::Io(io) => self.io(url, io, streaming),
            other => RemoteError::Unreachable {
                url: url.to_owned(),
                reason: other.to_string(),
            },
        }
    }

    pub(super) fn io(&self, url: &str, e: std::io::Error, streaming: bool) -> RemoteError {
        // ureq's own errors come wrapped in an `io::Error` from a body's reader.
        if let Some(ureq::Error::Timeout(ureq::Timeout::Global)) =
            e.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>())
        {
            return self.global_timeout(url);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_defensively_and_capped() {
        assert_eq!(retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("0.25"), Some(Duration::from_millis(250)));
        // Past what a `Duration` holds (this panicked in `Duration::from_secs_f64`).
        assert_eq!(retry_after("1e20"), Some(MAX_RETRY_WAIT));
        assert_eq!(retry_after("86400"), Some(MAX_RETRY_WAIT));
        for bad in [
            "-1",
            "NaN",
            "inf",
            "-inf",
            "",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(retry_after(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_are_read_up_to_the_limit_and_no_further() {
        let mut text = b"data: a\n\nlast".to_vec();
        let mut reader = &text[..];
        assert_eq!(
            read_line(&mut reader).ok().flatten().as_deref(),
            Some(&b"data: a\n"[..])
        );
        assert_eq!(
            read_line(&mut reader).ok().flatten().as_deref(),
            Some(&b"\n"[..])
        );
        assert_eq!(
            read_line(&mut reader).ok().flatten().as_deref(),
            Some(&b"last"[..])
        );
        assert!(matches!(read_line(&mut reader), Ok(None)));

        text = vec![b'x'; MAX_EVENT_LINE - 1];
        text.push(b'\n');
        let mut reader = &text[..];
        assert_eq!(
            read_line(&mut reader).ok().flatten().map(|l| l.len()),
            Some(MAX_EVENT_LINE)
        );
        let long = vec![b'x'; MAX_EVENT_LINE + 10];
        let mut reader = &long[..];
        assert!(matches!(read_line(&mut reader), Err(LineError::TooLarge)));
        assert_eq!(reader.len(), 9, "read one byte past the limit, no further");
    }
}
