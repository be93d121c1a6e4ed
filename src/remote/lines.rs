//! The stream's lines between a request's HTTP thread and the caller waiting for them: a
//! queue bounded in bytes, not in lines, so that a server that sends fast (or big) cannot
//! fill the game's memory while the caller is busy. Past [`MAX_BUFFERED`] bytes not yet
//! taken, the HTTP thread stops reading and the server waits (TCP's own flow control).
//!
//! The caller's end, [`Exchange`], also holds the exchange's HTTP agent: dropping it (a
//! cancel, a timeout, a stop string, the line's end) closes the queue and shuts the agent's
//! connection down, so the HTTP thread stops at once even while a read is blocked on a
//! server that sends one byte a minute.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Result;

/// Bytes of a request's stream read but not yet taken by its caller, at most (one line
/// longer than this still goes through alone).
pub(super) const MAX_BUFFERED: usize = 1 << 20;

/// What a request's HTTP thread sends the waiting caller.
pub(super) enum Received {
    /// One line of the event stream.
    Line(String),
    /// The stream ended (`Ok`) or failed.
    End(Result<()>),
}

/// Why [`Exchange::recv_timeout`] returned no line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// Nothing arrived in time.
    Timeout,
    /// The HTTP thread ended without saying how (it panicked).
    Gone,
}

#[derive(Default)]
struct State {
    lines: VecDeque<String>,
    /// Bytes in `lines`.
    bytes: usize,
    end: Option<Result<()>>,
    /// The caller is gone: the HTTP thread stops.
    closed: bool,
    /// The HTTP thread is gone.
    ended: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    changed: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, whole after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The HTTP thread's end of the queue.
pub(super) struct LineSender(Arc<Queue>);

/// The caller's end: lines as they come, and the exchange's agent to shut down when the
/// caller stops listening.
pub(super) struct Exchange {
    queue: Arc<Queue>,
    agent: ureq::Agent,
}

/// A queue for one exchange over `agent`.
pub(super) fn exchange(agent: ureq::Agent) -> (LineSender, Exchange) {
    let queue = Arc::new(Queue::default());
    (LineSender(queue.clone()), Exchange { queue, agent })
}

impl LineSender {
    /// Queues `line`, first waiting while the caller has [`MAX_BUFFERED`] bytes to take;
    /// `false` if the caller is gone (the thread should stop).
    pub(super) fn line(&self, line: String) -> bool {
        let mut state = self.0.lock();
        while !state.closed && !state.lines.is_empty() && state.bytes + line.len() > MAX_BUFFERED {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return false;
        }
        state.bytes += line.len();
        state.lines.push_back(line);
        self.0.changed.notify_all();
        true
    }

    /// The stream ended, well or not.
    pub(super) fn end(self, result: Result<()>) {
        let mut state = self.0.lock();
        state.end = Some(result);
        self.0.changed.notify_all();
    }

    /// Whether the caller stopped listening.
    pub(super) fn abandoned(&self) -> bool {
        self.0.lock().closed
    }
}

impl Drop for LineSender {
    fn drop(&mut self) {
        self.0.lock().ended = true;
        self.0.changed.notify_all();
    }
}

impl Exchange {
    /// The next line or the end, waiting up to `timeout`.
    pub(super) fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Received, Waited> {
        let until = Instant::now() + timeout;
        let mut state = self.queue.lock();
        loop {
            if let Some(line) = state.lines.pop_front() {
                state.bytes -= line.len();
                self.queue.changed.notify_all();
                return Ok(Received::Line(line));
            }
            if let Some(end) = state.end.take() {
                return Ok(Received::End(end));
            }
            if state.ended {
                return Err(Waited::Gone);
            }
            let now = Instant::now();
            if now >= until {
                return Err(Waited::Timeout);
            }
            state = self
                .queue
                .changed
                .wait_timeout(state, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Exchange {
    /// Nobody listens any more: the HTTP thread stops, its connection closes now (the server
    /// stops generating).
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.changed.notify_all();
        self.agent.clone().shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (LineSender, Exchange) {
        exchange(ureq::Agent::new_with_defaults())
    }

    #[test]
    fn the_sender_waits_while_the_caller_holds_a_megabyte() {
        let (tx, rx) = pair();
        let big = "x".repeat(MAX_BUFFERED / 2);
        assert!(tx.line(big.clone()) && tx.line(big.clone()));
        let sent = std::thread::spawn(move || {
            let ok = tx.line("third".into());
            (ok, tx)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !sent.is_finished(),
            "a third line went past the byte budget"
        );
        assert!(
            matches!(rx.recv_timeout(Duration::ZERO), Ok(Received::Line(l)) if l.len() == big.len())
        );
        let (ok, tx) = sent.join().unwrap();
        assert!(ok);
        tx.end(Ok(()));
        assert!(matches!(
            rx.recv_timeout(Duration::ZERO),
            Ok(Received::Line(_))
        ));
        assert!(matches!(rx.recv_timeout(Duration::ZERO), Ok(Received::Line(l)) if l == "third"));
        assert!(matches!(
            rx.recv_timeout(Duration::ZERO),
            Ok(Received::End(Ok(())))
        ));
    }

    #[test]
    fn a_waiting_sender_stops_when_the_caller_goes_and_a_lost_thread_is_told() {
        let (tx, rx) = pair();
        assert!(tx.line("x".repeat(MAX_BUFFERED)));
        let sent = std::thread::spawn(move || tx.line("more".into()));
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        assert!(
            !sent.join().unwrap(),
            "the sender should see the caller gone"
        );

        let (tx, rx) = pair();
        drop(tx);
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(Waited::Gone)
        ));
        let (_tx, rx) = pair();
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(Waited::Timeout)
        ));
    }
}
