//! The inference worker: a thread that owns the model and serves jobs (lines, structured
//! outputs, scenes) in priority order, batching lines that can share a forward pass, and
//! recovering from crashes. It knows nothing of Bevy: the plugin is one front end of it; a
//! tool or a game without Bevy can use it directly.
//!
//! The parts, as llama.cpp's server keeps them apart: the [protocol](Job) (jobs, commands,
//! reports), the queue, the job server (one loop over a small backend trait that the local
//! engine and the remote client both implement) and the job recipes (best-of draws,
//! alternatives, scenes), written once.
//!
//! It runs on a dedicated thread rather than a task on an async pool: a generation blocks
//! for seconds, and on small machines such a pool has a single thread, which a game's
//! render pipeline compilation and other async work also need. Callers talk to it only
//! through channels and never wait on it.
//!
//! ```no_run
//! use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, GenerateParams};
//! use bevy_llm_dialogue::worker::{Job, Output, Priority, Report, RequestId, Worker, WorkerConfig};
//!
//! let mut worker = Worker::spawn(WorkerConfig::default());
//! worker.load("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
//! worker.submit(Job {
//!     id: RequestId(1),
//!     slot: 1, // the conversation: its cache is kept for its next line
//!     messages: vec![ChatMessage::system("You are Mira, a blacksmith."), ChatMessage::user("Hello!")],
//!     params: GenerateParams::default(),
//!     priority: Priority::Normal,
//!     cancel: CancelToken::new(),
//!     output: Output::Text { best_of: 1, speaker: "Mira".into() },
//!     recall: None, // no episodic memory to search
//! });
//! loop {
//!     match worker.recv_timeout(std::time::Duration::from_secs(60)) {
//!         Ok(Some(Report::Delta { text, .. })) => print!("{text}"),
//!         Ok(Some(Report::Finished { .. } | Report::Failed { .. })) | Err(_) => break,
//!         _ => {}
//!     }
//! }
//! ```

mod local;
mod protocol;
mod queue;
mod recipe;
#[cfg(feature = "remote")]
mod remote;
mod server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

pub use local::LocalConfig;
pub use protocol::{Command, Job, Output, Priority, Report, RequestId, WorkerError, WorkerStatus};
pub use server::MAX_CRASHES;

/// What a worker serves from.
#[derive(Clone, Debug, Default)]
pub struct WorkerConfig {
    /// The local model's settings.
    pub local: LocalConfig,
    /// Serve every job from this inference server instead of a local model (`local` is
    /// then unused). `None`: the local model.
    #[cfg(feature = "remote")]
    pub remote: Option<crate::remote::RemoteConfig>,
}

/// The worker thread has stopped (it crashed outside a job, or could not start):
/// [`Worker::restart`] starts another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the inference worker thread stopped")]
pub struct WorkerStopped;

/// Restarts of the worker thread within [`RESTART_WINDOW`] after which it is left stopped: a
/// model or input that kills it every time would otherwise restart it forever.
pub const MAX_RESTARTS: usize = 3;

/// The window [`MAX_RESTARTS`] counts restarts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A handle to the worker thread: its channels, and what is needed to start it again. The
/// thread ends when the handle is dropped (within a token of the line it is on).
pub struct Worker {
    config: WorkerConfig,
    commands: Sender<Command>,
    reports: Receiver<Report>,
    /// The model last asked for, reloaded if the thread has to be restarted.
    model: Option<PathBuf>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When the thread was last restarted, newest last (at most [`MAX_RESTARTS`]).
    restarts: Vec<Instant>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("model", &self.model)
            .field(
                "running",
                &self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            )
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the worker thread. It has no model until [`Worker::load`]: jobs fail with
    /// [`WorkerError::ModelUnavailable`] until then.
    pub fn spawn(config: WorkerConfig) -> Self {
        let (commands, reports, thread) = start(&config);
        Self {
            config,
            commands,
            reports,
            model: None,
            thread,
            restarts: Vec::new(),
        }
    }

    /// Loads a model file (or, with a remote backend, checks that the server answers):
    /// reported as [`Report::Loading`], then [`Report::Loaded`] or [`Report::LoadFailed`].
    /// Jobs queued meanwhile wait for it.
    pub fn load(&mut self, path: impl Into<PathBuf>) {
        let path = path.into();
        // A new model gets a new restart budget.
        self.restarts.clear();
        self.model = Some(path.clone());
        self.send(Command::Load(path));
    }

