//! The systems behind conversations: the player's lines and the game's turns come in and
//! the next line is asked for (`PostUpdate`, before lines are queued); finished lines and
//! the model's choices of speaker are filed (`PreUpdate`, after lines are delivered).

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::{
    Conversation, ConversationEnded, ConversationLine, ConversationLog, GiveTurn,
    LeaveConversation, LineInterrupted, SayInConversation, TurnPolicy,
};
use crate::engine::{CancelToken, Grammar};
use crate::plugin::assets::{DialogueAssets, Ready};
use crate::plugin::env::RequestEnv;
use crate::plugin::in_flight::{ActiveKind, Dispatcher, Inbox, Progress};
use crate::plugin::lines::systems::{GroupLine, GroupLines};
use crate::plugin::lines::{LineFailed, LineFinished, RequestLine};
use crate::plugin::npc::{Npc, Speaking};
use crate::plugin::request::{Priority, RequestId};
use crate::prompt::{
    MAX_TURN_BYTES, group_cue, group_opening, group_turns, next_speaker_messages,
    next_speaker_schema, player_name,
};
use crate::worker::{Command, Job, Output};

/// Failed lines in a row after which a conversation ends.
const MAX_FAILURES: u32 = 3;

/// The longest answer to "who speaks next", in tokens (a quoted name).
const CHOICE_TOKENS: usize = 16;

/// A conversation's progress: what it waits for. Required by [`Conversation`], so that a
/// [`GiveTurn`] sent in the frame it is spawned counts. Not saved: a loaded conversation
/// asks for its next line anew.
#[derive(Component, Default, Debug)]
pub(crate) struct Turns {
    /// The line (or the choice of speaker) at the worker.
    pending: Option<Pending>,
    /// The speaker the game named ([`GiveTurn`]).
    given: Option<Entity>,
    /// The speaker the model chose.
    chosen: Option<Entity>,
    /// The model's choice failed: the next in order speaks this once.
    in_order_once: bool,
    /// Failed lines in a row.
    failures: u32,
    /// [`ConversationEnded`] was sent; the conversation waits for the player.
    ended: bool,
}

/// A request of a conversation at the worker.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    /// The speaker and its name; `None` while the model chooses the speaker.
    speaker: Option<(Entity, String)>,
}

/// A participant whose persona has loaded: its entity, name and description.
struct Cast {
    entity: Entity,
    name: String,
    description: String,
}

/// What dropping a conversation's request touches.
#[derive(SystemParam)]
pub(crate) struct Dropper<'w, 's> {
    commands: Commands<'w, 's>,
    dispatcher: Dispatcher<'w>,
    group: ResMut<'w, GroupLines>,
    interrupted: MessageWriter<'w, LineInterrupted>,
}

impl Dropper<'_, '_> {
    /// Cancels what conversation `conversation` has at the worker; a line ends with
    /// [`LineInterrupted`].
    fn drop_pending(&mut self, conversation: Entity, turns: &mut Turns) {
        let Some(pending) = turns.pending.take() else {
            return;
        };
        self.dispatcher.in_flight.cancel_request(pending.id);
        self.group.0.remove(&pending.id);
        let Some((npc, _)) = pending.speaker else {
            return;
        };
        if self.dispatcher.in_flight.line_of(npc).is_none()
            && let Ok(mut entity) = self.commands.get_entity(npc)
        {
            entity.try_remove::<Speaking>();
        }
        let ev = LineInterrupted {
            npc,
            request: pending.id,
            conversation,
        };
        crate::plugin::notify::notify(&mut self.commands, &mut self.interrupted, ev);
    }
}

/// `PostUpdate`: the player's lines go into conversations (cancelling a line that could not
/// answer them), the player leaves, the game names speakers.
pub(crate) fn hear_the_player(
    mut said: MessageReader<SayInConversation>,
    mut left: MessageReader<LeaveConversation>,
    mut given: MessageReader<GiveTurn>,
    mut conversations: Query<(&mut ConversationLog, &mut Turns), With<Conversation>>,
    mut dropper: Dropper,
    env: RequestEnv,
) {
    let player = player_name(&env.world.facts);
    for say in said.read() {
        let Ok((mut log, mut turns)) = conversations.get_mut(say.conversation) else {
            tracing::warn!(conversation = ?say.conversation, "the player spoke in a conversation that does not exist");
            continue;
        };
        let line = say.line.trim();
        if line.is_empty() {
            continue;
        }
        log.push(player, line);
        log.player_joined = true;
        dropper.drop_pending(say.conversation, &mut turns);
        turns.ended = false;
        turns.failures = 0;
    }
    for leave in left.read() {
        if let Ok((mut log, _)) = conversations.get_mut(leave.conversation) {
            log.player_joined = false;
        }
    }
    for turn in given.read() {
        if let Ok((_, mut turns)) = conversations.get_mut(turn.conversation) {
            turns.given = Some(turn.speaker);
            turns.ended = false;
        }
    }
}

