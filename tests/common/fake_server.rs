//! A small OpenAI-compatible server on 127.0.0.1 that answers each chat request as a test
//! scripts it (by its number or its body) and keeps the requests it got: known replies for
//! the worker's jobs, and the faults a real server cannot produce on demand: refusals, busy
//! answers, streams cut mid-line, garbage, stalls. The real llama.cpp server covers
//! everything else (`.ci/run` runs the worker's and the plugin's tests against it).
//!
//! Hostile servers too ([`endless`], [`pings`], [`trickle`], [`Reply::Raw`]): streams that
//! ignore `max_tokens`, keep-alives instead of text, a byte a second, lines too long. Each
//! goes on until the client hangs up, and never past [`HOSTILE_FOR`], so a test that
//! fails still ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a hostile reply goes on.
pub const HOSTILE_FOR: Duration = Duration::from_secs(20);

/// A hostile reply's body: writes what it likes after the headers; an error (the client
/// hung up) counts in [`FakeServer::hung_up`].
pub type Writer = Box<dyn FnOnce(&mut TcpStream) -> std::io::Result<()> + Send>;

/// What the server does with one chat request.
pub enum Reply {
    /// An HTTP error status with extra headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// A stream of text parts, `delay` apart, ending as `end` says.
    Stream {
        parts: Vec<String>,
        delay: Duration,
        end: End,
    },
    /// Headers never come: the connection stays open and silent this long.
    Silent(Duration),
    /// An event stream's headers, then whatever the writer writes.
    Raw(Writer),
}

/// How a [`Reply::Stream`] ends.
pub enum End {
    /// A finish reason, then `[DONE]`.
    Done,
    /// The connection closes without either.
    Cut,
    /// A line that is not JSON.
    Garbage,
    /// Nothing for this long, then closes.
    Stall(Duration),
    /// This finish reason, then `[DONE]`.
    Finish(&'static str),
    /// An `error:` field as llama.cpp's server sends it, then `[DONE]`.
    Error(&'static str),
}

/// A chat request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: serde_json::Value,
    pub authorization: Option<String>,
}

type Script = dyn Fn(usize, &serde_json::Value) -> Reply + Send + Sync;
type Models = dyn Fn(usize) -> Reply + Send + Sync;

/// The server; it stops when the test process ends.
pub struct FakeServer {
    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    /// Chat requests in order of arrival.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Streams whose client hung up before the stream ended.
    pub hung_up: Arc<AtomicUsize>,
    /// The most streams open at once.
    pub most_at_once: Arc<AtomicUsize>,
    /// The thread that accepts connections.
    _listener: std::thread::JoinHandle<()>,
}

impl FakeServer {
    /// Serves `/models` with `models_status` and each chat request with `script(n, body)`,
    /// `n` counting from 0.
    pub fn start(
        models_status: u16,
        script: impl Fn(usize, &serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with_models(move |_| models(models_status), script)
    }

    /// Serves the `n`th `GET /models` with `models(n)` (see [`models`]) and each chat
    /// request with `script(n, body)`.
    pub fn start_with_models(
        models: impl Fn(usize) -> Reply + Send + Sync + 'static,
        script: impl Fn(usize, &serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let hung_up = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let models: Arc<Models> = Arc::new(models);
        let listed = Arc::new(AtomicUsize::new(0));
        let state = (
            received.clone(),
            hung_up.clone(),
            most_at_once.clone(),
            open,
            listed,
        );
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let script = script.clone();
                let models = models.clone();
                let state = state.clone();
                std::thread::spawn(move || {
                    let (received, hung_up, most, open, listed) = state;
                    let models = || models(listed.fetch_add(1, Ordering::SeqCst));
                    serve(stream, &models, &*script, &received, &hung_up, &most, &open);
                });
            }
        });
        Self {
            url,
            received,
            hung_up,
            most_at_once,
            _listener: thread,
        }
    }

