// The README is the crate documentation; its examples use the plugin.
#![cfg_attr(feature = "bevy", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "bevy"),
    doc = "Local language-model dialogue for games; build with the `bevy` feature for the plugin."
)]
//!
//! # Layers
//!
//! The modules form layers, and each imports only the layers below it; an import that goes
//! up, or a cycle between modules, is a bug. This is what keeps the engine and the domain
//! usable without Bevy (`--no-default-features`).
//!
//! 1. **Engine**: `engine` (GGUF, tokenizer, chat templates, kernels, sampling, batching).
//!    It imports nothing of this crate outside `engine`, and no Bevy.
//! 2. **Domain**: plain serde types and the functions over them, Bevy only as optional
//!    derives. They import `engine` and each other, in this order (a module imports only
//!    those before it): `speech`, `memory`, `facts`, `ron_file`, `action`; `content`, `score`; `lore`; `persona`,
//!    `story`; `card`; `prompt`. So `persona` does not know the card format (it keeps what a
//!    card held as plain JSON, [`Persona::card`](persona::Persona::card)), and `Facts`
//!    ([`prompt::Facts`]) lives in a module below both `lore` and `prompt`.
//! 3. **Worker**: `worker` (jobs, the queue, one job server over the local engine or an
//!    inference server, the job recipes, crash recovery) and `remote` (the client of an
//!    inference server, feature `remote`); no Bevy types. `settings` (layered generation
//!    settings) sits with the domain, below it.
//! 4. **Plugin**: `plugin` (components, messages, assets, systems; feature `bevy`).
//! 5. **Yarn**: `yarn`, the bridge to `bevy_yarnspinner` (feature `yarn`).
//!
//! Examples sit on top and may use everything. Never: the engine importing the domain or
//! anything above; a domain module importing `plugin`, `yarn`, `remote` or the worker; the
//! plugin importing `yarn` (the bridge plugs itself in).

pub mod action;
pub mod card;
pub mod content;
pub mod engine;
mod facts;
pub mod lore;
pub mod memory;
pub mod persona;
#[cfg(feature = "bevy")]
pub mod plugin;
pub mod prompt;
#[cfg(feature = "remote")]
pub mod remote;
pub mod ron_file;
pub mod score;
pub mod settings;
pub mod speech;
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
        Backend, ChatMessage, EngineError, GenerateParams, Generation, GenerationStats,
        InferencePriority, ModelInfo, Role, SamplingParams, StopReason,
    };
    pub use crate::lore::Lorebook;
    pub use crate::memory::{Bm25Recall, Episode, Recall};
    pub use crate::persona::Persona;
    #[cfg(feature = "bevy")]
    pub use crate::plugin::{
        ActionFailed, ActionFinished, CancelLine, ChooseOption, Conversation, ConversationEnded,
        ConversationLine, ConversationLog, Deciding, DialogueAssetError, DialogueContext,
        DialogueError, DialogueHistory, DialogueModel, DialogueRecall, DialogueRequests,
        DialogueSettings, DialogueSystems, DispositionChanged, FilterAction, GiveTurn,
        LeaveConversation, LineDelta, LineFailed, LineFiltered, LineFinished, LineInterrupted,
        LineSentence, LineStarted, LlmDialoguePlugin, LoadModel, ModelFailed, ModelLoaded,
        ModelLoading, ModelState, Narrating, Narrator, Npc, NpcContext, NpcDisposition,
        RequestAction, RequestLine, RequestScene, SayInConversation, SceneDelta, SceneFailed,
        SceneFinished, Speaking, TurnPolicy, UpdateDisposition, model_ready,
    };
    #[cfg(feature = "bevy")]
    #[expect(
        deprecated,
        reason = "the old names stay for one release, with their warning"
    )]
    pub use crate::plugin::{NpcAction, SceneReady};
    pub use crate::prompt::{Facts, PromptError, PromptTemplate, SpokenLine, TemplateValue};
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
