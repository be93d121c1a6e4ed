//! What every request shares: its id, its priority, the settings it runs under, and the errors
//! it can end with.

use bevy::prelude::*;

use crate::engine::GenerateParams;

pub use crate::worker::{Priority, RequestId};

/// A persona's settings as a layer: its sampling (every field, if it sets any), length and
/// sentences.
pub(crate) fn persona_settings(persona: &crate::persona::Persona) -> crate::settings::LineSettings {
    crate::settings::LineSettings {
        max_tokens: persona.max_tokens,
        max_sentences: persona.max_sentences,
        ..persona
            .sampling
            .as_ref()
            .map(crate::settings::LineSettings::from)
            .unwrap_or_default()
    }
}

/// The most lines and decisions one entity may have waiting or at the worker; more fail with
/// [`DialogueError::QueueFull`].
pub const MAX_PENDING_PER_ENTITY: usize = 8;

/// The most lines and decisions waiting or at the worker in all.
pub const MAX_PENDING: usize = 256;

/// Settings that can change while the game runs.
#[derive(Resource, Clone, Debug, Reflect)]
#[reflect(Resource, Clone, Debug)]
pub struct DialogueSettings {
    /// Generation settings under the persona's, the NPC's and the request's.
    pub defaults: GenerateParams,
    /// Draws per line (1..=8) when the request does not say: the best by
    /// [`crate::score::line_score`] is kept and arrives in one piece instead of streaming.
    /// 1 (the default) streams the only draw. Scenes have no best-of: on the quality suite
    /// it bought nothing for them (QUALITY.md).
    pub best_of: usize,
    /// The time the game's own work may take per frame (from `First` to `Last`, rendering
    /// and vsync waits not counted). While frames take longer, the inference worker pauses
    /// between its steps, up to 50 ms, and stops pausing once frames are back under it
    /// (`DialogueModel::pause` shows the pause). `None` (the default): never paced.
    pub frame_budget: Option<std::time::Duration>,
    /// When an NPC's history holds more turns than this, the model summarises the oldest
    /// (all but the newest half of this many) into [`DialogueHistory::summary`], which
    /// replaces them, instead of letting them fall out of the prompt unsaid. `None`: never.
    /// The default, 48, is the most turns a prompt shows.
    ///
    /// [`DialogueHistory::summary`]: super::DialogueHistory::summary
    pub summarize_after: Option<usize>,
    /// The most earlier moments recalled for a player's line: the NPC's
    /// [`episodes`](super::DialogueHistory::episodes) the prompt does not show, ranked by
    /// [`DialogueRecall`](super::DialogueRecall) against the line, go next to it as a note.
    /// 0 turns recall off. The default: 3.
    pub recall_moments: usize,
    /// The most tokens those moments may take (counted as four bytes a token). The
    /// default: 160.
    pub recall_tokens: usize,
}

/// Why a request (a line, a scene, a decision) failed. Every variant's message can be shown to a player or a modder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Reflect)]
#[reflect(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DialogueError {
    /// No model is loaded (missing or broken file); the message says how to get one.
    #[error("no model is loaded: {0}")]
    ModelUnavailable(String),
    /// The entity is gone or has no [`Npc`](super::Npc) component.
    #[error("{0} is not an NPC (despawned, or no Npc component)")]
    NpcNotFound(Entity),
    /// The entity is gone or has no [`Narrator`](super::Narrator) component.
    #[error("{0} is not a story (despawned, or no Narrator component)")]
    NotANarrator(Entity),
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
    /// Too many requests are waiting: [`MAX_PENDING_PER_ENTITY`] for one entity or
    /// [`MAX_PENDING`] in all. Nothing was queued; ask again once results arrive.
    #[error("queue full: {0}")]
    QueueFull(String),
    /// The inference worker crashed on this line. It reloads the model and serves the next
    /// line, unless the model crashed it three times in a row ([`ModelFailed`] then says so).
    ///
    /// [`ModelFailed`]: super::ModelFailed
    #[error("the inference worker crashed on this line ({0})")]
    WorkerCrashed(String),
    /// The inference server of the remote backend failed this request: unreachable, a
    /// refused key, busy after every retry, a timeout, a stream cut mid-line. The message
    /// names the server's URL (and the key's variable when the key was refused). Nothing was
    /// added to the history.
    #[error("{0}")]
    Server(String),
    /// The [`ContentPolicy`](crate::content::ContentPolicy) refused the player's line
    /// ([`PlayerLineCheck::Reject`](crate::content::PlayerLineCheck::Reject)): show `message`.
    /// Nothing was generated or added to the history.
    #[error("{message}")]
    Rejected {
        /// The rule the line broke (`banned: dragon`, `profanity`).
        rule: String,
        /// The policy's message for the player.
        message: String,
    },
    /// A structured output (a scene's choices) kept breaking the
    /// [`ContentPolicy`](crate::content::ContentPolicy) past its rollback budget.
    #[error("{0}")]
    Filtered(String),
}

impl From<crate::worker::WorkerError> for DialogueError {
    fn from(e: crate::worker::WorkerError) -> Self {
        use crate::worker::WorkerError;
        match e {
            WorkerError::ModelUnavailable(why) => Self::ModelUnavailable(why),
            WorkerError::Template(why) => Self::Template(why),
            WorkerError::ContextOverflow { tokens, n_ctx } => {
                Self::ContextOverflow { tokens, n_ctx }
            }
            WorkerError::InvalidRequest(why) => Self::InvalidRequest(why),
            WorkerError::Structure(why) => Self::Structure(why),
            WorkerError::Filtered(why) => Self::Filtered(why),
            WorkerError::Crashed(why) => Self::WorkerCrashed(why),
            WorkerError::Server(why) => Self::Server(why),
            WorkerError::Inference(why) => Self::Inference(why),
        }
    }
}