    /// Queues a job; its reports carry its id.
    pub fn submit(&mut self, job: Job) {
        self.send(Command::Generate(Box::new(job)));
    }

    /// Sends a command, restarting a stopped thread (within [`MAX_RESTARTS`]) to take it.
    pub fn send(&mut self, cmd: Command) {
        if let Err(crossbeam_channel::SendError(cmd)) = self.commands.send(cmd)
            && self.restart()
        {
            let _ = self.commands.send(cmd);
        }
    }

    /// The next report, if one is waiting; never blocks.
    pub fn try_recv(&self) -> Result<Option<Report>, WorkerStopped> {
        match self.reports.try_recv() {
            Ok(report) => Ok(Some(report)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(WorkerStopped),
        }
    }

    /// The next report, waiting at most `timeout` (for tools and tests; a game's frame
    /// should use [`Worker::try_recv`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Report>, WorkerStopped> {
        match self.reports.recv_timeout(timeout) {
            Ok(report) => Ok(Some(report)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerStopped),
        }
    }

    /// Starts a new thread (reloading the model) unless [`MAX_RESTARTS`] restarts happened
    /// within [`RESTART_WINDOW`]; returns whether it did. Jobs the old thread held are lost:
    /// the caller fails them.
    pub fn restart(&mut self) -> bool {
        let now = Instant::now();
        self.restarts
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            return false;
        }
        self.restarts.push(now);
        tracing::warn!("restarting the inference worker");
        let (commands, reports, thread) = start(&self.config);
        self.commands = commands;
        self.reports = reports;
        self.thread = thread;
        if let Some(path) = self.model.clone() {
            let _ = self.commands.send(Command::Load(path));
        }
        true
    }

    /// The model last asked for.
    pub fn model(&self) -> Option<&std::path::Path> {
        self.model.as_deref()
    }
}

impl Drop for Worker {
    /// Hangs up, and gives the thread a moment to stop. It notices at the next token (its
    /// reports have nowhere to go) and drops its queue.
    fn drop(&mut self) {
        let (dead_tx, _) = crossbeam_channel::unbounded();
        let (_, dead_rx) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.commands, dead_tx));
        drop(std::mem::replace(&mut self.reports, dead_rx));
        if let Some(thread) = self.thread.take() {
            let start = Instant::now();
            while !thread.is_finished() && start.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("the inference worker is still busy at exit; leaving it");
            }
        }
    }
}

type Started = (
    Sender<Command>,
    Receiver<Report>,
    Option<std::thread::JoinHandle<()>>,
);

/// Starts a worker thread. It ends when the command channel closes.
fn start(config: &WorkerConfig) -> Started {
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (rep_tx, rep_rx) = crossbeam_channel::unbounded();
    let out = recipe::Outbox(rep_tx);
    #[cfg(feature = "remote")]
    if let Some(remote) = config.remote.clone() {
        let thread = std::thread::Builder::new()
            .name("llm-dialogue-remote".into())
            .spawn(move || {
                let _running = Running::start();
                server::Server::new(remote::Remote::new(remote), out).run(cmd_rx);
            })
            .inspect_err(|e| tracing::error!("cannot start the remote backend's thread: {e}"))
            .ok();
        return (cmd_tx, rep_rx, thread);
    }
    let local = config.local.clone();
    let thread = std::thread::Builder::new()
        .name("llm-dialogue-worker".into())
        .spawn(move || {
            let _running = Running::start();
            local.engine.priority.apply_to_current_thread();
            server::Server::new(local::Local::new(local), out).run(cmd_rx);
        })
        .inspect_err(|e| tracing::error!("cannot start the inference worker thread: {e}"))
        .ok();
    (cmd_tx, rep_rx, thread)
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts a worker thread in [`RUNNING`] for as long as it lives, panics included.
struct Running;

impl Running {
    fn start() -> Self {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many inference worker threads are running in this process (one per [`Worker`]; it
/// drops to zero when they are gone).
pub fn running_workers() -> usize {
    RUNNING.load(Ordering::SeqCst)
}
