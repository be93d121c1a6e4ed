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
mod facts;
pub mod lore;
pub mod persona;
#[cfg(feature = "bevy")]
pub mod plugin;
pub mod prompt;
#[cfg(feature = "remote")]
pub mod remote;
pub mod ron_file;
pub mod score;
pub mod story;
#[cfg(feature = "yarn")]
pub mod yarn;

/// Everything a game names: `use bevy_llm_dialogue::prelude::*;` and go.
pub mod prelude {
    pub use crate::action::{ActionSpec, ArgSpec};
    pub use crate::content::{ContentOverride, ContentPolicy, PlayerLineCheck, Profanity};
    pub use crate::engine::{ChatMessage, GenerateParams, Role, SamplingParams, StopReason};
    pub use crate::persona::Persona;
    #[cfg(feature = "bevy")]
    pub use crate::plugin::{
        ActionFailed, ActionFinished, CancelLine, ChooseOption, Deciding, DialogueContext,
        DialogueError, DialogueHistory, DialogueModel, DialogueOverrides, DialogueSettings,
        DialogueSystems, DispositionChanged, FilterAction, LineDelta, LineFailed, LineFiltered,
        LineFinished, LineStarted, LlmDialoguePlugin, LoadModel, ModelFailed, ModelLoaded,
        ModelLoading, ModelState, Narrating, Narrator, Npc, NpcContext, NpcDisposition, Priority,
        RequestAction, RequestId, RequestLine, RequestScene, SceneDelta, SceneFailed,
        SceneFinished, Speaking, UpdateDisposition, model_ready,
    };
    pub use crate::prompt::{Facts, PromptTemplate};
    pub use crate::ron_file::RonFileError;
    pub use crate::story::{Scene, Story, StoryAsset};
}
