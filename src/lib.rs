// The README is the crate documentation; its examples use the plugin.
#![cfg_attr(feature = "bevy", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "bevy"),
    doc = "Local language-model dialogue for games; build with the `bevy` feature for the plugin."
)]

pub mod action;
pub mod card;
pub mod content;
pub mod engine;
pub mod lore;
pub mod persona;
#[cfg(feature = "bevy")]
pub mod plugin;
pub mod prompt;
#[cfg(feature = "remote")]
pub mod remote;
pub mod ron_file;
pub mod score;
pub mod settings;
pub mod story;
pub mod worker;
#[cfg(feature = "yarn")]
pub mod yarn;

/// Everything a game names: `use bevy_llm_dialogue::prelude::*;` and go. The error types
/// and the types that appear in public fields are here too, and the Yarn bridge's types with
/// the `yarn` feature.
pub mod prelude {
    pub use crate::action::{ActionError, ActionSpec, ArgSpec};
    pub use crate::card::CardError;
    pub use crate::content::{ContentOverride, ContentPolicy, PlayerLineCheck, Profanity};
    pub use crate::engine::{
        Backend, ChatMessage, EngineError, GenerateParams, Generation, GenerationStats, ModelInfo,
        Role, SamplingParams, StopReason,
    };
    pub use crate::lore::Lorebook;
    pub use crate::persona::Persona;
    #[cfg(feature = "bevy")]
    pub use crate::plugin::{
        ActionFailed, ActionFinished, CancelLine, ChooseOption, Deciding, DialogueAssetError,
        DialogueContext, DialogueError, DialogueHistory, DialogueModel, DialogueRequests,
        DialogueSettings, DialogueSystems, DispositionChanged, FilterAction, LineDelta, LineFailed,
        LineFiltered, LineFinished, LineStarted, LlmDialoguePlugin, LoadModel, ModelFailed,
        ModelLoaded, ModelLoading, ModelState, Narrating, Narrator, Npc, NpcContext,
        NpcDisposition, RequestAction, RequestLine, RequestScene, SceneDelta, SceneFailed,
        SceneFinished, Speaking, UpdateDisposition, model_ready,
    };
    #[cfg(feature = "bevy")]
    #[expect(
        deprecated,
        reason = "the old names stay for one release, with their warning"
    )]
    pub use crate::plugin::{NpcAction, SceneReady};
    pub use crate::prompt::{Facts, PromptError, PromptTemplate, TemplateValue};
    #[cfg(feature = "remote")]
    pub use crate::remote::{RemoteConfig, RemoteError};
    pub use crate::ron_file::RonFileError;
    pub use crate::settings::LineSettings;
    pub use crate::story::{Scene, Story, StoryAsset, StoryError};
    pub use crate::worker::{Priority, RequestId, WorkerError, WorkerStatus};
    #[cfg(feature = "yarn")]
    pub use crate::yarn::{
        ChooseGenerated, Generated, GeneratedKind, GeneratedLineDelta, GeneratedLineFinished,
        GeneratedOptions, YarnBridge, YarnBridgeFailed, YarnBridgePlugin, YarnError, YarnSave,
        YarnTranscript,
    };
}
