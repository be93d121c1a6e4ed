// The README is the crate documentation; its examples use the plugin.
#![cfg_attr(feature = "bevy", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "bevy"),
    doc = "Local language-model dialogue for games; build with the `bevy` feature for the plugin."
)]

pub mod engine;
pub mod persona;
#[cfg(feature = "bevy")]
pub mod plugin;
pub mod prompt;
pub mod story;

/// Everything a game needs to get started.
pub mod prelude {
    pub use crate::engine::{ChatMessage, GenerateParams, SamplingParams, StopReason};
    pub use crate::persona::Persona;
    #[cfg(feature = "bevy")]
    pub use crate::plugin::{
        CancelLine, DialogueContext, DialogueError, DialogueHistory, DialogueModel,
        DialogueOverrides, DialogueSettings, DialogueSystems, LineDelta, LineFailed, LineFinished,
        LineStarted, LlmDialoguePlugin, LoadModel, ModelFailed, ModelLoaded, ModelLoading,
        ModelState, Npc, NpcContext, Priority, RequestLine, Speaking,
    };
    #[cfg(feature = "bevy")]
    pub use crate::plugin::{
        ChooseOption, Narrator, NpcAction, RequestAction, RequestScene, SceneDelta, SceneFailed,
        SceneReady,
    };
    pub use crate::prompt::PromptTemplate;
    pub use crate::story::{ActionSpec, ArgSpec, Scene, Story, StoryAsset};
}
