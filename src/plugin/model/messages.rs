//! The model: loading it, its state for loading screens, and the run condition for systems
//! that need it.

use bevy::prelude::*;

use crate::engine::ModelInfo;
use crate::plugin::worker_link::{WorkerLink, resolve};
use crate::worker::WorkerStatus;

/// The model's state, for loading screens and debug displays.
#[derive(Resource, Clone, Debug, Default, Reflect)]
#[reflect(Resource, Clone, Debug, Default)]
pub struct DialogueModel {
    /// Loading, ready or failed.
    pub state: ModelState,
    /// How many times a model finished loading (one model serves every NPC).
    pub loads: u32,
    /// The worker's queue and caches after its last line.
    pub status: WorkerStatus,
    /// How long the worker now waits between its steps, because frames ran over
    /// [`DialogueSettings::frame_budget`](crate::plugin::DialogueSettings::frame_budget) (zero: not
    /// paced).
    pub pause: std::time::Duration,
}

impl DialogueModel {
    /// Whether a model is loaded and serving requests.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, ModelState::Ready(_))
    }
}

/// Where the model is.
#[derive(Clone, Debug, Default, Reflect)]
#[reflect(Clone, Debug, Default)]
pub enum ModelState {
    /// Nothing asked for yet.
    #[default]
    NotLoaded,
    /// Loading; the fraction goes from 0 to 1.
    Loading(f32),
    /// Ready for requests.
    Ready(ModelInfo),
    /// Failed; requests fail with this reason until a [`LoadModel`] succeeds.
    Failed(String),
}

/// Run condition: the model is loaded. Requests written before that wait for it anyway;
/// use this for systems that should not start a conversation until the model is there.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// fn greet(mut requests: MessageWriter<RequestLine>, npcs: Query<Entity, Added<Npc>>) {
///     for npc in &npcs {
///         requests.write(RequestLine::new(npc));
///     }
/// }
/// # let mut app = App::new();
/// app.add_systems(Update, greet.run_if(model_ready));
/// ```
pub fn model_ready(model: Option<Res<DialogueModel>>) -> bool {
    model.is_some_and(|m| m.is_ready())
}

/// Loads (or reloads) a model; the plugin loads [`LlmDialoguePlugin::model`](crate::plugin::LlmDialoguePlugin::model)
/// at startup without being asked.
#[derive(Message, Clone, Debug, Reflect)]
pub struct LoadModel {
    /// The GGUF file.
    pub path: std::path::PathBuf,
}

/// Progress while the model loads.
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct ModelLoading {
    /// From 0 to 1.
    pub fraction: f32,
}

/// The model is ready.
#[derive(Message, Clone, Debug, Reflect)]
pub struct ModelLoaded {
    /// What was loaded.
    pub info: ModelInfo,
}

/// The model could not be loaded; requests fail with
/// [`DialogueError::ModelUnavailable`](crate::plugin::DialogueError::ModelUnavailable).
#[derive(Message, Clone, Debug, Reflect)]
pub struct ModelFailed {
    /// Why, including how to fix it where known.
    pub error: String,
}

/// `PostUpdate`: [`LoadModel`] messages.
pub(crate) fn load_models(mut link: ResMut<WorkerLink>, mut requests: MessageReader<LoadModel>) {
    for request in requests.read() {
        let path = resolve(&link.asset_base, request.path.clone());
        link.load(path);
    }
}
