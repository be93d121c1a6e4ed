//! The remote backend against hostile servers (`common::fake_server` on 127.0.0.1): one that
//! ignores `max_tokens`, one that sends keep-alives instead of text, a `Retry-After` past
//! what a `Duration` holds, a byte a second after a cancel, lines too long or too many, a
//! model list that takes its time. None may hang or kill the game: every line ends, within
//! its limits, with a result or a typed error, and its connection closes.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bevy_llm_dialogue::engine::{CancelToken, GenerateParams, Generation, StopReason};
use bevy_llm_dialogue::remote::{ChatRequest, RemoteClient, RemoteConfig, RemoteError};
use bevy_llm_dialogue::worker::{Report, RequestId};

use crate::common::fake_server::{
    EMPTY_DELTA, FakeServer, Reply, endless, event, models, pings, raw, stream, text, trickle,
};
use crate::remote::{config, reports_until, worker_on};
use crate::worker::{job, line, mira, params};

/// One line from `config`'s server with `params`, on a thread of its own: the result and
/// the text streamed meanwhile. Fails the test if the line does not end within `bound`
/// (the old client hung on these servers).
fn line_within(
    config: RemoteConfig,
    params: GenerateParams,
    cancel: CancelToken,
    mut on_delta: impl FnMut(&str) + Send + 'static,
    bound: Duration,
) -> (Result<Generation, RemoteError>, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let client = RemoteClient::new(config).expect("the config is valid");
        let mut shown = String::new();
        let result = client.chat(
            &ChatRequest {
                messages: &mira(),
                params: &params,
                schema: None,
                logprobs: false,
            },
            &cancel,
            |t| {
                shown.push_str(t);
                on_delta(t);
            },
        );
        let _ = tx.send((result, shown));
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("the line did not end within {bound:?}"))
}

/// `max_tokens` as asked of the server.
fn at_most(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    }
}

