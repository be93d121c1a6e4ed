//! Conversations between NPCs: several characters in one scene, each speaking in its own
//! persona and hearing the others, the player free to join and leave.
//!
//! Spawn a [`Conversation`] naming its participants; its lines stream as ordinary lines of
//! each speaker ([`LineStarted`](super::LineStarted), [`LineDelta`](super::LineDelta),
//! [`LineSentence`](super::LineSentence), [`LineFinished`](super::LineFinished) on the NPC)
//! and, once finished, go to the conversation's [`ConversationLog`] with a
//! [`ConversationLine`] on the conversation. They are not added to the speakers'
//! [`DialogueHistory`](super::DialogueHistory), which stays the player's with each NPC.

mod systems;

use bevy::prelude::*;
use serde::{Deserialize, Serialize};

use super::request::{Priority, RequestId};
use super::{DialogueSystems, Flow};
use crate::prompt::SpokenLine;

/// Who speaks next in a [`Conversation`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reflect)]
#[reflect(Clone, Debug, Default, PartialEq)]
pub enum TurnPolicy {
    /// The participants in their order, round and round (the default).
    #[default]
    InOrder,
    /// The one the game names with [`GiveTurn`]; the conversation waits until it does.
    Game,
    /// The one the model chooses, constrained to the participants' names (never the one
    /// who just spoke); a choice that fails falls back to the next in order.
    Model,
}

/// A conversation between NPCs: spawn it on its own entity. It starts at once: the first
/// participant (or the model's or game's choice) opens it, and it goes on, one line at a
/// time, until `max_lines` NPC lines since the player last spoke, when it sends
/// [`ConversationEnded`]. A line from the player ([`SayInConversation`]) lets it run for
/// `max_lines` more. Despawn it to stop it (its line in progress is cancelled).
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// fn start(mut commands: Commands, mira: Entity, brannoc: Entity) {
///     commands.spawn(
///         Conversation::new([mira, brannoc])
///             .about("the wolves seen by the mill")
///             .max_lines(6),
///     );
/// }
/// ```
#[derive(Component, Clone, Debug, PartialEq, Reflect)]
#[reflect(Component, Clone, Debug, PartialEq)]
#[require(ConversationLog, systems::Turns)]
pub struct Conversation {
    /// The NPCs taking part (entities with [`Npc`](super::Npc)), in their speaking order
    /// for [`TurnPolicy::InOrder`].
    pub participants: Vec<Entity>,
    /// What it is about ("the wolves seen by the mill"), told to every speaker.
    pub topic: Option<String>,
    /// Who speaks next.
    pub turns: TurnPolicy,
    /// The most NPC lines in a row without the player (8 by default).
    pub max_lines: usize,
    /// The priority of its lines while the player is not in it ([`Priority::Background`] by
    /// default, so that it yields to the player's own conversations); once the player has
    /// joined, [`Priority::Player`].
    pub priority: Priority,
}