/// `PostUpdate`, before lines are queued: each conversation that waits for nothing asks its
/// next speaker for a line, or the model for the next speaker.
#[expect(
    clippy::too_many_arguments,
    reason = "a system's parameters: what it reads and writes"
)]
pub(crate) fn advance_conversations(
    mut commands: Commands,
    mut conversations: Query<(Entity, &Conversation, &ConversationLog, &mut Turns)>,
    npcs: Query<&Npc>,
    assets: DialogueAssets,
    env: RequestEnv,
    mut dispatcher: Dispatcher,
    mut group: ResMut<GroupLines>,
    mut requests: MessageWriter<RequestLine>,
    mut ended: MessageWriter<ConversationEnded>,
) {
    let player = player_name(&env.world.facts).to_owned();
    for (entity, conversation, log, mut turns) in &mut conversations {
        if let Some(pending) = &turns.pending {
            if dispatcher.in_flight.is_pending(pending.id) {
                continue;
            }
            // Cancelled by the game, or its speaker is gone: the turn passes.
            group.0.remove(&pending.id);
            turns.pending = None;
        }
        if turns.ended || env.unavailable().is_some() {
            continue;
        }
        let Some(cast) = cast(conversation, &npcs, &assets) else {
            continue;
        };
        let since_player = log
            .lines
            .iter()
            .rev()
            .take_while(|l| l.speaker != player)
            .count();
        if cast.is_empty()
            || since_player >= conversation.max_lines
            || turns.failures >= MAX_FAILURES
        {
            turns.ended = true;
            let ev = ConversationEnded {
                conversation: entity,
                lines: log.lines.len(),
            };
            crate::plugin::notify::notify(&mut commands, &mut ended, ev);
            continue;
        }
        let last = log
            .lines
            .iter()
            .rev()
            .find(|l| l.speaker != player)
            .map(|l| l.speaker.as_str());
        let in_cast = |e: Option<Entity>| e.and_then(|e| cast.iter().position(|c| c.entity == e));
        let next_in_order = || {
            last.and_then(|name| cast.iter().position(|c| c.name == name))
                .map_or(0, |i| (i + 1) % cast.len())
        };
        let priority = if log.player_joined {
            Priority::Player
        } else {
            conversation.priority
        };
        let speaker = if let Some(i) = in_cast(turns.given.take()) {
            i
        } else if let Some(i) = in_cast(turns.chosen.take()) {
            i
        } else {
            let policy = if std::mem::take(&mut turns.in_order_once) {
                TurnPolicy::InOrder
            } else {
                conversation.turns
            };
            match policy {
                TurnPolicy::InOrder => next_in_order(),
                TurnPolicy::Game => continue,
                TurnPolicy::Model => {
                    let candidates: Vec<&str> = cast
                        .iter()
                        .map(|c| c.name.as_str())
                        .filter(|n| cast.len() == 1 || Some(*n) != last)
                        .collect();
                    if candidates.len() > 1 {
                        let job = choice_job(
                            &mut dispatcher,
                            entity,
                            conversation,
                            log,
                            &cast,
                            &candidates,
                            priority,
                            &env,
                        );
                        turns.pending = Some(Pending {
                            id: job.id,
                            speaker: None,
                        });
                        dispatcher.send(job, entity, ActiveKind::Turn);
                        continue;
                    }
                    cast.iter()
                        .position(|c| c.name == candidates[0])
                        .unwrap_or_else(next_in_order)
                }
            }
        };
        let me = &cast[speaker];
        let mut others: Vec<&str> = cast
            .iter()
            .filter(|c| c.entity != me.entity)
            .map(|c| c.name.as_str())
            .collect();
        if log.player_joined {
            others.push(&player);
        }
        let topic = conversation.topic.as_deref();
        let (history, newest) = group_turns(&log.lines, &me.name);
        let cue = group_cue(&me.name, &others, topic);
        let said = match newest {
            // The newest lines, as many as a turn holds with the cue.
            Some(newest) => {
                let room = MAX_TURN_BYTES.saturating_sub(cue.len() + 1);
                format!("{}\n{cue}", tail(&newest, room))
            }
            None if log.lines.is_empty() => group_opening(&me.name, &others, topic),
            None => cue,
        };
        let id = dispatcher.in_flight.next_id();
        group.0.insert(
            id,
            GroupLine {
                conversation: entity,
                turns: history,
            },
        );
        requests.write(RequestLine {
            player_line: Some(said),
            priority,
            id: Some(id),
            ..RequestLine::new(me.entity)
        });
        turns.pending = Some(Pending {
            id,
            speaker: Some((me.entity, me.name.clone())),
        });
    }
}

/// The last `max` bytes of `text` at most, from a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The participants whose personas have loaded, in order; `None` while one still loads.
/// Entities that are not NPCs, and personas that failed to load, are left out.
fn cast(
    conversation: &Conversation,
    npcs: &Query<&Npc>,
    assets: &DialogueAssets,
) -> Option<Vec<Cast>> {
    let mut cast = Vec::with_capacity(conversation.participants.len());
    for &entity in &conversation.participants {
        let Ok(npc) = npcs.get(entity) else {
            continue;
        };
        match assets.persona(&npc.persona) {
            Ready::Yes(persona) => cast.push(Cast {
                entity,
                name: persona.name.clone(),
                description: persona.description.clone(),
            }),
            Ready::NotYet => return None,
            Ready::Failed(_) => {}
        }
    }
    Some(cast)
}

