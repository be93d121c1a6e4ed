//! What game systems send to the plugin (requests) and what comes back (notifications).
//!
//! Requests are [`Message`]s. Results are both messages (read them with a `MessageReader`
//! anywhere) and [`EntityEvent`]s on the NPC (observe them on one entity).

use std::sync::Arc;

use bevy::prelude::*;

use crate::engine::{GenerationStats, ModelInfo, SamplingParams, StopReason};

/// Identifies one requested line from request to result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reflect)]
pub struct RequestId(pub u64);

/// Which request the worker serves first when several wait. The NPC the player talks to
/// should not wait behind background chatter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Reflect)]
pub enum Priority {
    /// Ambient barks and chatter nobody waits for.
    Background,
    /// The default.
    #[default]
    Normal,
    /// The conversation the player is in.
    Player,
}

/// Asks an NPC for a line: an answer to the player, or something unprompted if
/// `player_line` is `None`.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// fn talk(mut requests: MessageWriter<RequestLine>, npc: Single<Entity, With<Npc>>) {
///     requests.write(RequestLine::new(*npc).saying("Any news?").priority(Priority::Player));
/// }
/// ```
#[derive(Message, Clone, Debug)]
pub struct RequestLine {
    /// The NPC (an entity with [`Npc`](super::Npc)).
    pub npc: Entity,
    /// What the player said, if anything.
    pub player_line: Option<String>,
    /// Queue order.
    pub priority: Priority,
    /// Overrides the line length for this request.
    pub max_tokens: Option<usize>,
    /// Overrides sampling for this request.
    pub sampling: Option<SamplingParams>,
}

impl RequestLine {
    /// A request for an unprompted line from `npc`.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            player_line: None,
            priority: Priority::Normal,
            max_tokens: None,
            sampling: None,
        }
    }
    /// The player's line the NPC answers.
    pub fn saying(mut self, line: impl Into<String>) -> Self {
        self.player_line = Some(line.into());
        self
    }
    /// Queue priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Longest line in tokens.
    pub fn max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
    /// Sampling for this line only.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = Some(sampling);
        self
    }
}

/// Stops an NPC's queued and current lines. No result arrives for them afterwards.
#[derive(Message, Clone, Copy, Debug)]
pub struct CancelLine {
    /// The NPC.
    pub npc: Entity,
}

/// An NPC started speaking: the model is computing the line.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct LineStarted {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The prompt as sent to the model, after the chat template (for debugging).
    pub prompt: Arc<str>,
}

/// More of a line: append `text` to what arrived before.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct LineDelta {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// New text (whole UTF-8 characters, never part of a stop string).
    pub text: String,
}

/// A finished line; it has been appended to the NPC's
/// [`DialogueHistory`](super::DialogueHistory).
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct LineFinished {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The whole line: the concatenation of its [`LineDelta`]s.
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Token counts and speed.
    pub stats: GenerationStats,
}

/// A line could not be produced. The game keeps running; show or log `error`.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct LineFailed {
    /// The NPC (it may no longer exist, for [`DialogueError::NpcNotFound`]).
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// What went wrong.
    pub error: DialogueError,
}

/// Loads (or reloads) a model; the plugin loads [`LlmDialoguePlugin::model`](super::LlmDialoguePlugin::model)
/// at startup without being asked.
#[derive(Message, Clone, Debug)]
pub struct LoadModel {
    /// The GGUF file.
    pub path: std::path::PathBuf,
}

/// Progress while the model loads.
#[derive(Message, Clone, Copy, Debug)]
pub struct ModelLoading {
    /// From 0 to 1.
    pub fraction: f32,
}

/// The model is ready.
#[derive(Message, Clone, Debug)]
pub struct ModelLoaded {
    /// What was loaded.
    pub info: ModelInfo,
}

/// The model could not be loaded; requests fail with [`DialogueError::ModelUnavailable`].
#[derive(Message, Clone, Debug)]
pub struct ModelFailed {
    /// Why, including how to fix it where known.
    pub error: String,
}

/// Why a line failed. Every variant's message can be shown to a player or a modder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogueError {
    /// No model is loaded (missing or broken file); the message says how to get one.
    #[error("no model is loaded: {0}")]
    ModelUnavailable(String),
    /// The entity is gone or has no [`Npc`](super::Npc) component.
    #[error("{0} is not an NPC (despawned, or no Npc component)")]
    NpcNotFound(Entity),
    /// The persona asset failed to load (the message names the file, line and field).
    #[error("persona: {0}")]
    Persona(String),
    /// The prompt template failed to load or render.
    #[error("{0}")]
    Template(String),
    /// The persona and the newest turn alone are longer than the context.
    #[error("prompt is {tokens} tokens but the context holds {n_ctx}, even without history")]
    ContextOverflow {
        /// Prompt length.
        tokens: usize,
        /// Context size.
        n_ctx: usize,
    },
    /// A parameter of the request, persona or overrides is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Inference failed (the engine's error message).
    #[error("inference failed: {0}")]
    Inference(String),
    /// Structured output (a scene, an action) could not be produced or was refused: a bad
    /// choice index, an invalid story asset, output cut off by the length limit.
    #[error("{0}")]
    Structure(String),
    /// The inference worker crashed on this line; it was restarted.
    #[error("the inference worker crashed ({0}); it has been restarted")]
    WorkerCrashed(String),
}
