//! The inference worker: one thread that owns the engine and every conversation's cache.
//!
//! It runs on a dedicated thread rather than a task on Bevy's `AsyncComputeTaskPool`: a
//! generation blocks for seconds, and on small machines that pool has a single thread, which
//! render pipeline compilation and other async work also need. Systems talk to it only through
//! channels and never wait on it.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bevy::prelude::{Reflect, ReflectDefault};
use crossbeam_channel::{Receiver, Sender};

use super::request::{DialogueError, Priority, RequestId};
use crate::engine::{
    CancelToken, ChatMessage, Delta, Engine, EngineConfig, EngineError, GenerateParams, Generation,
    ModelInfo, ProgressReader, SessionSlots,
};
use crate::score;

/// A line (or a scene, or a decision) to generate.
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) id: RequestId,
    /// Which conversation cache to use (the NPC entity's bits).
    pub(crate) slot: u64,
    /// System prompt first, then history, then the newest user turn.
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) params: GenerateParams,
    pub(crate) priority: Priority,
    pub(crate) cancel: CancelToken,
    /// Free text, or output constrained to a grammar.
    pub(crate) output: Output,
}

/// What kind of text a job produces.
#[derive(Clone)]
pub(crate) enum Output {
    /// A free-text line; with `best_of` above 1, the best of that many draws by
    /// [`crate::score::line_score`] for `speaker`, sent whole once chosen.
    Text { best_of: usize, speaker: String },
    /// `alternatives` outputs that follow the grammar, sharing the prompt's prefill.
    Structured {
        grammar: crate::engine::Grammar,
        alternatives: usize,
    },
    /// `alternatives` scenes as prose, each followed by `choices` choices as a list
    /// ([`crate::story::write_scenes`]); reported as scene, list, scene, list, ...
    Scene { choices: usize, alternatives: usize },
}

pub(crate) enum Command {
    Load(PathBuf),
    Generate(Job),
    /// The NPC is gone: free its cache.
    ForgetSlot(u64),
    /// Test hook: the next job panics inside the worker.
    #[cfg(feature = "fault-injection")]
    PanicNextJob,
}

/// What the worker reports back.
pub(crate) enum Report {
    Loading(f32),
    Loaded(ModelInfo),
    LoadFailed(String),
    Started {
        id: RequestId,
        prompt: Arc<str>,
    },
    Delta {
        id: RequestId,
        text: String,
    },
    /// Every alternative, the first first (one for a line).
    Finished {
        id: RequestId,
        generations: Vec<Generation>,
    },
    Failed {
        id: RequestId,
        error: DialogueError,
    },
    Status(WorkerStatus),
}

/// Queue and cache figures, for debug displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Reflect)]
#[reflect(Clone, Debug, Default, PartialEq)]
pub struct WorkerStatus {
    /// Requests waiting.
    pub queued: usize,
    /// Conversations with a cache.
    pub slots_used: usize,
    /// Most conversations cached at once.
    pub slots_capacity: usize,
    /// Bytes held by all conversation caches.
    pub cache_bytes: usize,
}

pub(crate) struct WorkerConfig {
    pub(crate) engine: EngineConfig,
    pub(crate) slots: usize,
}

