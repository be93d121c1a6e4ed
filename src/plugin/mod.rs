//! The Bevy plugin: NPCs that talk through components, messages and assets.
//!
//! Each file holds one concept: [`npc`](self) components, lines, the narrator, actions, the
//! model; the table of requests in flight, the worker thread and the app's link to it are
//! private. Everything a game names is re-exported here and in the [prelude](crate::prelude).

mod action;
mod assets;
mod content;
mod disposition;
mod in_flight;
mod line;
mod line_systems;
mod model;
mod narrator;
mod narrator_systems;
mod npc;
mod pacing;
mod receive;
#[cfg(feature = "remote")]
mod remote_worker;
mod request;
mod summary;
mod worker;
mod worker_link;
mod yarn_check;

use std::path::PathBuf;

use bevy::prelude::*;

#[expect(deprecated, reason = "the old names stay for one release")]
pub use action::NpcAction;
pub use action::{ActionFailed, ActionFinished, Deciding, RequestAction};
pub use assets::{
    CardLoader, DialogueAssetError, LoreLoader, PersonaLoader, PromptTemplateLoader, StoryLoader,
};
pub use content::{FilterAction, LineFiltered};
pub use disposition::{DispositionChanged, NpcDisposition, UpdateDisposition};
pub use line::{CancelLine, LineDelta, LineFailed, LineFinished, LineStarted, RequestLine};
pub use model::{
    DialogueModel, LoadModel, ModelFailed, ModelLoaded, ModelLoading, ModelState, model_ready,
};
#[expect(deprecated, reason = "the old names stay for one release")]
pub use narrator::SceneReady;
pub use narrator::{
    ChooseOption, Narrating, Narrator, RequestScene, SceneDelta, SceneFailed, SceneFinished,
};
pub use npc::{DialogueContext, DialogueHistory, DialogueOverrides, Npc, NpcContext, Speaking};
pub use pacing::MAX_PAUSE;
pub use request::{
    DialogueError, DialogueSettings, MAX_PENDING, MAX_PENDING_PER_ENTITY, Priority, RequestId,
};
pub use worker::{WorkerStatus, running_workers};
#[cfg(feature = "fault-injection")]
pub use worker_link::InjectWorkerPanic;

use crate::engine::{Backend, EngineConfig, GenerateParams};
use crate::persona::Persona;
use crate::prompt::PromptTemplate;
use crate::story::{Story, StoryAsset};

/// The default model, relative to the asset folder.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Adds local language-model dialogue to an app.
///
/// At startup the model loads on the inference worker thread (progress arrives as
/// [`ModelLoading`], then [`ModelLoaded`] or [`ModelFailed`]). From then on any system can
/// write a [`RequestLine`] for an [`Npc`] and receive [`LineStarted`], [`LineDelta`]s and
/// [`LineFinished`] (or [`LineFailed`]) as messages and as entity events on the NPC.
///
/// Schedules: results are received in `PreUpdate` ([`DialogueSystems::Receive`]: the worker's
/// reports, then lines, scenes and decisions), so `Update` systems see them the frame they
/// arrive; requests written in `Update` are sent in `PostUpdate` ([`DialogueSystems::Dispatch`]:
/// model loads, cancels, lines, choices, scenes, decisions, in that order) of the same frame.
/// Neither blocks: the main thread only moves messages through channels.
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
    /// The most lines generated together: each step of the worker runs one forward pass for
    /// all of them (one read of the weights serves every line), so NPCs talk at once instead
    /// of queueing. A [`Priority::Player`] line joins even a full batch. 1 generates one line
    /// at a time.
    pub max_batch: usize,
    /// The most bytes the conversation caches may hold together (`DialogueModel::status`
    /// shows what they hold). When a line ends past it, the least recently used
    /// conversations forget their caches (their next line recomputes its prompt). `None`:
    /// only `slots` bounds them.
    pub kv_budget: Option<usize>,
    /// Where the model runs.
    pub backend: Backend,
    /// Serve every request from an inference server over the OpenAI-compatible API instead
    /// of a local model (`model`, `n_ctx`, `inference_threads`, `slots`, `max_batch`,
    /// `kv_budget` and `backend` are then unused). Components, messages, assets and results
    /// stay the same. `None`: the local model.
    #[cfg(feature = "remote")]
    pub remote: Option<crate::remote::RemoteConfig>,
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
            max_batch: 8,
            kv_budget: None,
            backend: Backend::Auto,
            #[cfg(feature = "remote")]
            remote: None,
            defaults: GenerateParams {
                max_tokens: 96,
                // What the player reads ends at a sentence end, after at most three
                // (QUALITY.md: 74 % of lines ended mid-sentence before).
                max_sentences: Some(3),
                whole_sentences: true,
                ..GenerateParams::default()
            },
        }
    }
}

/// System sets of the plugin; see [`LlmDialoguePlugin`] for where they run.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogueSystems {
    /// `PreUpdate`: worker reports become messages, events and history.
    Receive,
    /// `PostUpdate`: requests, cancels and model loads go to the worker.
    Dispatch,
}

/// The folder assets load from: the `AssetPlugin`'s, under the app's base path.
fn asset_base(app: &App) -> PathBuf {
    let asset_root = app
        .get_added_plugins::<AssetPlugin>()
        .first()
        .map(|p| PathBuf::from(&p.file_path))
        .unwrap_or_else(|| PathBuf::from("assets"));
    bevy::asset::io::file::FileAssetReader::get_base_path().join(asset_root)
}

