//! The job server: one loop, whatever generates the tokens. It takes commands, keeps the
//! queue, admits jobs to its [`Backend`] in priority order, advances the backend's running
//! work, and recovers from crashes: a job that panics fails alone, the model is reloaded,
//! and after [`MAX_CRASHES`] crashes in a row the model is given up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::protocol::{Command, Job, Report, WorkerError, WorkerStatus};
use super::queue::Queue;
use super::recipe::Outbox;
use crate::engine::ModelInfo;

/// Panics in a row after which the server stops reloading the model and reports it failed.
pub const MAX_CRASHES: u32 = 3;

/// Whether a job may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Beside what is running.
    Now,
    /// Once nothing else runs (it holds the engine alone); nothing after it is admitted
    /// before it.
    Alone,
    /// Not while this much runs.
    Full,
}

/// What work running away from the server's thread tells it, through [`Backend::wake`].
#[derive(Debug)]
pub(crate) enum Woken {
    /// The conversation's job ended.
    Ended(u64),
    /// A load that went on elsewhere ended; the backend's [`Backend::loaded`] takes it.
    #[cfg_attr(
        not(feature = "remote"),
        expect(
            dead_code,
            reason = "only the remote backend loads away from the server"
        )
    )]
    Loaded {
        /// Which load, as the backend numbers them.
        attempt: u64,
        /// The model's figures, or why it failed.
        result: Result<ModelInfo, String>,
    },
}

/// What generates for the server: the local engine with its batch, or an inference server.
/// A backend that runs work in the server's thread advances it in [`Backend::step`]; one
/// that runs it elsewhere says so through [`Backend::wake`].
pub(crate) trait Backend {
    /// Loads the model at `target` (or connects to the server), reporting progress through
    /// `out`; the model's figures, or why it failed. `Ok(None)`: the load goes on away from
    /// this thread (a server's check over the network, which must not hold up the jobs
    /// and cancels of the others) and its result comes through [`Backend::wake`].
    fn load(&mut self, target: &Path, out: &Outbox) -> Result<Option<ModelInfo>, String>;
    /// A load that went on elsewhere ended: the result to report, or `None` if a later load
    /// has replaced it.
    fn loaded(
        &mut self,
        _attempt: u64,
        result: Result<ModelInfo, String>,
    ) -> Option<Result<ModelInfo, String>> {
        Some(result)
    }
    /// Drops the model (it crashed too often).
    fn unload(&mut self);
    /// Whether a model is ready.
    fn is_loaded(&self) -> bool;
    /// Whether `job` may start beside what runs now.
    fn admits(&self, job: &Job) -> Admit;
    /// Whether the conversation `slot` has a job running (its next waits).
    fn busy(&self, slot: u64) -> bool;
    /// How many jobs run.
    fn running(&self) -> usize;
    /// Starts `job` (it may run to its end first). `Err`: it panicked, its jobs have been
    /// failed, and the model must be reloaded; the message says what the panic said.
    fn start(&mut self, job: Job, inject: bool, out: &Outbox) -> Result<(), String>;
    /// Whether [`Backend::step`] has work to do.
    fn stepping(&self) -> bool {
        false
    }
    /// Advances the running jobs by one step; whether any ended. `Err` as for `start`.
    fn step(&mut self, _out: &Outbox) -> Result<bool, String> {
        Ok(false)
    }
    /// A channel on which work running elsewhere says its conversation is free again, or
    /// that a load ended.
    fn wake(&self) -> Option<Receiver<Woken>> {
        None
    }
    /// The conversation `slot`'s job ended elsewhere.
    fn ended(&mut self, _slot: u64) {}
    /// The conversation is over: free its cache; whether one was freed.
    fn forget(&mut self, _slot: u64) -> bool {
        false
    }
    /// Cache and batch figures (the server fills in the queue).
    fn status(&self) -> WorkerStatus;
}

