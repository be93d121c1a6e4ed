//! The app's end of the inference worker: its channels, starting it, restarting it when it
//! dies, and letting it go when the app closes.

use std::path::PathBuf;

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender};

use super::worker::{self, Command, Report, WorkerConfig};
use crate::engine::EngineConfig;

/// What the worker is started with.
pub(crate) struct WorkerSpec {
    pub(crate) engine: EngineConfig,
    pub(crate) slots: usize,
    pub(crate) max_batch: usize,
    pub(crate) kv_budget: Option<usize>,
    pub(crate) asset_base: PathBuf,
    pub(crate) model: Option<PathBuf>,
    /// Serve requests from this inference server instead of a local model.
    #[cfg(feature = "remote")]
    pub(crate) remote: Option<crate::remote::RemoteConfig>,
}

/// The channels to the worker thread, and what is needed to start it again.
#[derive(Resource)]
pub(crate) struct WorkerLink {
    pub(crate) spec: WorkerSpec,
    commands: Sender<Command>,
    pub(crate) reports: Receiver<Report>,
    /// The model last asked for, reloaded if the worker has to be restarted.
    model: Option<PathBuf>,
    /// Whether a load was asked for that has not been announced yet.
    pub(crate) announce_load: bool,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When the worker was last restarted, newest last (at most [`MAX_RESTARTS`]).
    restarts: Vec<std::time::Instant>,
}

/// Restarts of the worker within [`RESTART_WINDOW`] after which it is left stopped: a model
/// or input that kills it every time would otherwise restart it forever.
pub(crate) const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for WorkerLink {
    /// The app is closing: hang up, and give the worker a moment to stop. It notices at the
    /// next token (its reports have nowhere to go) and drops its queue.
    fn drop(&mut self) {
        let (dead_tx, _) = crossbeam_channel::unbounded();
        let (_, dead_rx) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.commands, dead_tx));
        drop(std::mem::replace(&mut self.reports, dead_rx));
        if let Some(thread) = self.thread.take() {
            let start = std::time::Instant::now();
            while !thread.is_finished() && start.elapsed() < std::time::Duration::from_secs(2) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("the inference worker is still busy at exit; leaving it");
            }
        }
    }
}

impl WorkerLink {
    pub(crate) fn new(spec: WorkerSpec) -> Self {
        let model = spec.model.clone().map(|p| resolve(&spec.asset_base, p));
        // A server has its model: "loading" it checks that the server answers.
        #[cfg(feature = "remote")]
        let model = match &spec.remote {
            Some(remote) => Some(PathBuf::from(&remote.base_url)),
            None => model,
        };
        let (commands, reports, thread) = start(&spec);
        let mut link = Self {
            spec,
            commands,
            reports,
            model: None,
            announce_load: false,
            thread,
            restarts: Vec::new(),
        };
        if let Some(path) = model {
            link.load(path);
        }
        link
    }

    pub(crate) fn load(&mut self, path: PathBuf) {
        // A new model gets a new restart budget.
        self.restarts.clear();
        self.model = Some(path.clone());
        self.announce_load = true;
        self.send(Command::Load(path));
    }

    pub(crate) fn send(&mut self, cmd: Command) {
        if let Err(crossbeam_channel::SendError(cmd)) = self.commands.send(cmd)
            // The worker is gone (it only stops when its channel closes or it crashed).
            && self.restart()
        {
            let _ = self.commands.send(cmd);
        }
    }

    /// Starts a new worker (reloading the model) unless [`MAX_RESTARTS`] restarts happened
    /// within the last minute; returns whether it did.
    pub(crate) fn restart(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.restarts
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            return false;
        }
        self.restarts.push(now);
        tracing::warn!("restarting the inference worker");
        let (commands, reports, thread) = start(&self.spec);
        self.commands = commands;
        self.reports = reports;
        self.thread = thread;
        if let Some(path) = self.model.clone() {
            self.announce_load = true;
            let _ = self.commands.send(Command::Load(path));
        }
        true
    }

    /// Test hook: the worker panics on its next line.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_panic(&mut self) {
        self.send(Command::PanicNextJob);
    }
}

pub(crate) fn resolve(base: &std::path::Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

type Started = (
    Sender<Command>,
    Receiver<Report>,
    Option<std::thread::JoinHandle<()>>,
);

fn start(spec: &WorkerSpec) -> Started {
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (rep_tx, rep_rx) = crossbeam_channel::unbounded();
    let config = WorkerConfig {
        engine: spec.engine.clone(),
        slots: spec.slots,
        max_batch: spec.max_batch,
        kv_budget: spec.kv_budget,
    };
    #[cfg(feature = "remote")]
    if let Some(remote) = spec.remote.clone() {
        let thread = super::remote_worker::spawn(remote, cmd_rx, rep_tx)
            .inspect_err(|e| tracing::error!("cannot start the remote backend's thread: {e}"))
            .ok();
        return (cmd_tx, rep_rx, thread);
    }
    let thread = worker::spawn(config, cmd_rx, rep_tx)
        .inspect_err(|e| tracing::error!("cannot start the inference worker thread: {e}"))
        .ok();
    (cmd_tx, rep_rx, thread)
}

/// Test hook (the `fault-injection` feature): the inference worker panics three tokens into
/// its next line, to check that the line fails cleanly and the worker restarts.
#[cfg(feature = "fault-injection")]
#[derive(Message, Clone, Copy, Debug, Default)]
pub struct InjectWorkerPanic;

/// `PostUpdate`: the fault-injection hook.
#[cfg(feature = "fault-injection")]
pub(crate) fn inject_faults(
    mut link: ResMut<WorkerLink>,
    mut faults: MessageReader<InjectWorkerPanic>,
) {
    for _ in faults.read() {
        link.inject_panic();
    }
}