/// Waits (bounded) until the server has seen `n` clients hang up.
fn hung_up(server: &FakeServer, n: usize, within: Duration, what: &str) {
    let begin = Instant::now();
    while server.hung_up.load(Ordering::SeqCst) < n {
        assert!(
            begin.elapsed() < within,
            "{what}: the connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_server_that_ignores_max_tokens_is_cut_off_at_the_budget() {
    // Short parts: the token count ends the line.
    let server = FakeServer::start(200, |n, _| match n {
        0 => endless("word ", Duration::from_millis(1)),
        // Long parts: the byte budget (32 bytes a token) ends it first.
        _ => endless(&"x".repeat(100), Duration::from_millis(1)),
    });
    let (line, shown) = line_within(
        config(&server.url),
        at_most(16),
        CancelToken::new(),
        |_| {},
        Duration::from_secs(10),
    );
    let line = line.expect("the line ends well");
    assert_eq!(line.stop_reason, StopReason::MaxTokens);
    assert_eq!(line.text, shown);
    assert_eq!(line.text.split_whitespace().count(), 16, "{}", line.text);
    assert!(line.stats.generated_tokens <= 16);
    hung_up(&server, 1, Duration::from_secs(5), "a line at its budget");

    let (line, shown) = line_within(
        config(&server.url),
        at_most(4),
        CancelToken::new(),
        |_| {},
        Duration::from_secs(10),
    );
    let line = line.expect("the line ends well");
    assert_eq!(line.stop_reason, StopReason::MaxTokens);
    assert_eq!((line.text.len(), shown.len()), (4 * 32, 4 * 32));
    hung_up(
        &server,
        2,
        Duration::from_secs(5),
        "a line at its byte budget",
    );
}

#[test]
fn keep_alives_and_empty_chunks_do_not_hold_the_timeouts_off() {
    let every = Duration::from_millis(5);
    let server = FakeServer::start(200, move |n, _| match n {
        0 => pings(None, ": ping\n\n", every),
        1 => pings(Some("Well"), ": ping\n\n", every),
        2 => pings(Some("Well"), EMPTY_DELTA, every),
        // Text, slowly but never stalling, for longer than the whole line may take.
        _ => endless("and ", Duration::from_millis(50)),
    });
    let mut short = config(&server.url);
    short.response_timeout = Duration::from_millis(300);
    short.stall_timeout = Duration::from_millis(300);
    let begin = Instant::now();
    let bound = Duration::from_secs(5);
    let error = |result: (Result<Generation, RemoteError>, String)| match result.0 {
        Err(e) => e.to_string(),
        Ok(g) => panic!("the line should have timed out, got {:?}", g.text),
    };
    let new = CancelToken::new;
    let e = error(line_within(
        short.clone(),
        at_most(64),
        new(),
        |_| {},
        bound,
    ));
    assert!(e.contains("timed out before answering"), "{e}");
    for ping in ["a comment", "an empty chunk"] {
        let e = error(line_within(
            short.clone(),
            at_most(64),
            new(),
            |_| {},
            bound,
        ));
        assert!(e.contains("timed out mid-stream"), "{ping}: {e}");
    }
    assert!(
        begin.elapsed() < Duration::from_secs(6),
        "{:?}",
        begin.elapsed()
    );
    // Only the whole line's time can end this one (on a busy machine a 300 ms response
    // timeout may fire first).
    let mut whole = config(&server.url);
    whole.line_timeout = Duration::from_secs(1);
    whole.response_timeout = Duration::from_secs(3);
    whole.stall_timeout = Duration::from_secs(3);
    let e = error(line_within(whole, at_most(10_000), new(), |_| {}, bound));
    assert!(e.contains("RemoteConfig::line_timeout"), "{e}");
    hung_up(&server, 4, Duration::from_secs(5), "timed-out lines");
}

#[test]
fn a_retry_after_past_what_a_duration_holds_is_capped_not_a_panic() {
    let server = FakeServer::start(200, |n, _| {
        let busy = |after: &str| Reply::Status(429, vec![("Retry-After", after.into())], "".into());
        match n {
            0 => busy("1e20"),
            1 => busy("-5"),
            2 => busy("NaN"),
            _ => stream(&["At last."]),
        }
    });
    let begin = Instant::now();
    let (line, _) = line_within(
        config(&server.url),
        at_most(16),
        CancelToken::new(),
        |_| {},
        Duration::from_secs(10),
    );
    assert_eq!(line.expect("the fourth try answers").text, "At last.");
    assert_eq!(server.requests().len(), 4);
    // Each wait is at most eight times `retry_delay` (10 ms in these tests).
    assert!(
        begin.elapsed() < Duration::from_secs(3),
        "{:?}",
        begin.elapsed()
    );
}

#[test]
fn a_cancelled_or_timed_out_line_closes_its_connection_at_once() {
    // After its first text the server sends a byte every 100 ms and never a whole line: a
    // read timeout never fires, and the old request thread read on for as long as it went.
    let server = FakeServer::start(200, |_, _| trickle("Well", Duration::from_millis(100)));
    let mut patient = config(&server.url);
    patient.stall_timeout = Duration::from_secs(60);
    let cancel = CancelToken::new();
    let on_text = cancel.clone();
    let (line, shown) = line_within(
        patient,
        at_most(64),
        cancel,
        move |_| on_text.cancel(),
        Duration::from_secs(5),
    );
    assert_eq!(shown, "Well");
    assert_eq!(line.unwrap().stop_reason, StopReason::Cancelled);
    hung_up(&server, 1, Duration::from_secs(3), "a cancelled line");

    let mut short = config(&server.url);
    short.stall_timeout = Duration::from_millis(300);
    let (line, _) = line_within(
        short,
        at_most(64),
        CancelToken::new(),
        |_| {},
        Duration::from_secs(5),
    );
    let error = line.unwrap_err().to_string();
    assert!(error.contains("timed out mid-stream"), "{error}");
    hung_up(&server, 2, Duration::from_secs(3), "a timed-out line");
}

#[test]
fn an_event_line_too_long_is_a_typed_error() {
    // 300 KiB in one event: no chat completion chunk is that long.
    let server = FakeServer::start(200, |_, _| {
        raw(|out| out.write_all(text(&"a".repeat(300 << 10)).as_bytes()))
    });
    let (line, _) = line_within(
        config(&server.url),
        at_most(1 << 16),
        CancelToken::new(),
        |_| {},
        Duration::from_secs(10),
    );
    match line {
        Err(e @ RemoteError::EventTooLarge { limit, .. }) => {
            assert!(limit < 300 << 10);
            let shown = e.to_string();
            assert!(
                shown.contains(&server.url) && shown.contains("over"),
                "{shown}"
            );
        }
        other => panic!("{:?}", other.map(|g| g.text.len())),
    }
}

#[test]
fn a_slow_caller_holds_back_a_fast_server_rather_than_its_bytes() {
    // "Hi", then 300 keep-alive lines of 250 KiB as fast as the connection takes them. The
    // caller takes a while over "Hi": meanwhile only a bounded part of the 73 MiB may be
    // read ahead (the old client queued 256 lines, here 62 MiB).
    let written = Arc::new(AtomicUsize::new(0));
    let counted = written.clone();
    let server = FakeServer::start(200, move |_, _| {
        let counted = counted.clone();
        raw(move |out| {
            out.write_all(text("Hi.").as_bytes())?;
            let padding = format!(": {}\n", "p".repeat((250 << 10) - 3));
            for _ in 0..300 {
                out.write_all(padding.as_bytes())?;
                counted.fetch_add(padding.len(), Ordering::SeqCst);
            }
            out.write_all(event(serde_json::json!({}), Some("stop")).as_bytes())?;
            out.write_all(b"data: [DONE]\n\n")
        })
    });
    let ahead = Arc::new(AtomicUsize::new(0));
    let seen = ahead.clone();
    // Keep-alives are no text: the stall clock runs while they are taken.
    let mut patient = config(&server.url);
    patient.stall_timeout = Duration::from_secs(20);
    let (line, shown) = line_within(
        patient,
        at_most(16),
        CancelToken::new(),
        move |_| {
            std::thread::sleep(Duration::from_millis(1500));
            seen.fetch_max(written.load(Ordering::SeqCst), Ordering::SeqCst);
        },
        Duration::from_secs(30),
    );
    assert_eq!(line.expect("the line ends well").text, "Hi.");
    assert_eq!(shown, "Hi.");
    let ahead = ahead.load(Ordering::SeqCst);
    // The request's queue holds 1 MiB; the rest is the sockets' buffers.
    assert!(ahead < 32 << 20, "{} MiB read ahead", ahead >> 20);
}

#[test]
fn a_slow_reconnect_holds_up_no_other_line() {
    // The second `GET /models` (a `load` while lines are served) gets no answer for 4 s; the
    // old job server waited on it (up to the response timeout) before anything else.
    let server = FakeServer::start_with_models(
        |n| match n {
            0 => models(200),
            _ => Reply::Silent(Duration::from_secs(4)),
        },
        |_, _| stream(&["Here."]),
    );
    let mut worker = worker_on(config(&server.url));
    let done = |id: u64| move |r: &Report| matches!(r, Report::Finished { id: i, .. } | Report::Failed { id: i, .. } if *i == RequestId(id));
    worker.submit(job(1, 1, mira(), params(16, 1), line(1)));
    reports_until(&worker, Duration::from_secs(60), "the first line", done(1));
    worker.load(server.url.clone());
    let sent = Instant::now();
    worker.submit(job(2, 2, mira(), params(16, 2), line(1)));
    let seen = reports_until(&worker, Duration::from_secs(20), "the second line", done(2));
    match seen.last() {
        Some(Report::Finished { generations, .. }) => assert_eq!(generations[0].text, "Here."),
        other => panic!("{other:?}"),
    }
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "{:?}: the line waited for the check",
        sent.elapsed()
    );
}
