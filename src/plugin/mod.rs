//! The Bevy plugin: NPCs that talk through components, messages and assets.
//!
//! [`LlmDialoguePlugin`] is made of small plugins, one per concept, each in its own folder or
//! file and registering its own messages, types and systems: the model and its worker
//! (`model/`), dialogue assets (`assets.rs`), lines (`lines/`), the narrator (`narrator/`),
//! actions and disposition (`actions/`), history summaries (`summary.rs`) and content control
//! (`content.rs`). What they share (the NPC components, request ids and errors, the table of
//! requests in flight) lives beside them. Everything a game names is re-exported here and in
//! the [prelude](crate::prelude).

mod actions;
mod assets;
mod content;
mod conversation;
mod dialogue_requests;
mod env;
mod in_flight;
mod lines;
mod model;
mod narrator;
pub(crate) mod notify;
mod npc;
mod request;
mod summary;
mod worker_link;
mod yarn_check;

use std::path::PathBuf;

use bevy::prelude::*;

pub use crate::worker::{WorkerStatus, running_workers};
#[expect(deprecated, reason = "the old names stay for one release")]
pub use actions::NpcAction;
pub use actions::{
    ActionFailed, ActionFinished, Deciding, DispositionChanged, NpcDisposition, RequestAction,
    UpdateDisposition,
};
pub use assets::{
    CardFormat, DialogueAssetError, DialogueFormat, DialogueLoader, LoreFormat,
    MAX_DIALOGUE_FILE_BYTES, PersonaFormat, PromptTemplateFormat, StoryFormat,
};
pub use content::{FilterAction, LineFiltered};
pub use conversation::{
    Conversation, ConversationEnded, ConversationLine, ConversationLog, GiveTurn,
    LeaveConversation, LineInterrupted, SayInConversation, TurnPolicy,
};
pub use dialogue_requests::DialogueRequests;
pub use env::DialogueRecall;
pub use lines::{
    CancelLine, LineDelta, LineFailed, LineFinished, LineSentence, LineStarted, RequestLine,
};
#[cfg(feature = "fault-injection")]
pub use model::InjectWorkerPanic;
pub use model::{
    DialogueModel, LoadModel, MAX_PAUSE, ModelFailed, ModelLoaded, ModelLoading, ModelState,
    model_ready,
};
#[expect(deprecated, reason = "the old names stay for one release")]
pub use narrator::SceneReady;
pub use narrator::{
    ChooseOption, Narrating, Narrator, RequestScene, SceneDelta, SceneFailed, SceneFinished,
};
pub use npc::{DialogueContext, DialogueHistory, Npc, NpcContext, Speaking};
pub use request::{
    DialogueError, DialogueSettings, MAX_PENDING, MAX_PENDING_PER_ENTITY, Priority, RequestId,
};

use crate::engine::{Backend, EngineConfig, GenerateParams, InferencePriority};
use crate::worker::{LocalConfig, WorkerConfig};

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
    /// How eagerly the OS runs the inference threads beside the game's:
    /// [`InferencePriority::Idle`] (the default) gives a game thread that wakes up the core
    /// at once, so frames do not notice the model (BENCHMARKS.md, "Frame pacing").
    pub inference_priority: InferencePriority,
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
            inference_priority: InferencePriority::Idle,
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

/// Inserted by the Yarn bridge (`yarn::YarnBridgePlugin`): Yarn commands that ask for
/// generated dialogue are answered, so the startup check of Yarn scripts stays quiet.
#[doc(hidden)]
#[derive(Resource, Clone, Copy, Debug, Default)]
pub struct YarnCommandsAnswered;

/// System sets of the plugin; see [`LlmDialoguePlugin`] for where they run.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogueSystems {
    /// `PreUpdate`: worker reports become messages, events and history.
    Receive,
    /// `PostUpdate`: requests, cancels and model loads go to the worker.
    Dispatch,
}

/// The order of the sub-plugins' systems inside [`DialogueSystems::Receive`] and
/// [`DialogueSystems::Dispatch`]: the model's first (reports in, loads out), then lines,
/// scenes, decisions and summaries.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Flow {
    Model,
    Lines,
    Scenes,
    Actions,
    Summaries,
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
        // The bridge sits on top of the plugin and says it is there; the plugin never
        // names it.
        #[cfg(feature = "yarn")]
        if !app.world().contains_resource::<YarnCommandsAnswered>() {
            yarn_check::warn_in_background(asset_base(app), "the app has no YarnBridgePlugin");
        }
    }

    fn build(&self, app: &mut App) {
        let threads = self.inference_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1)
        });
        let worker = WorkerConfig {
            local: LocalConfig {
                engine: EngineConfig {
                    n_ctx: self.n_ctx,
                    threads: Some(threads),
                    backend: self.backend,
                    priority: self.inference_priority,
                    ..Default::default()
                },
                slots: self.slots.max(1),
                max_batch: self.max_batch.max(1),
                kv_budget: self.kv_budget,
                ..LocalConfig::default()
            },
            #[cfg(feature = "remote")]
            remote: self.remote.clone(),
        };
        let flow = || {
            (
                Flow::Model,
                Flow::Lines,
                Flow::Scenes,
                Flow::Actions,
                Flow::Summaries,
            )
                .chain()
        };
        let asset_base = asset_base(app);
        // What the sub-plugins share: the NPC components, settings, the world's context,
        // request ids and the table of requests in flight.
        let in_flight = in_flight::InFlight::default();
        app.insert_resource(in_flight.ids.clone())
            .insert_resource(in_flight)
            .init_resource::<in_flight::Inbox>()
            .insert_resource(DialogueSettings {
                defaults: self.defaults.clone(),
                best_of: 1,
                frame_budget: None,
                summarize_after: Some(crate::prompt::MAX_HISTORY_TURNS),
                recall_moments: 3,
                recall_tokens: 160,
            })
            .init_resource::<DialogueRecall>()
            .init_resource::<DialogueContext>()
            .register_type::<Npc>()
            .register_type::<DialogueHistory>()
            .register_type::<NpcContext>()
            .register_type::<crate::settings::LineSettings>()
            .register_type::<Speaking>()
            .register_type::<DialogueContext>()
            .register_type::<DialogueSettings>()
            .configure_sets(PreUpdate, DialogueSystems::Receive)
            .configure_sets(PostUpdate, DialogueSystems::Dispatch)
            .configure_sets(PreUpdate, flow().in_set(DialogueSystems::Receive))
            .configure_sets(PostUpdate, flow().in_set(DialogueSystems::Dispatch))
            .add_plugins((
                model::ModelPlugin {
                    worker,
                    asset_base,
                    model: self.model.clone(),
                },
                assets::AssetsPlugin,
                content::ContentPlugin,
                lines::LinesPlugin,
                narrator::NarratorPlugin,
                actions::ActionsPlugin,
                summary::SummariesPlugin,
                conversation::ConversationsPlugin,
            ));
    }
}
