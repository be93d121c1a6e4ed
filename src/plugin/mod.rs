//! The Bevy plugin: NPCs that talk through components, messages and assets.

mod assets;
mod components;
mod messages;
mod story;
mod systems;
mod worker;

use std::path::PathBuf;

use bevy::prelude::*;

pub use assets::{DialogueAssetError, PersonaLoader, PromptTemplateLoader, StoryLoader};
pub use components::{
    DialogueContext, DialogueHistory, DialogueOverrides, Npc, NpcContext, Speaking,
};
pub use messages::{
    CancelLine, DialogueError, LineDelta, LineFailed, LineFinished, LineStarted, LoadModel,
    ModelFailed, ModelLoaded, ModelLoading, Priority, RequestId, RequestLine,
};
pub use story::{
    ChooseOption, Narrator, NpcAction, RequestAction, RequestScene, SceneDelta, SceneFailed,
    SceneReady,
};
pub use worker::{WorkerStatus, running_workers};

use crate::engine::{Backend, GenerateParams, ModelInfo};
use crate::persona::Persona;
use crate::prompt::PromptTemplate;

/// The default model, relative to the asset folder.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Adds local language-model dialogue to an app.
///
/// At startup the model loads on the inference worker thread (progress arrives as
/// [`ModelLoading`], then [`ModelLoaded`] or [`ModelFailed`]). From then on any system can
/// write a [`RequestLine`] for an [`Npc`] and receive [`LineStarted`], [`LineDelta`]s and
/// [`LineFinished`] (or [`LineFailed`]) as messages and as entity events on the NPC.
///
/// Schedules: results are received in `PreUpdate` ([`DialogueSystems::Receive`]), so `Update`
/// systems see them the frame they arrive; requests written in `Update` are sent in
/// `PostUpdate` ([`DialogueSystems::Dispatch`]) of the same frame. Neither blocks: the main
/// thread only moves messages through channels.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_llm_dialogue::prelude::*;
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default()))
///     .add_plugins(LlmDialoguePlugin::default())
///     .run();
/// ```
#[derive(Clone, Debug)]
pub struct LlmDialoguePlugin {
    /// The GGUF model to load at startup; relative paths are under the asset folder.
    /// `None` waits for a [`LoadModel`] message.
    pub model: Option<PathBuf>,
    /// Context window in tokens (`None`: the smaller of 4096 and the model's).
    pub n_ctx: Option<usize>,
    /// Threads for inference. `None` leaves the game one core: all cores but one, at least 1.
    pub inference_threads: Option<usize>,
    /// How many conversations keep their cache. The least recently used is evicted.
    pub slots: usize,
    /// Where the model runs.
    pub backend: Backend,
    /// Generation settings for lines that set nothing else; runtime changes go through the
    /// [`DialogueSettings`] resource.
    pub defaults: GenerateParams,
}

impl Default for LlmDialoguePlugin {
    fn default() -> Self {
        Self {
            model: Some(PathBuf::from(DEFAULT_MODEL)),
            n_ctx: None,
            inference_threads: None,
            slots: 16,
            backend: Backend::Auto,
            defaults: GenerateParams {
                max_tokens: 96,
                ..GenerateParams::default()
            },
        }
    }
}

/// Test hook (the `fault-injection` feature): the inference worker panics three tokens into
/// its next line, to check that the line fails cleanly and the worker restarts.
#[cfg(feature = "fault-injection")]
#[derive(Message, Clone, Copy, Debug, Default)]
pub struct InjectWorkerPanic;

/// System sets of the plugin; see [`LlmDialoguePlugin`] for where they run.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogueSystems {
    /// `PreUpdate`: worker reports become messages, events and history.
    Receive,
    /// `PostUpdate`: requests, cancels and model loads go to the worker.
    Dispatch,
}

/// Settings that can change while the game runs.
#[derive(Resource, Clone, Debug, Reflect)]
#[reflect(Resource)]
pub struct DialogueSettings {
    /// Generation settings under the persona's, the NPC's and the request's.
    pub defaults: GenerateParams,
}

/// The model's state, for loading screens and debug displays.
#[derive(Resource, Clone, Debug, Default)]
pub struct DialogueModel {
    /// Loading, ready or failed.
    pub state: ModelState,
    /// How many times a model finished loading (one model serves every NPC).
    pub loads: u32,
    /// The worker's queue and caches after its last line.
    pub status: WorkerStatus,
}

/// Where the model is.
#[derive(Clone, Debug, Default)]
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

impl Plugin for LlmDialoguePlugin {
    fn build(&self, app: &mut App) {
        let asset_root = app
            .get_added_plugins::<AssetPlugin>()
            .first()
            .map(|p| PathBuf::from(&p.file_path))
            .unwrap_or_else(|| PathBuf::from("assets"));
        let base = bevy::asset::io::file::FileAssetReader::get_base_path().join(asset_root);
        let threads = self.inference_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1)
        });
        let worker = systems::WorkerLink::new(systems::WorkerSpec {
            engine: crate::engine::EngineConfig {
                n_ctx: self.n_ctx,
                threads: Some(threads),
                backend: self.backend,
                ..Default::default()
            },
            slots: self.slots.max(1),
            asset_base: base,
            model: self.model.clone(),
        });

        app.init_asset::<Persona>()
            .init_asset::<PromptTemplate>()
            .init_asset::<crate::story::StoryAsset>()
            .register_asset_loader(PersonaLoader)
            .register_asset_loader(PromptTemplateLoader)
            .register_asset_loader(StoryLoader)
            .add_message::<RequestScene>()
            .add_message::<ChooseOption>()
            .add_message::<SceneDelta>()
            .add_message::<SceneReady>()
            .add_message::<SceneFailed>()
            .add_message::<RequestAction>()
            .add_message::<NpcAction>()
            .init_resource::<story::Structured>()
            .init_resource::<story::WaitingStory>()
            .init_resource::<story::BuiltinStoryPrompts>()
            .add_message::<RequestLine>()
            .add_message::<CancelLine>()
            .add_message::<LoadModel>()
            .add_message::<LineStarted>()
            .add_message::<LineDelta>()
            .add_message::<LineFinished>()
            .add_message::<LineFailed>()
            .add_message::<ModelLoading>()
            .add_message::<ModelLoaded>()
            .add_message::<ModelFailed>()
            .insert_resource(DialogueSettings {
                defaults: self.defaults.clone(),
            })
            .init_resource::<DialogueContext>()
            .init_resource::<DialogueModel>()
            .init_resource::<systems::Lines>()
            .insert_resource(systems::BuiltinPrompt(PromptTemplate::default_npc()))
            .insert_resource(worker)
            .configure_sets(PreUpdate, DialogueSystems::Receive)
            .configure_sets(PostUpdate, DialogueSystems::Dispatch)
            .add_systems(
                PreUpdate,
                (systems::receive_reports, story::receive_structured)
                    .chain()
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (
                    systems::load_models,
                    systems::cancel_lines,
                    systems::queue_requests,
                    systems::dispatch_requests,
                    story::request_scenes,
                    story::request_actions,
                )
                    .chain()
                    .in_set(DialogueSystems::Dispatch),
            )
            .add_observer(systems::on_npc_removed);
        #[cfg(feature = "fault-injection")]
        app.add_message::<InjectWorkerPanic>().add_systems(
            PostUpdate,
            systems::inject_faults
                .before(systems::dispatch_requests)
                .in_set(DialogueSystems::Dispatch),
        );
    }
}
