//! The model: the inference worker behind the app ([`crate::worker::Worker`], held as a
//! resource), loading ([`LoadModel`] → [`ModelLoading`], [`ModelLoaded`] or [`ModelFailed`]),
//! its state for loading screens ([`DialogueModel`]), the worker's reports, and the frame
//! pacer.

mod messages;
pub(crate) mod pacing;
pub(crate) mod receive;

use std::path::PathBuf;

use bevy::prelude::*;

#[cfg(feature = "fault-injection")]
pub use crate::plugin::worker_link::InjectWorkerPanic;
pub use messages::{
    DialogueModel, LoadModel, ModelFailed, ModelLoaded, ModelLoading, ModelState, model_ready,
};
pub use pacing::MAX_PAUSE;

use super::{DialogueSystems, Flow};
use crate::worker::WorkerConfig;

/// Starts the worker and registers the model's messages, its state and the systems that
/// load models, receive the worker's reports and pace it.
pub(crate) struct ModelPlugin {
    pub(crate) worker: WorkerConfig,
    /// The folder relative model paths resolve against.
    pub(crate) asset_base: PathBuf,
    /// The model to load at startup.
    pub(crate) model: Option<PathBuf>,
}

impl Plugin for ModelPlugin {
    fn build(&self, app: &mut App) {
        let link = crate::plugin::worker_link::WorkerLink::new(
            self.worker.clone(),
            self.asset_base.clone(),
            self.model.clone(),
        );
        app.insert_resource(link)
            .register_type::<DialogueModel>()
            .register_type::<ModelLoading>()
            .register_type::<ModelLoaded>()
            .register_type::<ModelFailed>()
            .init_resource::<DialogueModel>()
            .add_message::<LoadModel>()
            .add_message::<ModelLoading>()
            .add_message::<ModelLoaded>()
            .add_message::<ModelFailed>()
            .init_resource::<pacing::FrameClock>()
            .add_systems(First, pacing::start_frame)
            .add_systems(Last, pacing::pace_worker)
            .add_systems(
                PreUpdate,
                receive::receive_reports
                    .in_set(Flow::Model)
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                messages::load_models
                    .in_set(Flow::Model)
                    .in_set(DialogueSystems::Dispatch),
            );
        #[cfg(feature = "fault-injection")]
        app.add_message::<InjectWorkerPanic>().add_systems(
            PostUpdate,
            crate::plugin::worker_link::inject_faults
                .after(messages::load_models)
                .in_set(Flow::Model)
                .in_set(DialogueSystems::Dispatch),
        );
    }
}
