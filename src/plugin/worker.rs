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
    CancelToken, ChatMessage, Decoding, Delta, Engine, EngineConfig, EngineError, GenerateParams,
    Generation, ModelInfo, ProgressReader, SessionSlots,
};
use crate::score;

/// Tokens into a line before the fault-injection hook panics (few enough that every line
/// gets there).
const INJECTED_PANIC_AFTER: usize = 3;

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
    Generate(Box<Job>),
    /// The NPC is gone: free its cache.
    ForgetSlot(u64),
    /// Wait this long between steps (the frame pacer).
    Pace(std::time::Duration),
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
    /// Lines being generated together right now.
    pub generating: usize,
}

pub(crate) struct WorkerConfig {
    pub(crate) engine: EngineConfig,
    pub(crate) slots: usize,
    /// The most lines generated together in one batch.
    pub(crate) max_batch: usize,
    /// The most bytes all conversation caches may hold together.
    pub(crate) kv_budget: Option<usize>,
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
    /// Lines being generated together, one forward pass per step for all of them.
    active: Vec<Active>,
    /// The pacer's wait between steps.
    pause: std::time::Duration,
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
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// A line in the batch.
struct Active {
    id: RequestId,
    slot: u64,
    priority: Priority,
    cancel: CancelToken,
    decoding: Decoding,
    /// The NPC is gone: drop its session when the line ends.
    forget: bool,
    /// Test hook: this line panics three tokens in.
    #[cfg(feature = "fault-injection")]
    inject: bool,
}

/// Whether a job is one generation that can share steps with others (a line, or one
/// structured output); the rest run alone.
fn batches(job: &Job) -> bool {
    matches!(
        job.output,
        Output::Text { best_of: 1, .. }
            | Output::Structured {
                alternatives: 1,
                ..
            }
    )
}

impl Worker {
    fn new(config: WorkerConfig, reports: Sender<Report>) -> Self {
        Self {
            slots: SessionSlots::new(config.slots).with_budget(config.kv_budget),
            config,
            reports,
            engine: None,
            model_path: None,
            load_error: Some("the model has not been loaded".into()),
            queue: Vec::new(),
            active: Vec::new(),
            pause: std::time::Duration::ZERO,
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
            if self.queue.is_empty() && self.active.is_empty() {
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
            // New lines join the batch at a token boundary; a job that cannot batch (best-of
            // draws, several alternatives, scenes) waits for the batch to empty and runs alone.
            let mut changed = self.admit();
            if self.active.is_empty() {
                if let Some(job) = self.pop_best() {
                    self.run_job(job);
                    changed = true;
                }
            } else {
                changed |= self.step();
                if !self.pause.is_zero() && !self.active.is_empty() {
                    // Frames ran over their budget: give the game's threads the cores for a
                    // while, still answering commands (a cancel, the next pace).
                    match commands.recv_timeout(self.pause) {
                        Ok(cmd) => self.handle(cmd),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            if changed {
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
            Command::Generate(job) => self.queue.push((self.clock, *job)),
            Command::Pace(pause) => self.pause = pause,
            Command::ForgetSlot(slot) => {
                for a in self.active.iter_mut().filter(|a| a.slot == slot) {
                    a.forget = true;
                }
                if self.slots.forget(slot) {
                    self.report_status();
                }
            }
            #[cfg(feature = "fault-injection")]
            Command::PanicNextJob => self.panic_next = true,
        }
    }

    /// Where the highest-priority job that `eligible` accepts waits in the queue, first come
    /// first served within a priority.
    fn best(&self, eligible: impl Fn(&Job) -> bool) -> Option<usize> {
        self.queue
            .iter()
            .enumerate()
            .filter(|(_, (_, job))| eligible(job))
            .max_by(|(_, a), (_, b)| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    }

    /// The highest-priority job, first come first served within a priority.
    fn pop_best(&mut self) -> Option<Job> {
        let i = self.best(|_| true)?;
        Some(self.queue.remove(i).1)
    }

    /// Starts queued lines in the batch, best first, while there is room: the batch holds
    /// `max_batch` lines, and a [`Priority::Player`] line joins even a full one (the player
    /// never waits for background chatter). A conversation already generating waits for its
    /// line to end; a job that cannot batch stops admission so that it runs next.
    /// Whether anything changed.
    fn admit(&mut self) -> bool {
        let mut changed = false;
        loop {
            let busy: Vec<u64> = self.active.iter().map(|a| a.slot).collect();
            let Some(i) = self.best(|job| !busy.contains(&job.slot)) else {
                return changed;
            };
            let best = &self.queue[i].1;
            if best.cancel.is_cancelled() {
                self.queue.remove(i);
                changed = true;
                continue;
            }
            if !batches(best) || self.engine.is_none() {
                // Runs alone once the batch is empty (a missing model fails it there).
                return changed;
            }
            let full = self.active.len() >= self.config.max_batch.max(1);
            if full && best.priority != Priority::Player {
                return changed;
            }
            let job = self.queue.remove(i).1;
            self.start(job);
            changed = true;
        }
    }

    fn load(&mut self, path: PathBuf) {
        let _span = tracing::info_span!("load_model", path = %path.display()).entered();
        self.engine = None;
        self.model_path = Some(path.clone());
        self.slots.clear();
        // Lines of the old model cannot go on in the new one (their caches are the old
        // model's), and half of their text has been shown: they fail.
        for a in std::mem::take(&mut self.active) {
            self.report(Report::Failed {
                id: a.id,
                error: DialogueError::ModelUnavailable(
                    "another model was loaded while this line was being generated".into(),
                ),
            });
        }
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
                if inject && d.generated >= INJECTED_PANIC_AFTER {
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
                self.report(Report::Failed {
                    id,
                    error: DialogueError::WorkerCrashed(what.clone()),
                });
                self.crashed(what);
            }
        }
    }

    /// A job or a step panicked (its lines have been failed): reload the model, or give up
    /// on it after [`MAX_CRASHES`] in a row.
    fn crashed(&mut self, what: String) {
        tracing::error!("inference worker panicked: {what}; restarting it");
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
        // The engine may be half-way through anything: start again from the file, as a
        // fresh worker would. Queued lines wait for the reload.
        if let Some(path) = self.model_path.clone() {
            self.load(path);
        }
    }

    /// Starts `job` in the batch: fits its prompt, reports it started and begins decoding
    /// in its conversation's session.
    fn start(&mut self, job: Job) {
        let Some(engine) = self.engine.as_mut() else {
            return self.run_job(job);
        };
        // Fitting and rendering run under the guard: a hostile chat template must not take
        // the worker down.
        let fitted = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let prompt = engine.fit_chat(job.messages.clone(), job.params.max_tokens)?;
            let shown = engine
                .template()
                .render(&prompt.messages, true)
                .unwrap_or_default();
            Ok::<_, EngineError>((prompt, shown))
        }));
        match fitted {
            Ok(Ok((prompt, shown))) => {
                // A new conversation may start from another's cached preamble.
                let session = self.slots.take_for(job.slot, &prompt.tokens, engine);
                let _ = self.reports.send(Report::Started {
                    id: job.id,
                    prompt: shown.into(),
                });
                let grammar = match &job.output {
                    Output::Structured { grammar, .. } => Some(grammar),
                    _ => None,
                };
                let decoding = engine.begin(
                    session,
                    &prompt.tokens,
                    &job.params,
                    grammar,
                    job.cancel.clone(),
                );
                // Higher priorities first: their prompts get a step's token budget first.
                let at = self.active.partition_point(|a| a.priority >= job.priority);
                self.active.insert(
                    at,
                    Active {
                        id: job.id,
                        slot: job.slot,
                        priority: job.priority,
                        cancel: job.cancel,
                        decoding,
                        forget: false,
                        #[cfg(feature = "fault-injection")]
                        inject: std::mem::take(&mut self.panic_next),
                    },
                );
            }
            Ok(Err(e)) => {
                self.report(Report::Failed {
                    id: job.id,
                    error: engine_error(e),
                });
            }
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                self.report(Report::Failed {
                    id: job.id,
                    error: DialogueError::WorkerCrashed(what.clone()),
                });
                self.crashed(what);
            }
        }
    }

    /// Advances every line in the batch by one token (or prompt chunk) in one forward pass,
    /// streams their text and reports the lines that ended. Whether any ended.
    fn step(&mut self) -> bool {
        let Some(engine) = self.engine.as_mut() else {
            return false;
        };
        let reports = self.reports.clone();
        let lines: Vec<(RequestId, CancelToken, bool)> = self
            .active
            .iter()
            .map(|a| {
                #[cfg(feature = "fault-injection")]
                let inject = a.inject;
                #[cfg(not(feature = "fault-injection"))]
                let inject = false;
                (a.id, a.cancel.clone(), inject)
            })
            .collect();
        let active = &mut self.active;
        let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine.step(active.iter_mut().map(|a| &mut a.decoding), |i, d| {
                let (id, cancel, inject) = &lines[i];
                if *inject && d.generated >= INJECTED_PANIC_AFTER {
                    panic!("injected fault");
                }
                if !d.text.is_empty() {
                    let sent = reports.send(Report::Delta {
                        id: *id,
                        text: d.text.to_owned(),
                    });
                    if sent.is_err() {
                        // The app is gone (it quit mid-line): stop within a token.
                        cancel.cancel();
                    }
                }
            })
        }));
        if let Err(panic) = stepped {
            let what = panic_message(panic.as_ref());
            for a in std::mem::take(&mut self.active) {
                self.report(Report::Failed {
                    id: a.id,
                    error: DialogueError::WorkerCrashed(what.clone()),
                });
            }
            self.crashed(what);
            return true;
        }
        // A failed pass has ended each of its lines with the error, reported below.
        let ended: Vec<Active> = self
            .active
            .extract_if(.., |a| a.decoding.is_finished())
            .collect();
        let changed = !ended.is_empty();
        for a in ended {
            let (mut session, result) = a.decoding.finish();
            match result {
                Ok(generation) => {
                    self.crashes = 0;
                    if !a.forget {
                        self.slots.put(a.slot, session);
                    }
                    if !a.cancel.is_cancelled() {
                        self.report(Report::Finished {
                            id: a.id,
                            generations: vec![generation],
                        });
                    }
                }
                Err(e) => {
                    if !a.forget {
                        session.clear();
                        self.slots.put(a.slot, session);
                    }
                    self.report(Report::Failed {
                        id: a.id,
                        error: engine_error(e),
                    });
                }
            }
        }
        if changed && let Some(budget) = self.config.kv_budget {
            // The lines still generating count against the budget too.
            let generating: usize = self.active.iter().map(|a| a.decoding.cache_bytes()).sum();
            self.slots
                .shrink_to_bytes(budget.saturating_sub(generating));
        }
        changed
    }

    fn report_status(&self) {
        self.report(Report::Status(WorkerStatus {
            queued: self.queue.len(),
            slots_used: self.slots.len() + self.active.len(),
            slots_capacity: self.slots.capacity(),
            cache_bytes: self.slots.cache_bytes()
                + self
                    .active
                    .iter()
                    .map(|a| a.decoding.cache_bytes())
                    .sum::<usize>(),
            generating: self.active.len(),
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
        EngineError::Filtered { .. } => DialogueError::Filtered(e.to_string()),
        other => DialogueError::Inference(other.to_string()),
    }
}