/// The loop that serves jobs with a backend.
pub(crate) struct Server<B> {
    backend: B,
    out: Outbox,
    queue: Queue,
    /// The model, to reload after a crash.
    model: Option<PathBuf>,
    /// Why no model is ready.
    load_error: Option<String>,
    /// A load goes on elsewhere: jobs wait for it rather than fail.
    loading: bool,
    /// Jobs that panicked in a row.
    crashes: u32,
    /// The frame pacer's wait between steps.
    pause: Duration,
    /// Test hook: the next job panics.
    panic_next: bool,
}

impl<B: Backend> Server<B> {
    pub(crate) fn new(backend: B, out: Outbox) -> Self {
        Self {
            backend,
            out,
            queue: Queue::default(),
            model: None,
            load_error: Some("the model has not been loaded".into()),
            loading: false,
            crashes: 0,
            pause: Duration::ZERO,
            panic_next: false,
        }
    }

    /// Serves until the command channel closes (the caller is gone).
    pub(crate) fn run(mut self, commands: Receiver<Command>) {
        let wake = self.backend.wake();
        loop {
            let mut changed = self.admit();
            if self.backend.stepping() {
                changed |= match self.backend.step(&self.out) {
                    Ok(ended) => ended,
                    Err(what) => {
                        self.crashed(what);
                        true
                    }
                };
                if !self.pause.is_zero() && self.backend.stepping() {
                    // Frames ran over their budget: give the game's threads the cores for a
                    // while, still answering commands (a cancel, the next pace).
                    match commands.recv_timeout(self.pause) {
                        Ok(cmd) => changed |= self.handle(cmd),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            } else {
                if changed {
                    self.report_status();
                }
                // Nothing to compute here: wait for a command, or for work elsewhere to end.
                changed = match wait(&commands, wake.as_ref()) {
                    Some(Woke::Command(cmd)) => self.handle(cmd),
                    Some(Woke::Backend(woken)) => self.woken(woken),
                    None => return,
                };
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => changed |= self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    // The caller is gone: drop the queue rather than compute for nobody.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            for woken in wake.iter().flat_map(|w| w.try_iter()) {
                changed |= self.woken(woken);
            }
            if changed {
                self.report_status();
            }
        }
    }

    /// Whether the queue or caches changed.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Load(path) => {
                // A model the caller asks for gets a fresh crash budget; reloads after a
                // crash do not.
                self.crashes = 0;
                self.load(path);
            }
            Command::Generate(mut job) => {
                job.answer_recall();
                self.queue.push(*job);
            }
            Command::Pace(pause) => self.pause = pause,
            Command::ForgetSlot(slot) => return self.backend.forget(slot),
            #[cfg(feature = "fault-injection")]
            Command::PanicNextJob => self.panic_next = true,
        }
        true
    }

    /// Work running elsewhere said something; whether anything changed.
    fn woken(&mut self, woken: Woken) -> bool {
        match woken {
            Woken::Ended(slot) => self.backend.ended(slot),
            Woken::Loaded { attempt, result } => match self.backend.loaded(attempt, result) {
                Some(result) => self.load_done(result),
                None => return false,
            },
        }
        true
    }

    fn load(&mut self, path: PathBuf) {
        self.model = Some(path.clone());
        self.out.send(Report::Loading(0.0));
        match self.backend.load(&path, &self.out) {
            Ok(None) => self.loading = true,
            Ok(Some(info)) => self.load_done(Ok(info)),
            Err(e) => self.load_done(Err(e)),
        }
    }

    /// A load ended: report it, and serve or fail the jobs that waited for it.
    fn load_done(&mut self, result: Result<ModelInfo, String>) {
        self.loading = false;
        match result {
            Ok(info) => {
                self.load_error = None;
                self.out.send(Report::Loading(1.0));
                self.out.send(Report::Loaded(info));
            }
            Err(e) => {
                tracing::error!("model failed to load: {e}");
                self.load_error = Some(e.clone());
                self.out.send(Report::LoadFailed(e));
            }
        }
    }

    /// Starts queued jobs, best first, while the backend has room; a conversation already
    /// generating waits for its job to end. Whether anything changed.
    fn admit(&mut self) -> bool {
        let mut changed = false;
        loop {
            let backend = &self.backend;
            let free = |job: &Job| !backend.busy(job.slot);
            let Some(best) = self.queue.peek_best(free) else {
                return changed;
            };
            let ready = backend.is_loaded() && self.load_error.is_none();
            if !ready && self.loading {
                return changed;
            }
            let admit = if ready {
                backend.admits(best)
            } else {
                Admit::Alone
            };
            match admit {
                Admit::Now => {}
                Admit::Alone if backend.running() == 0 => {}
                Admit::Alone | Admit::Full => return changed,
            }
            let Some(job) = self.queue.pop_best(free) else {
                return changed;
            };
            changed = true;
            if !ready {
                let reason = self.load_error.clone().unwrap_or_default();
                self.out.send(Report::Failed {
                    id: job.id,
                    error: WorkerError::ModelUnavailable(reason),
                });
                continue;
            }
            let inject = std::mem::take(&mut self.panic_next);
            if let Err(what) = self.backend.start(job, inject, &self.out) {
                self.crashed(what);
            }
        }
    }

    /// A job panicked (its jobs have been failed): reload the model, or give up on it
    /// after [`MAX_CRASHES`] in a row.
    fn crashed(&mut self, what: String) {
        tracing::error!("inference worker panicked: {what}; restarting it");
        self.crashes += 1;
        if self.crashes >= MAX_CRASHES {
            // The same model keeps crashing: reloading it forever would only spin.
            let reason = format!(
                "the model crashed the worker {MAX_CRASHES} times in a row (last: {what}); load another model"
            );
            tracing::error!("{reason}");
            self.backend.unload();
            self.load_error = Some(reason.clone());
            self.out.send(Report::LoadFailed(reason));
            return;
        }
        // The engine may be half-way through anything: start again from the file, as a
        // fresh worker would. Queued jobs wait for the reload.
        if let Some(path) = self.model.clone() {
            self.load(path);
        }
    }

    fn report_status(&self) {
        self.out.send(Report::Status(WorkerStatus {
            queued: self.queue.len(),
            ..self.backend.status()
        }));
    }
}

