//! Lines: what game systems ask of an NPC and what comes back.
//!
//! Requests are [`Message`]s. Results are both messages (read them with a `MessageReader`
//! anywhere) and [`EntityEvent`]s on the NPC (observe them on one entity).

use std::sync::Arc;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::engine::{GenerationStats, SamplingParams, StopReason};
use crate::plugin::request::{DialogueError, Priority, RequestId};
use crate::settings::LineSettings;

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
#[derive(Message, Clone, Debug, Reflect)]
pub struct RequestLine {
    /// The NPC (an entity with [`Npc`](crate::plugin::Npc)).
    pub npc: Entity,
    /// What the player said, if anything.
    pub player_line: Option<String>,
    /// Queue order.
    pub priority: Priority,
    /// Settings for this line only, over the plugin's, the persona's and the NPC's
    /// ([`LineSettings`] on the NPC), field by field: a seed here keeps the persona's
    /// temperature. `best_of` (1..=8) draws that many lines and keeps the best; `None` there
    /// uses [`DialogueSettings::best_of`].
    ///
    /// [`DialogueSettings::best_of`]: crate::plugin::DialogueSettings::best_of
    pub settings: LineSettings,
    /// What this line should do ("mention the wolves"), told to the model next to the
    /// newest turn, for this line only; it is not part of the history.
    pub direction: Option<String>,
    /// The id results will carry: given out by
    /// [`DialogueRequests::request_line`](crate::plugin::DialogueRequests::request_line); `None`
    /// gets one when the request is dispatched (learn it from [`LineStarted`]).
    pub id: Option<RequestId>,
}

impl RequestLine {
    /// A request for an unprompted line from `npc`.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            player_line: None,
            priority: Priority::Normal,
            settings: LineSettings::default(),
            direction: None,
            id: None,
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
        self.settings.max_tokens = Some(max_tokens);
        self
    }
    /// Most sentences in this line.
    pub fn max_sentences(mut self, n: usize) -> Self {
        self.settings.max_sentences = Some(n);
        self
    }
    /// A fixed seed for this line, keeping every other setting (the persona's temperature
    /// too).
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }
    /// Every sampling field for this line (a `seed` of `None` keeps the layers' below).
    /// To change one field, use [`RequestLine::seed`] or [`RequestLine::settings`].
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.settings = LineSettings::merge([&self.settings, &LineSettings::from(&sampling)]);
        self
    }
    /// These settings over the request's, field by field.
    pub fn settings(mut self, settings: LineSettings) -> Self {
        self.settings = LineSettings::merge([&self.settings, &settings]);
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
        self.settings.best_of = Some(n);
        self
    }
}

/// Stops an NPC's queued and current lines. No result arrives for them afterwards.
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct CancelLine {
    /// The NPC.
    pub npc: Entity,
}

/// An NPC started speaking: the model is computing the line.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct LineDelta {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// New text (whole UTF-8 characters, never part of a stop string).
    pub text: String,
}

/// A whole sentence of a line, as soon as it is complete: for a voice (text-to-speech,
/// lip-sync), which needs sentences rather than [`LineDelta`]s. Sent after content control
/// has settled the text (a word taken back never reaches a sentence), in order (`index` 0,
/// 1, ...), the last one just before [`LineFinished`]; together they are the finished line's
/// text, cut at sentence ends and line breaks and trimmed
/// ([`SentenceSplitter`](crate::speech::SentenceSplitter) has the rules, CJK and other
/// scripts included). A line that fails sends no sentence after its last complete one.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct LineSentence {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// Its place in the line, from 0.
    pub index: usize,
    /// The sentence, trimmed.
    pub text: String,
}

/// A finished line; it has been appended to the NPC's
/// [`DialogueHistory`](crate::plugin::DialogueHistory).
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
    pub(crate) sentence: MessageWriter<'w, LineSentence>,
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
    crate::plugin::notify::notify(commands, failed, ev);
}