impl Conversation {
    /// A conversation between `participants`, in order, at `Background` priority, at most
    /// 8 lines.
    pub fn new(participants: impl IntoIterator<Item = Entity>) -> Self {
        Self {
            participants: participants.into_iter().collect(),
            topic: None,
            turns: TurnPolicy::InOrder,
            max_lines: 8,
            priority: Priority::Background,
        }
    }
    /// What the conversation is about.
    pub fn about(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
    /// Who speaks next.
    pub fn turns(mut self, policy: TurnPolicy) -> Self {
        self.turns = policy;
        self
    }
    /// The most NPC lines in a row without the player.
    pub fn max_lines(mut self, n: usize) -> Self {
        self.max_lines = n;
        self
    }
    /// The priority of its lines while the player is not in it.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// What was said in a [`Conversation`], oldest first, and whether the player is in it.
/// Serializable, for save games: save it with the conversation's settings and spawn both
/// again (the participants are the game's NPC entities, which the game spawns anew); the
/// conversation goes on from its last line.
#[derive(Component, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reflect)]
#[reflect(Component, Clone, Debug, Default, PartialEq)]
pub struct ConversationLog {
    /// Every line, the player's included (under the world's
    /// [`player_name`](crate::prompt::PLAYER_NAME_FACT)).
    pub lines: Vec<SpokenLine>,
    /// Whether the player has joined (and not left).
    #[serde(default)]
    pub player_joined: bool,
}

impl ConversationLog {
    /// The most lines kept: past it, the oldest are dropped (prompts show the newest 48
    /// turns at most anyway).
    pub const MAX_LINES: usize = 256;

    /// Appends a line, dropping the oldest past [`MAX_LINES`](Self::MAX_LINES).
    pub fn push(&mut self, speaker: impl Into<String>, text: impl Into<String>) {
        self.lines.push(SpokenLine {
            speaker: speaker.into(),
            text: text.into(),
        });
        let excess = self.lines.len().saturating_sub(Self::MAX_LINES);
        self.lines.drain(..excess);
    }
}

/// The player says something in a conversation (and joins it): the line goes into its log,
/// a line of an NPC still being computed is dropped (it could not answer this; it ends with
/// [`LineInterrupted`]), and the next speaker answers at [`Priority::Player`].
#[derive(Message, Clone, Debug, Reflect)]
pub struct SayInConversation {
    /// The conversation's entity.
    pub conversation: Entity,
    /// What the player says.
    pub line: String,
}

/// The player leaves a conversation: its lines go back to the conversation's own priority.
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct LeaveConversation {
    /// The conversation's entity.
    pub conversation: Entity,
}

/// Names the next speaker of a conversation whose turns are [`TurnPolicy::Game`]'s (with
/// another policy, it overrides the policy's choice once).
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct GiveTurn {
    /// The conversation's entity.
    pub conversation: Entity,
    /// The participant who speaks next.
    pub speaker: Entity,
}

/// A line was added to a conversation's log (after its [`LineFinished`](super::LineFinished)
/// on the speaker).
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct ConversationLine {
    /// The conversation.
    #[event_target]
    pub conversation: Entity,
    /// Who spoke.
    pub speaker: Entity,
    /// The line's request.
    pub request: RequestId,
    /// What they said.
    pub text: String,
}

/// A conversation's line was dropped before it finished, because the player spoke in the
/// conversation (it could not answer them) or the conversation was despawned: what arrived
/// of it ([`LineDelta`](super::LineDelta)s) will not be finished, and no other result comes
/// for it. Message and entity event on the speaker; end the line's text box here.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct LineInterrupted {
    /// The speaker.
    #[event_target]
    pub npc: Entity,
    /// The line's request.
    pub request: RequestId,
    /// The conversation.
    pub conversation: Entity,
}

/// A conversation reached its `max_lines` without the player, or has no one left to
/// speak: it waits for the player ([`SayInConversation`]) or for the game to despawn it.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct ConversationEnded {
    /// The conversation.
    #[event_target]
    pub conversation: Entity,
    /// Lines in its log.
    pub lines: usize,
}

/// Registers conversations: their messages and the systems that run them.
pub(crate) struct ConversationsPlugin;

impl Plugin for ConversationsPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<SayInConversation>()
            .add_message::<LeaveConversation>()
            .add_message::<GiveTurn>()
            .add_message::<ConversationLine>()
            .add_message::<ConversationEnded>()
            .add_message::<LineInterrupted>()
            .register_type::<LineInterrupted>()
            .register_type::<Conversation>()
            .register_type::<ConversationLog>()
            .register_type::<ConversationLine>()
            .register_type::<ConversationEnded>()
            .add_systems(
                PreUpdate,
                (systems::file_lines, systems::deliver_turns)
                    .chain()
                    .after(Flow::Lines)
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (systems::hear_the_player, systems::advance_conversations)
                    .chain()
                    .after(Flow::Model)
                    .before(Flow::Lines)
                    .in_set(DialogueSystems::Dispatch),
            )
            .add_observer(systems::on_conversation_removed);
    }
}