    /// Chat requests received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A hostile reply: an event stream's headers, then whatever `writer` writes.
pub fn raw(writer: impl FnOnce(&mut TcpStream) -> std::io::Result<()> + Send + 'static) -> Reply {
    Reply::Raw(Box::new(writer))
}

/// The model list, answered with `status`.
pub fn models(status: u16) -> Reply {
    let body = r#"{"object":"list","data":[{"id":"fake-model","object":"model"}]}"#;
    Reply::Status(status, vec![], body.into())
}

/// The event of a chunk with `delta`, and `finish` as its finish reason.
pub fn event(delta: serde_json::Value, finish: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "object": "chat.completion.chunk",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    format!("data: {chunk}\n\n")
}

/// The event of a chunk of text.
pub fn text(part: &str) -> String {
    event(serde_json::json!({ "content": part }), None)
}

/// Writes `step(i)` for i = 0, 1, ..., `every` apart, until the client hangs up (`Err`) or
/// [`HOSTILE_FOR`] has passed (`Ok`).
pub fn repeat(
    out: &mut TcpStream,
    every: Duration,
    mut step: impl FnMut(usize) -> Vec<u8>,
) -> std::io::Result<()> {
    let begin = Instant::now();
    let mut i = 0;
    while begin.elapsed() < HOSTILE_FOR {
        out.write_all(&step(i))?;
        out.flush()?;
        i += 1;
        std::thread::sleep(every);
    }
    Ok(())
}

/// A server that ignores `max_tokens`: `part` as text again and again, `every` apart.
pub fn endless(part: &str, every: Duration) -> Reply {
    let event = text(part).into_bytes();
    raw(move |out| repeat(out, every, |_| event.clone()))
}

/// `first` as text (if any), then `ping` (a keep-alive comment, an empty chunk) every
/// `every`, and never any more text.
pub fn pings(first: Option<&'static str>, ping: &'static str, every: Duration) -> Reply {
    raw(move |out| {
        if let Some(first) = first {
            out.write_all(text(first).as_bytes())?;
        }
        repeat(out, every, |_| ping.as_bytes().to_vec())
    })
}

/// An empty chunk, as a keep-alive.
pub const EMPTY_DELTA: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{}}]}\n\n";

/// `first` as text, then one byte every `every`, never a whole line: a connection that is
/// never idle long enough for a read timeout.
pub fn trickle(first: &'static str, every: Duration) -> Reply {
    raw(move |out| {
        out.write_all(text(first).as_bytes())?;
        repeat(out, every, |_| b"x".to_vec())
    })
}

/// A streamed reply of `parts` with no delay, ending well.
pub fn stream(parts: &[&str]) -> Reply {
    Reply::Stream {
        parts: parts.iter().map(|p| (*p).to_owned()).collect(),
        delay: Duration::ZERO,
        end: End::Done,
    }
}

fn serve(
    stream: TcpStream,
    models: &dyn Fn() -> Reply,
    script: &Script,
    received: &Mutex<Vec<Received>>,
    hung_up: &AtomicUsize,
    most: &AtomicUsize,
    open: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut out = stream;
    if request_line.starts_with("GET") {
        match models() {
            Reply::Status(status, headers, body) => {
                let _ = respond(&mut out, status, &headers, &body);
            }
            Reply::Silent(time) => std::thread::sleep(time),
            _ => panic!("`GET /models` answers with a status or silence"),
        }
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = {
        let mut received = received.lock().unwrap();
        received.push(Received {
            body: body.clone(),
            authorization,
        });
        received.len() - 1
    };
    match script(n, &body) {
        Reply::Status(status, headers, body) => {
            let _ = respond(&mut out, status, &headers, &body);
        }
        Reply::Silent(time) => std::thread::sleep(time),
        Reply::Raw(writer) => {
            let head =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
            if out.write_all(head).and_then(|()| writer(&mut out)).is_err() {
                hung_up.fetch_add(1, Ordering::SeqCst);
            }
        }
        Reply::Stream { parts, delay, end } => {
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // The stream stops counting as open just before its last part: a client that
            // ends its line on that part (a sentence limit) may send its next request before
            // this thread runs again, and that is not two requests at once.
            let released = std::cell::Cell::new(false);
            let release = || {
                if !released.replace(true) {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            };
            if send_stream(&mut out, &parts, delay, end, &release).is_err() {
                hung_up.fetch_add(1, Ordering::SeqCst);
            }
            release();
        }
    }
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

fn send_stream(
    out: &mut TcpStream,
    parts: &[String],
    delay: Duration,
    end: End,
    before_last: &dyn Fn(),
) -> std::io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
    )?;
    out.write_all(event(serde_json::json!({ "role": "assistant" }), None).as_bytes())?;
    out.write_all(b": keep-alive\n\n")?;
    if parts.is_empty() {
        before_last();
    }
    for (i, part) in parts.iter().enumerate() {
        std::thread::sleep(delay);
        if i + 1 == parts.len() {
            before_last();
        }
        out.write_all(event(serde_json::json!({ "content": part }), None).as_bytes())?;
        out.flush()?;
    }
    match end {
        End::Done => {
            out.write_all(event(serde_json::json!({}), Some("stop")).as_bytes())?;
            out.write_all(b"data: [DONE]\n\n")?;
        }
        End::Cut => {}
        End::Garbage => out.write_all(b"data: {\"choices\": [{\"delta\"\n\n")?,
        End::Stall(time) => {
            out.flush()?;
            std::thread::sleep(time);
        }
        End::Finish(reason) => {
            out.write_all(event(serde_json::json!({}), Some(reason)).as_bytes())?;
            out.write_all(b"data: [DONE]\n\n")?;
        }
        End::Error(message) => {
            let error = serde_json::json!({ "code": 400, "message": message });
            out.write_all(format!("error: {error}\n\ndata: [DONE]\n\n").as_bytes())?;
        }
    }
    out.flush()
}
