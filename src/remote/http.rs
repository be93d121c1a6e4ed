//! The HTTP exchange of a request: on a thread of its own, its stream's lines sent to the
//! waiting caller; busy servers retried with backoff; statuses and transport failures
//! turned into [`RemoteError`]s that name the URL.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use super::client::Shared;
use super::error::shorten;
use super::{RemoteClient, RemoteError, Result};
use crate::engine::CancelToken;

/// Longest line of an event stream (a broken server or proxy must not fill the memory).
const MAX_EVENT_LINE: u64 = 1 << 20;

/// How often a waiting request looks at its cancel token.
pub(super) const CANCEL_POLL: Duration = Duration::from_millis(20);

/// What a request's HTTP thread sends the waiting caller.
pub(super) enum Received {
    /// One line of the event stream.
    Line(String),
    /// The stream ended (`Ok`) or failed.
    End(Result<()>),
}

impl RemoteClient {
    /// Starts the HTTP exchange for `body` on its own thread; its stream's lines arrive on
    /// the returned channel. The thread ends when the stream does, when the receiver is
    /// dropped (at the next line), or at the agent's backstop timeouts.
    pub(super) fn spawn_exchange(
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

    /// A transport error; `streaming` says whether the answer had begun.
    pub(super) fn transport(&self, url: &str, e: ureq::Error, streaming: bool) -> RemoteError {
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

    pub(super) fn io(&self, url: &str, e: std::io::Error, streaming: bool) -> RemoteError {
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
