//! Lines: what game systems ask of an NPC and what comes back.
//!
//! Requests are [`Message`]s. Results are both messages (read them with a `MessageReader`
//! anywhere) and [`EntityEvent`]s on the NPC (observe them on one entity).

use std::sync::Arc;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::request::{DialogueError, Priority, RequestId};
use crate::engine::{GenerationStats, SamplingParams, StopReason};

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
    /// Overrides the most sentences for this request.
    pub max_sentences: Option<usize>,
    /// Overrides sampling for this request.
    pub sampling: Option<SamplingParams>,
    /// Draws to keep the best of (1..=8); `None` uses [`DialogueSettings::best_of`].
    ///
    /// [`DialogueSettings::best_of`]: super::DialogueSettings::best_of
    pub best_of: Option<usize>,
    /// What this line should do ("mention the wolves"), told to the model next to the
    /// newest turn, for this line only; it is not part of the history.
    pub direction: Option<String>,
}

impl RequestLine {
    /// A request for an unprompted line from `npc`.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            player_line: None,
            priority: Priority::Normal,
            max_tokens: None,
            max_sentences: None,
            sampling: None,
            best_of: None,
            direction: None,
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
    /// Most sentences in this line.
    pub fn max_sentences(mut self, n: usize) -> Self {
        self.max_sentences = Some(n);
        self
    }
    /// Sampling for this line only.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = Some(sampling);
        self
    }
    /// A direction for this line only: what it should do or be about ("greet the player and
    /// mention the wolves"). The model reads it next to the newest turn; the history keeps
    /// only what was said. At most [`MAX_TURN_BYTES`](crate::prompt::MAX_TURN_BYTES) bytes.
    pub fn direction(mut self, direction: impl Into<String>) -> Self {
        self.direction = Some(direction.into());
        self
    }
    /// Draws `n` lines from one prompt computation and keeps the best by
    /// [`score::line_score`](crate::score::line_score) (no trailing off, no chat markup, no
    /// other name for the speaker; then the one the model was surest of). The line arrives
    /// in one [`LineDelta`] when chosen instead of streaming, and takes about `n` times as
    /// long to compute.
    pub fn best_of(mut self, n: usize) -> Self {
        self.best_of = Some(n);
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

/// The writers of every line result, for the systems that deliver them.
#[derive(SystemParam)]
pub(crate) struct LineWriters<'w> {
    pub(crate) started: MessageWriter<'w, LineStarted>,
    pub(crate) delta: MessageWriter<'w, LineDelta>,
    pub(crate) finished: MessageWriter<'w, LineFinished>,
    pub(crate) failed: MessageWriter<'w, LineFailed>,
}

/// Sends a [`LineFailed`] as a message, and as an entity event while the NPC exists.
pub(crate) fn fail_line(
    commands: &mut Commands,
    failed: &mut MessageWriter<LineFailed>,
    npc: Entity,
    request: RequestId,
    error: DialogueError,
) {
    tracing::warn!(?npc, ?request, "line failed: {error}");
    let ev = LineFailed {
        npc,
        request,
        error,
    };
    failed.write(ev.clone());
    if commands.get_entity(npc).is_ok() {
        commands.trigger(ev);
    }
}