/// The cache slot of a conversation's choices of speaker: its own, next to every NPC's.
fn choice_slot(conversation: Entity) -> u64 {
    conversation.to_bits() ^ (1 << 62)
}

/// The job that asks the model who of `candidates` speaks next.
#[expect(clippy::too_many_arguments, reason = "what the question is made of")]
fn choice_job(
    dispatcher: &mut Dispatcher,
    entity: Entity,
    conversation: &Conversation,
    log: &ConversationLog,
    cast: &[Cast],
    candidates: &[&str],
    priority: Priority,
    env: &RequestEnv,
) -> Job {
    let participants: Vec<(&str, &str)> = cast
        .iter()
        .map(|c| (c.name.as_str(), c.description.as_str()))
        .collect();
    let mut params = env.settings.defaults.clone();
    params.max_tokens = CHOICE_TOKENS;
    params.max_sentences = None;
    Job {
        id: dispatcher.in_flight.next_id(),
        slot: choice_slot(entity),
        messages: next_speaker_messages(
            &participants,
            conversation.topic.as_deref(),
            &log.lines,
            candidates,
        ),
        params,
        priority,
        cancel: CancelToken::new(),
        output: Output::Structured {
            grammar: Grammar::json_schema(next_speaker_schema(candidates)),
            alternatives: 1,
        },
        recall: None,
    }
}

/// `PreUpdate`, after lines are delivered: a conversation's finished line goes to its log;
/// a failed one passes the turn.
pub(crate) fn file_lines(
    mut commands: Commands,
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
    mut group: ResMut<GroupLines>,
    mut conversations: Query<(&mut ConversationLog, &mut Turns)>,
    mut out: MessageWriter<ConversationLine>,
) {
    for line in finished.read() {
        let Some(GroupLine { conversation, .. }) = group.0.remove(&line.request) else {
            continue;
        };
        let Ok((mut log, mut turns)) = conversations.get_mut(conversation) else {
            continue;
        };
        let Some(Pending {
            speaker: Some((speaker, name)),
            ..
        }) = turns.pending.take()
        else {
            continue;
        };
        let text = line.text.trim();
        if text.is_empty() {
            turns.failures += 1;
            continue;
        }
        turns.failures = 0;
        log.push(name, text);
        let ev = ConversationLine {
            conversation,
            speaker,
            request: line.request,
            text: text.to_owned(),
        };
        crate::plugin::notify::notify(&mut commands, &mut out, ev);
    }
    for line in failed.read() {
        let Some(GroupLine { conversation, .. }) = group.0.remove(&line.request) else {
            continue;
        };
        if let Ok((_, mut turns)) = conversations.get_mut(conversation) {
            turns.pending = None;
            turns.failures += 1;
        }
    }
}

/// `PreUpdate`, after the reports: the model's choice of the next speaker. One that fails
/// leaves the turn to the next in order.
pub(crate) fn deliver_turns(
    mut inbox: ResMut<Inbox>,
    mut conversations: Query<(&Conversation, &mut Turns)>,
    npcs: Query<&Npc>,
    assets: DialogueAssets,
) {
    for (_, entity, progress) in std::mem::take(&mut inbox.turns) {
        let Ok((conversation, mut turns)) = conversations.get_mut(entity) else {
            continue;
        };
        match progress {
            Progress::Started(_) | Progress::Delta(_) => continue,
            Progress::Done(_, generations) => {
                let name: Option<String> = generations
                    .first()
                    .and_then(|g| serde_json::from_str(g.text.trim()).ok());
                turns.chosen = name.and_then(|name| {
                    let cast = cast(conversation, &npcs, &assets)?;
                    cast.into_iter().find(|c| c.name == name).map(|c| c.entity)
                });
                if turns.chosen.is_none() {
                    turns.in_order_once = true;
                    tracing::warn!(
                        ?entity,
                        "the model's choice of speaker named nobody; the next in order speaks"
                    );
                }
            }
            Progress::Failed(error) => {
                turns.in_order_once = true;
                tracing::warn!(
                    ?entity,
                    "choosing the next speaker failed: {error}; the next in order speaks"
                );
            }
        }
        turns.pending = None;
    }
}

/// A conversation was despawned (or lost its [`Conversation`]): its line in progress stops.
pub(crate) fn on_conversation_removed(
    removed: On<Remove, Conversation>,
    mut conversations: Query<&mut Turns>,
    mut dropper: Dropper,
) {
    if let Ok(mut turns) = conversations.get_mut(removed.entity) {
        dropper.drop_pending(removed.entity, &mut turns);
    }
    let slot = choice_slot(removed.entity);
    dropper.dispatcher.command(Command::ForgetSlot(slot));
}