/// Starts the worker thread. It ends when the command channel closes.
pub(crate) fn spawn(
    config: WorkerConfig,
    commands: Receiver<Command>,
    reports: Sender<Report>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("llm-dialogue-worker".into())
        .spawn(move || {
            let _running = Running::start();
            Worker::new(config, reports).run(commands);
        })
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

/// How many inference worker threads are running in this process (one per app with the
/// plugin; it drops to zero when the apps are gone).
pub fn running_workers() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

struct Worker {
    config: WorkerConfig,
    reports: Sender<Report>,
    engine: Option<Engine>,
    /// The model file, to reload after a crash.
    model_path: Option<PathBuf>,
    load_error: Option<String>,
    queue: Vec<(u64, Job)>,
    slots: SessionSlots,
    clock: u64,
    /// Jobs that panicked in a row (the model is reloaded after each, up to [`MAX_CRASHES`]).
    crashes: u32,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

/// Panics in a row after which the worker stops reloading the model and reports it failed.
const MAX_CRASHES: u32 = 3;

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

impl Worker {
    fn new(config: WorkerConfig, reports: Sender<Report>) -> Self {
        Self {
            slots: SessionSlots::new(config.slots),
            config,
            reports,
            engine: None,
            model_path: None,
            load_error: Some("the model has not been loaded".into()),
            queue: Vec::new(),
            clock: 0,
            crashes: 0,
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        }
    }

    fn report(&self, report: Report) {
        // The app may be gone; then there is nobody to tell.
        let _ = self.reports.send(report);
    }

    fn run(mut self, commands: Receiver<Command>) {
        loop {
            if self.queue.is_empty() {
                match commands.recv() {
                    Ok(cmd) => self.handle(cmd),
                    // The app is gone.
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    // The app is gone: drop the queue rather than compute for nobody.
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            if let Some(job) = self.pop_best() {
                self.run_job(job);
                self.report_status();
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.clock += 1;
        match cmd {
            Command::Load(path) => {
                // A model the game asks for gets a fresh crash budget; reloads after a crash
                // do not.
                self.crashes = 0;
                self.load(path);
            }
            Command::Generate(job) => self.queue.push((self.clock, job)),
            Command::ForgetSlot(slot) => {
                if self.slots.forget(slot) {
                    self.report_status();
                }
            }
            #[cfg(feature = "fault-injection")]
            Command::PanicNextJob => self.panic_next = true,
        }
    }

    /// The highest-priority job, first come first served within a priority.
    fn pop_best(&mut self) -> Option<Job> {
        let best = self
            .queue
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)?;
        Some(self.queue.remove(best).1)
    }

    fn load(&mut self, path: PathBuf) {
        let _span = tracing::info_span!("load_model", path = %path.display()).entered();
        self.engine = None;
        self.model_path = Some(path.clone());
        self.slots.clear();
        self.report(Report::Loading(0.0));
        let result = crate::engine::open_model_file(&path).and_then(|file| {
            let reports = self.reports.clone();
            let reader = ProgressReader::new(std::io::BufReader::new(file), move |f| {
                let _ = reports.send(Report::Loading(f));
            })?;
            let name = path.display().to_string();
            let config = self.config.engine.clone();
            // A hostile file that makes a dependency panic fails the load; it must not
            // kill the thread (which would restart and load the same file forever).
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                Engine::from_reader(reader, &name, config)
            }))
            .unwrap_or_else(|panic| {
                Err(EngineError::InvalidGguf {
                    file: name.clone(),
                    reason: format!("it crashed the loader: {}", panic_message(panic.as_ref())),
                })
            })
        });
        match result {
            Ok(engine) => {
                self.load_error = None;
                self.report(Report::Loading(1.0));
                self.report(Report::Loaded(engine.info().clone()));
                self.engine = Some(engine);
            }
            Err(e) => {
                tracing::error!("model failed to load: {e}");
                self.load_error = Some(e.to_string());
                self.report(Report::LoadFailed(e.to_string()));
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        if job.cancel.is_cancelled() {
            return;
        }
        let Some(engine) = self.engine.as_mut() else {
            let reason = self.load_error.clone().unwrap_or_default();
            self.report(Report::Failed {
                id: job.id,
                error: DialogueError::ModelUnavailable(reason),
            });
            return;
        };
        let mut session = self.slots.take(job.slot, engine);

        #[cfg(feature = "fault-injection")]
        let inject = std::mem::take(&mut self.panic_next);
        let reports = self.reports.clone();
        let id = job.id;
        let cancel = job.cancel.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // Fitting and rendering run under the guard too: a hostile chat template must
            // not take the worker down.
            let prompt = engine.fit_chat(job.messages, job.params.max_tokens)?;
            let shown = engine
                .template()
                .render(&prompt.messages, true)
                .unwrap_or_default();
            let _ = reports.send(Report::Started {
                id,
                prompt: shown.into(),
            });
            let send = |d: &Delta<'_>| {
                #[cfg(feature = "fault-injection")]
                if inject && d.generated >= 3 {
                    panic!("injected fault");
                }
                if !d.text.is_empty() {
                    let sent = reports.send(Report::Delta {
                        id,
                        text: d.text.to_owned(),
                    });
                    if sent.is_err() {
                        // The app is gone (it quit mid-line): stop within a token.
                        cancel.cancel();
                    }
                }
            };
            match &job.output {
                Output::Text { best_of: 1, .. } => engine
                    .generate(&mut session, &prompt.tokens, &job.params, &job.cancel, send)
                    .map(|g| vec![g]),
                Output::Text { best_of, speaker } => score::best_line(
                    engine,
                    &mut session,
                    &prompt.tokens,
                    &job.params,
                    *best_of,
                    speaker,
                    &job.cancel,
                )
                .map(|g| {
                    // Sent whole once chosen: the draws cannot stream.
                    send(&Delta {
                        text: &g.text,
                        token: None,
                        generated: g.stats.generated_tokens,
                    });
                    vec![g]
                }),
                Output::Structured {
                    grammar,
                    alternatives,
                } => engine.generate_alternatives(
                    &mut session,
                    &prompt.tokens,
                    &job.params,
                    Some(grammar),
                    *alternatives,
                    &job.cancel,
                    |i, d| {
                        if i == 0 {
                            send(d);
                        }
                    },
                ),
                Output::Scene {
                    choices,
                    alternatives,
                } => crate::story::write_scenes(
                    engine,
                    &mut session,
                    &prompt,
                    *choices,
                    &job.params,
                    *alternatives,
                    &job.cancel,
                    send,
                )
                .map(|drafts| {
                    drafts
                        .into_iter()
                        .flat_map(|d| [d.scene, d.choices])
                        .collect()
                }),
            }
        }));
        match result {
            Ok(Ok(generations)) => {
                self.crashes = 0;
                self.slots.put(job.slot, session);
                if !job.cancel.is_cancelled() {
                    self.report(Report::Finished { id, generations });
                }
            }
            Ok(Err(e)) => {
                session.clear();
                self.slots.put(job.slot, session);
                self.report(Report::Failed {
                    id,
                    error: engine_error(e),
                });
            }
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!("inference worker panicked: {what}; restarting it");
                self.report(Report::Failed {
                    id,
                    error: DialogueError::WorkerCrashed(what.clone()),
                });
                self.crashes += 1;
                if self.crashes >= MAX_CRASHES {
                    // The same model keeps crashing: reloading it forever would only spin.
                    let reason = format!(
                        "the model crashed the worker {MAX_CRASHES} times in a row (last: {what}); load another model"
                    );
                    tracing::error!("{reason}");
                    self.engine = None;
                    self.slots.clear();
                    self.load_error = Some(reason.clone());
                    self.report(Report::LoadFailed(reason));
                    return;
                }
                // The engine may be half-way through anything: start again from the file,
                // as a fresh worker would. Queued lines wait for the reload.
                if let Some(path) = self.model_path.clone() {
                    self.load(path);
                }
            }
        }
    }

    fn report_status(&self) {
        self.report(Report::Status(WorkerStatus {
            queued: self.queue.len(),
            slots_used: self.slots.len(),
            slots_capacity: self.slots.capacity(),
            cache_bytes: self.slots.cache_bytes(),
        }));
    }
}

pub(crate) fn engine_error(e: EngineError) -> DialogueError {
    match e {
        EngineError::ContextOverflow { tokens, n_ctx } => {
            DialogueError::ContextOverflow { tokens, n_ctx }
        }
        EngineError::InvalidParameter { .. } => DialogueError::InvalidRequest(e.to_string()),
        EngineError::Template(_) => DialogueError::Template(e.to_string()),
        EngineError::Grammar(_) => DialogueError::Structure(e.to_string()),
        other => DialogueError::Inference(other.to_string()),
    }
}
