//! `PreUpdate`: the worker's reports. Model reports update [`DialogueModel`]; reports about
//! requests go to the [`Inbox`], where the line, scene and action systems pick them up.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::plugin::in_flight::{InFlight, Inbox, Progress};
use crate::plugin::model::{DialogueModel, ModelFailed, ModelLoaded, ModelLoading, ModelState};
use crate::plugin::request::DialogueError;
use crate::plugin::worker_link::WorkerLink;
use crate::worker::{MAX_RESTARTS, Report, WorkerStopped};

/// The writers of model notifications.
#[derive(SystemParam)]
pub(crate) struct ModelWriters<'w> {
    loading: MessageWriter<'w, ModelLoading>,
    loaded: MessageWriter<'w, ModelLoaded>,
    failed: MessageWriter<'w, ModelFailed>,
}

/// Drains the worker's channel without waiting.
pub(crate) fn receive_reports(
    mut link: ResMut<WorkerLink>,
    mut in_flight: ResMut<InFlight>,
    mut inbox: ResMut<Inbox>,
    mut model: ResMut<DialogueModel>,
    mut out: ModelWriters,
) {
    if std::mem::take(&mut link.announce_load) {
        model.state = ModelState::Loading(0.0);
    }
    loop {
        let report = match link.worker.try_recv() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(WorkerStopped) => {
                // The worker died outside a request (requests catch their own panics). Fail
                // what it held and start a new one.
                for (id, a) in in_flight.active.drain() {
                    let error = DialogueError::WorkerCrashed("the worker thread stopped".into());
                    let entity = a.entity;
                    inbox
                        .bucket(&a.kind)
                        .push((id, entity, Progress::Failed(error)));
                }
                if link.restart() {
                    model.state = ModelState::Loading(0.0);
                } else if !matches!(model.state, ModelState::Failed(_)) {
                    let error = format!(
                        "the inference worker stopped {MAX_RESTARTS} times within a minute; load a model to try again"
                    );
                    tracing::error!("{error}");
                    model.state = ModelState::Failed(error.clone());
                    out.failed.write(ModelFailed { error });
                }
                break;
            }
        };
        match report {
            Report::Loading(fraction) => {
                model.state = ModelState::Loading(fraction);
                out.loading.write(ModelLoading { fraction });
            }
            Report::Loaded(info) => {
                model.loads += 1;
                model.state = ModelState::Ready(info.clone());
                out.loaded.write(ModelLoaded { info });
            }
            Report::LoadFailed(error) => {
                model.state = ModelState::Failed(error.clone());
                out.failed.write(ModelFailed { error });
            }
            Report::Status(status) => model.status = status,
            Report::Started { id, prompt } => {
                // Requests cancelled meanwhile are no longer in the table: nothing arrives.
                if let Some(a) = in_flight.active.get(&id) {
                    let started = Progress::Started(prompt);
                    inbox.bucket(&a.kind).push((id, a.entity, started));
                }
            }
            Report::Delta { id, text } => {
                if let Some(a) = in_flight.active.get(&id) {
                    inbox
                        .bucket(&a.kind)
                        .push((id, a.entity, Progress::Delta(text)));
                }
            }
            Report::Finished { id, generations } => {
                if let Some(a) = in_flight.active.remove(&id) {
                    let entity = a.entity;
                    inbox
                        .bucket(&a.kind)
                        .push((id, entity, Progress::Done(a, generations)));
                }
            }
            Report::Failed { id, error } => {
                if let Some(a) = in_flight.active.remove(&id) {
                    let entity = a.entity;
                    inbox
                        .bucket(&a.kind)
                        .push((id, entity, Progress::Failed(error.into())));
                }
            }
        }
    }
}