impl Plugin for LlmDialoguePlugin {
    fn finish(&self, app: &mut App) {
        // Yarn scripts that ask for generated dialogue where nothing would answer.
        #[cfg(not(feature = "yarn"))]
        yarn_check::warn_in_background(
            asset_base(app),
            "bevy_llm_dialogue was built without its `yarn` feature",
        );
        #[cfg(feature = "yarn")]
        if !app.is_plugin_added::<crate::yarn::YarnBridgePlugin>() {
            yarn_check::warn_in_background(asset_base(app), "the app has no YarnBridgePlugin");
        }
    }

    fn build(&self, app: &mut App) {
        let base = asset_base(app);
        let threads = self.inference_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1)
        });
        let worker = worker_link::WorkerLink::new(worker_link::WorkerSpec {
            engine: EngineConfig {
                n_ctx: self.n_ctx,
                threads: Some(threads),
                backend: self.backend,
                ..Default::default()
            },
            slots: self.slots.max(1),
            max_batch: self.max_batch.max(1),
            kv_budget: self.kv_budget,
            asset_base: base,
            model: self.model.clone(),
            #[cfg(feature = "remote")]
            remote: self.remote.clone(),
        });

        // The profanity filter's tables take tens of milliseconds to build: not on the main
        // thread at the first player line a policy checks. A failed spawn only means the
        // first check builds them.
        let _ = std::thread::Builder::new()
            .name("llm-dialogue-content-warm-up".into())
            .spawn(crate::content::ContentFilter::warm_up);

        app.init_asset::<Persona>()
            .init_asset::<PromptTemplate>()
            .init_asset::<StoryAsset>()
            .register_asset_loader(PersonaLoader)
            .register_asset_loader(CardLoader)
            .init_asset::<crate::lore::Lorebook>()
            .register_asset_loader(LoreLoader)
            .register_asset_loader(PromptTemplateLoader)
            .register_asset_loader(StoryLoader)
            .register_type::<Npc>()
            .register_type::<DialogueHistory>()
            .register_type::<NpcContext>()
            .register_type::<DialogueOverrides>()
            .register_type::<Speaking>()
            .register_type::<NpcDisposition>()
            .register_type::<Narrator>()
            .register_type::<Narrating>()
            .register_type::<Deciding>()
            .register_type::<Story>()
            .register_type::<DialogueContext>()
            .register_type::<DialogueSettings>()
            .register_type::<DialogueModel>()
            .add_message::<LoadModel>()
            .add_message::<ModelLoading>()
            .add_message::<ModelLoaded>()
            .add_message::<ModelFailed>()
            .add_message::<RequestLine>()
            .add_message::<CancelLine>()
            .add_message::<LineStarted>()
            .add_message::<LineDelta>()
            .add_message::<LineFinished>()
            .add_message::<LineFailed>()
            .add_message::<LineFiltered>()
            .add_message::<RequestScene>()
            .add_message::<ChooseOption>()
            .add_message::<SceneDelta>()
            .add_message::<SceneFinished>()
            .add_message::<SceneFailed>()
            .add_message::<RequestAction>()
            .add_message::<ActionFinished>()
            .add_message::<ActionFailed>()
            .add_message::<UpdateDisposition>()
            .add_message::<DispositionChanged>()
            .insert_resource(DialogueSettings {
                defaults: self.defaults.clone(),
                best_of: 1,
                frame_budget: None,
                summarize_after: Some(crate::prompt::MAX_HISTORY_TURNS),
            })
            .init_resource::<pacing::FrameClock>()
            .add_systems(First, pacing::start_frame)
            .add_systems(Last, pacing::pace_worker)
            .init_resource::<DialogueContext>()
            .init_resource::<crate::content::ContentPolicy>()
            .init_resource::<DialogueModel>()
            .init_resource::<assets::BuiltinPrompts>()
            .init_resource::<in_flight::InFlight>()
            .init_resource::<in_flight::Inbox>()
            .init_resource::<narrator_systems::WaitingScenes>()
            .init_resource::<action::WaitingActions>()
            .insert_resource(worker)
            .configure_sets(PreUpdate, DialogueSystems::Receive)
            .configure_sets(PostUpdate, DialogueSystems::Dispatch)
            .add_systems(
                PreUpdate,
                (
                    receive::receive_reports,
                    line_systems::deliver_lines,
                    narrator_systems::deliver_scenes,
                    action::deliver_actions,
                    summary::deliver_summaries,
                )
                    .chain()
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (
                    model::load_models,
                    line_systems::cancel_lines,
                    line_systems::queue_lines,
                    line_systems::dispatch_lines,
                    narrator_systems::take_choices,
                    narrator_systems::dispatch_scenes,
                    action::dispatch_actions,
                    summary::summarize_histories,
                )
                    .chain()
                    .in_set(DialogueSystems::Dispatch),
            )
            .add_observer(line_systems::on_npc_removed);
        #[cfg(feature = "fault-injection")]
        app.add_message::<InjectWorkerPanic>().add_systems(
            PostUpdate,
            worker_link::inject_faults
                .before(line_systems::dispatch_lines)
                .in_set(DialogueSystems::Dispatch),
        );
    }
}