/// What woke an idle server.
enum Woke {
    Command(Command),
    Backend(Woken),
}

/// Waits for a command or for work running elsewhere to end; `None` when the caller is gone.
fn wait(commands: &Receiver<Command>, wake: Option<&Receiver<Woken>>) -> Option<Woke> {
    let Some(wake) = wake else {
        return commands.recv().ok().map(Woke::Command);
    };
    crossbeam_channel::select! {
        recv(commands) -> cmd => cmd.ok().map(Woke::Command),
        recv(wake) -> woken => Some(Woke::Backend(woken.unwrap_or(Woken::Ended(u64::MAX)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CancelToken, GenerateParams, Generation, GenerationStats, StopReason};
    use crate::worker::{Output, Priority, RequestId};
    use std::sync::{Arc, Mutex};

    /// Runs each job to its end in `start`, recording the order; a job whose slot is 99
    /// panics. A scheduler test needs no model.
    struct Recorder {
        order: Arc<Mutex<Vec<u64>>>,
        loads: u32,
    }

    impl Backend for Recorder {
        fn load(&mut self, _: &Path, _: &Outbox) -> Result<Option<ModelInfo>, String> {
            self.loads += 1;
            Ok(Some(ModelInfo {
                file: "scripted".into(),
                architecture: "none".into(),
                name: None,
                train_context: 64,
                n_ctx: 64,
                vocab_size: 2,
                prefix_reuse: false,
            }))
        }
        fn unload(&mut self) {}
        fn is_loaded(&self) -> bool {
            true
        }
        fn admits(&self, _: &Job) -> Admit {
            Admit::Now
        }
        fn busy(&self, _: u64) -> bool {
            false
        }
        fn running(&self) -> usize {
            0
        }
        fn start(&mut self, job: Job, _: bool, out: &Outbox) -> Result<(), String> {
            if job.slot == 99 {
                out.send(Report::Failed {
                    id: job.id,
                    error: WorkerError::Crashed("boom".into()),
                });
                return Err("boom".into());
            }
            self.order.lock().unwrap().push(job.id.0);
            out.finished(
                &job,
                Ok(vec![Generation {
                    text: "Hi.".into(),
                    tokens: vec![1],
                    stop_reason: StopReason::Eos,
                    stats: GenerationStats::default(),
                    filtered: Vec::new(),
                }]),
            );
            Ok(())
        }
        fn status(&self) -> WorkerStatus {
            WorkerStatus::default()
        }
    }

    fn job(id: u64, slot: u64, priority: Priority) -> Command {
        Command::Generate(Box::new(Job {
            recall: None,
            id: RequestId(id),
            slot,
            messages: Vec::new(),
            params: GenerateParams::default(),
            priority,
            cancel: CancelToken::new(),
            output: Output::Text {
                best_of: 1,
                speaker: String::new(),
            },
        }))
    }

    /// Reports until `done` says so (bounded).
    fn collect(reports: &Receiver<Report>, done: impl Fn(&[Report]) -> bool) -> Vec<Report> {
        let mut seen = Vec::new();
        while !done(&seen) {
            match reports.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => seen.push(r),
                Err(_) => panic!("the server stopped reporting; got {seen:?}"),
            }
        }
        seen
    }

    /// A server that finds `first` already waiting when it starts.
    fn spawn(
        first: Vec<Command>,
    ) -> (
        crossbeam_channel::Sender<Command>,
        Receiver<Report>,
        Arc<Mutex<Vec<u64>>>,
    ) {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        for cmd in first {
            cmd_tx.send(cmd).unwrap();
        }
        let (rep_tx, rep_rx) = crossbeam_channel::unbounded();
        let order = Arc::new(Mutex::new(Vec::new()));
        let backend = Recorder {
            order: order.clone(),
            loads: 0,
        };
        std::thread::spawn(move || Server::new(backend, Outbox(rep_tx)).run(cmd_rx));
        (cmd_tx, rep_rx, order)
    }

    fn finished(reports: &[Report]) -> usize {
        reports
            .iter()
            .filter(|r| matches!(r, Report::Finished { .. } | Report::Failed { .. }))
            .count()
    }

    #[test]
    fn jobs_waiting_together_are_served_by_priority_then_arrival() {
        // All wait while the model loads, then go best first.
        let (commands, reports, order) = spawn(vec![
            job(1, 1, Priority::Background),
            job(2, 2, Priority::Normal),
            job(3, 3, Priority::Player),
            job(4, 4, Priority::Normal),
            Command::Load("model".into()),
        ]);
        collect(&reports, |r| finished(r) == 4);
        assert_eq!(*order.lock().unwrap(), [3, 2, 4, 1]);
        commands.send(job(5, 1, Priority::Background)).unwrap();
        commands.send(job(6, 2, Priority::Player)).unwrap();
        collect(&reports, |r| finished(r) == 2);
        let served = order.lock().unwrap().clone();
        assert!(served.ends_with(&[5, 6]) || served.ends_with(&[6, 5]));
    }

    #[test]
    fn a_crash_fails_its_job_reloads_and_three_in_a_row_give_the_model_up() {
        let (commands, reports, _) = spawn(vec![Command::Load("model".into())]);
        collect(&reports, |r| {
            r.iter().any(|r| matches!(r, Report::Loaded(_)))
        });
        for id in 0..3 {
            commands.send(job(id, 99, Priority::Normal)).unwrap();
        }
        let seen = collect(&reports, |r| {
            r.iter().any(|r| matches!(r, Report::LoadFailed(_)))
        });
        let crashed = seen
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Report::Failed {
                        error: WorkerError::Crashed(_),
                        ..
                    }
                )
            })
            .count();
        let reloads = seen
            .iter()
            .filter(|r| matches!(r, Report::Loaded(_)))
            .count();
        assert_eq!((crashed, reloads), (3, 2), "{seen:?}");
        // Without a model, the next job fails at once with the reason.
        commands.send(job(9, 1, Priority::Normal)).unwrap();
        let seen = collect(&reports, |r| finished(r) == 1);
        assert!(seen.iter().any(|r| matches!(
            r,
            Report::Failed { error: WorkerError::ModelUnavailable(why), .. } if why.contains("3 times")
        )));
    }
}
