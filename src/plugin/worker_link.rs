//! The app's end of the inference worker ([`crate::worker::Worker`]): the resource that
//! holds it, and the model path resolved against the asset folder.

use std::path::PathBuf;

use bevy::prelude::*;

use crate::worker::{Command, Worker, WorkerConfig};

/// The worker, as a resource of the app. It stops when the app is dropped.
#[derive(Resource)]
pub(crate) struct WorkerLink {
    pub(crate) worker: Worker,
    /// The folder relative model paths resolve against.
    pub(crate) asset_base: PathBuf,
    /// Whether a load was asked for that has not been announced yet.
    pub(crate) announce_load: bool,
}

impl WorkerLink {
    /// Starts the worker and, if `model` is set, loads it.
    pub(crate) fn new(config: WorkerConfig, asset_base: PathBuf, model: Option<PathBuf>) -> Self {
        let model = model.map(|p| resolve(&asset_base, p));
        // A server has its model: "loading" it checks that the server answers.
        #[cfg(feature = "remote")]
        let model = match &config.remote {
            Some(remote) => Some(PathBuf::from(&remote.base_url)),
            None => model,
        };
        let mut link = Self {
            worker: Worker::spawn(config),
            asset_base,
            announce_load: false,
        };
        if let Some(path) = model {
            link.load(path);
        }
        link
    }

    pub(crate) fn load(&mut self, path: PathBuf) {
        self.announce_load = true;
        self.worker.load(path);
    }

    pub(crate) fn send(&mut self, cmd: Command) {
        self.worker.send(cmd);
    }

    /// Starts a new worker after the old one stopped; whether it did (see
    /// [`Worker::restart`]).
    pub(crate) fn restart(&mut self) -> bool {
        let restarted = self.worker.restart();
        if restarted && self.worker.model().is_some() {
            self.announce_load = true;
        }
        restarted
    }
}

pub(crate) fn resolve(base: &std::path::Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// Test hook (the `fault-injection` feature): the inference worker panics three tokens into
/// its next line, to check that the line fails cleanly and the worker restarts.
#[cfg(feature = "fault-injection")]
#[derive(Message, Clone, Copy, Debug, Default, Reflect)]
pub struct InjectWorkerPanic;

/// `PostUpdate`: the fault-injection hook.
#[cfg(feature = "fault-injection")]
pub(crate) fn inject_faults(
    mut link: ResMut<WorkerLink>,
    mut faults: MessageReader<InjectWorkerPanic>,
) {
    for _ in faults.read() {
        link.send(Command::PanicNextJob);
    }
}
