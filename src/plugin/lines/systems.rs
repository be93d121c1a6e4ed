//! The systems behind lines: requests become prompts and go to the worker (`PostUpdate`);
//! the worker's reports become [`LineStarted`], [`LineDelta`], [`LineFinished`] and
//! [`LineFailed`], and finished lines join the NPC's history (`PreUpdate`).

use bevy::prelude::*;

use super::messages::{
    CancelLine, LineDelta, LineFailed, LineFinished, LineSentence, LineStarted, LineWriters,
    RequestLine, fail_line,
};
use crate::engine::{CancelToken, GenerateParams};
use crate::memory::RecallQuery;
use crate::persona::Persona;
use crate::plugin::actions::Deciding;
use crate::plugin::assets::DialogueAssets;
use crate::plugin::content::{FilterAction, LineFiltered, report};
use crate::plugin::env::RequestEnv;
use crate::plugin::in_flight::{ActiveKind, Dispatcher, InFlight, Inbox, Progress};
use crate::plugin::narrator::Narrating;
use crate::plugin::npc::{DialogueHistory, Npc, NpcContext, Speaking};
use crate::plugin::request::{DialogueError, RequestId};
use crate::prompt::MAX_TURN_BYTES;
use crate::settings::LineSettings;
use crate::speech::SentenceSplitter;
use crate::worker::{Command, Job, Output};

/// Each streaming line's sentence splitter and the index of its next sentence.
#[derive(Resource, Default)]
pub(crate) struct LineSentences(std::collections::HashMap<RequestId, (SentenceSplitter, usize)>);

impl LineSentences {
    /// Sends the sentences that `text` completes in the line (all that is left, with
    /// `finished`).
    fn feed(
        &mut self,
        commands: &mut Commands,
        out: &mut MessageWriter<LineSentence>,
        (npc, request): (Entity, RequestId),
        text: &str,
        finished: bool,
    ) {
        let (split, next) = self.0.entry(request).or_default();
        let mut sentences = split.push(text);
        if finished {
            sentences.extend(split.finish());
        }
        for text in sentences {
            let ev = LineSentence {
                npc,
                request,
                index: *next,
                text,
            };
            *next += 1;
            crate::plugin::notify::notify(commands, out, ev);
        }
        if finished {
            self.0.remove(&request);
        }
    }
}

/// Lines a conversation asked for ([`Conversation`](crate::plugin::Conversation)): the
/// conversation, and the turns the speaker sees there instead of its own history.
#[derive(Resource, Default)]
pub(crate) struct GroupLines(pub(crate) std::collections::HashMap<RequestId, GroupLine>);

/// A line of a conversation.
pub(crate) struct GroupLine {
    /// The conversation's entity.
    pub(crate) conversation: Entity,
    /// The conversation as the speaker sees it ([`crate::prompt::group_turns`]).
    pub(crate) turns: Vec<crate::engine::ChatMessage>,
}

/// Lines whose persona or template is still loading, in the order they were asked for.
#[derive(Resource, Default)]
pub(crate) struct WaitingLines(Vec<(RequestId, RequestLine)>);

/// `PostUpdate`: [`CancelLine`] messages. Scenes and decisions of the entity stop too.
pub(crate) fn cancel_lines(
    mut commands: Commands,
    mut in_flight: ResMut<InFlight>,
    mut cancels: MessageReader<CancelLine>,
) {
    for cancel in cancels.read() {
        in_flight.cancel_entity(cancel.npc);
        if let Ok(mut e) = commands.get_entity(cancel.npc) {
            e.try_remove::<(Speaking, Narrating, Deciding)>();
        }
    }
}

/// `PostUpdate`: new [`RequestLine`]s join the waiting list.
/// Past [`MAX_PENDING_PER_ENTITY`](crate::plugin::MAX_PENDING_PER_ENTITY) for the NPC or
/// [`MAX_PENDING`](crate::plugin::MAX_PENDING) in all, a request fails at once with
/// [`DialogueError::QueueFull`].
pub(crate) fn queue_lines(
    mut commands: Commands,
    mut in_flight: ResMut<InFlight>,
    mut waiting: ResMut<WaitingLines>,
    mut requests: MessageReader<RequestLine>,
    mut failed: MessageWriter<LineFailed>,
) {
    for request in requests.read() {
        let id = request.id.unwrap_or_else(|| in_flight.next_id());
        match in_flight.admit(request.npc, 0, 0) {
            Ok(()) => {
                in_flight.waiting.push((id, request.npc));
                waiting.0.push((id, request.clone()));
            }
            Err(error) => fail_line(&mut commands, &mut failed, request.npc, id, error),
        }
    }
}

/// The NPC data a line's prompt is built from.
type NpcData<'a> = (
    &'a Npc,
    &'a DialogueHistory,
    &'a NpcContext,
    Option<&'a LineSettings>,
    Option<&'a crate::plugin::actions::NpcDisposition>,
);

/// `PostUpdate`: requests whose persona and template are loaded become prompts and go to the
/// worker; requests that cannot be served fail at once.
#[expect(
    clippy::too_many_arguments,
    reason = "a system's parameters: what it reads and writes"
)]
pub(crate) fn dispatch_lines(
    mut commands: Commands,
    mut dispatcher: Dispatcher,
    mut waiting_lines: ResMut<WaitingLines>,
    mut failed: MessageWriter<LineFailed>,
    mut filtered: MessageWriter<LineFiltered>,
    npcs: Query<NpcData>,
    assets: DialogueAssets,
    env: RequestEnv,
    group: Res<GroupLines>,
) {
    let waiting = std::mem::take(&mut waiting_lines.0);
    for (id, request) in waiting {
        if !dispatcher.in_flight.is_waiting(id) {
            // Cancelled while its assets loaded.
            continue;
        }
        let in_group = group.0.get(&id);
        let job = line_job(id, &request, &npcs, &assets, &env, in_group);
        if !matches!(job, Ok(None)) {
            dispatcher.in_flight.stop_waiting(id);
        }
        match job {
            Ok(Some(ready)) => {
                if let Some(rule) = ready.censored {
                    let ev = LineFiltered {
                        npc: request.npc,
                        request: id,
                        rule,
                        action: FilterAction::CensoredInput,
                    };
                    report(&mut commands, &mut filtered, ev);
                }
                let kind = ActiveKind::Line {
                    player_line: ready.player_line,
                    fallback: ready.fallback,
                    in_conversation: in_group.is_some(),
                };
                dispatcher.send(ready.job, request.npc, kind);
                commands
                    .entity(request.npc)
                    .try_insert(Speaking { request: id });
            }
            Ok(None) => waiting_lines.0.push((id, request)),
            Err(error) => {
                if let DialogueError::Rejected { rule, .. } = &error {
                    let ev = LineFiltered {
                        npc: request.npc,
                        request: id,
                        rule: rule.clone(),
                        action: FilterAction::RejectedInput,
                    };
                    report(&mut commands, &mut filtered, ev);
                }
                fail_line(&mut commands, &mut failed, request.npc, id, error);
            }
        }
    }
}

/// A line ready for the worker.
struct LineReady {
    job: Job,
    /// The player's line as the model sees it (censored by the content policy).
    player_line: Option<String>,
    /// The content rule the player's line broke, if it was censored.
    censored: Option<String>,
    /// What the NPC says if the content policy leaves it nothing to say.
    fallback: String,
}

/// The job for a line, `None` while its assets load.
fn line_job(
    id: RequestId,
    request: &RequestLine,
    npcs: &Query<NpcData>,
    assets: &DialogueAssets,
    env: &RequestEnv,
    group: Option<&GroupLine>,
) -> Result<Option<LineReady>, DialogueError> {
    if let Some(error) = env.unavailable() {
        return Err(error);
    }
    if let Some(line) = &request.player_line
        && line.len() > MAX_TURN_BYTES
    {
        return Err(DialogueError::InvalidRequest(format!(
            "the player's line is {} bytes; the limit is {MAX_TURN_BYTES}",
            line.len()
        )));
    }
    if let Some(direction) = &request.direction
        && direction.len() > MAX_TURN_BYTES
    {
        return Err(DialogueError::InvalidRequest(format!(
            "the line's direction is {} bytes; the limit is {MAX_TURN_BYTES}",
            direction.len()
        )));
    }
    let (npc, history, npc_facts, overrides, disposition) = npcs
        .get(request.npc)
        .map_err(|_| DialogueError::NpcNotFound(request.npc))?;
    let Some(persona) = assets
        .persona(&npc.persona)
        .or_fail(DialogueError::Persona)?
    else {
        return Ok(None);
    };
    let template = assets.prompt(npc.prompt.as_ref(), &assets.builtin.npc);
    let Some(template) = template.or_fail(DialogueError::Template)? else {
        return Ok(None);
    };
    let policy = env
        .policies
        .persona(npc.persona.id(), &env.content, persona);
    let (player_line, censored) = match &request.player_line {
        Some(line) => {
            let (line, censored) = policy.check_player_line(line)?;
            (Some(line), censored)
        }
        None => (None, None),
    };
    let memories = history.memory_lore();
    let mut messages = template
        .npc_messages(
            persona,
            &env.world.facts,
            &crate::plugin::actions::with_disposition(&npc_facts.facts, disposition),
            group.map_or(&history.turns, |g| &g.turns),
            player_line.as_deref(),
            &[&memories, &env.world.lore],
        )
        .map_err(|e| DialogueError::Template(e.to_string()))?;
    if let Some(direction) = &request.direction {
        let at = messages.len() - 1;
        if player_line.is_none() {
            // Inside the newest turn, where it was followed best (measured).
            messages[at].content = crate::prompt::directed_unprompted_line(direction);
        } else {
            // Next to the player's line, as lore notes are.
            let note = format!("Direction for {}'s next line: {direction}", persona.name);
            messages.insert(at, crate::engine::ChatMessage::system(note));
        }
    }
    let (mut params, best_of) = line_params(&env.settings.defaults, persona, overrides, request)?;
    params.guard = policy.guard.clone();
    let best_of = best_of.unwrap_or(env.settings.best_of);
    if !(1..=8).contains(&best_of) {
        return Err(DialogueError::InvalidRequest(format!(
            "best_of {best_of} is outside 1..=8"
        )));
    }
    // A conversation's turns are not the player's with this NPC: nothing to recall.
    let recall = match group {
        None => recall_query(history, player_line.as_deref(), &persona.name, env),
        Some(_) => None,
    };
    let job = Job {
        id,
        slot: request.npc.to_bits(),
        messages,
        params,
        priority: request.priority,
        cancel: CancelToken::new(),
        output: Output::Text {
            best_of,
            speaker: persona.name.clone(),
        },
        recall,
    };
    Ok(Some(LineReady {
        job,
        player_line,
        censored,
        fallback: policy.fallback.clone(),
    }))
}

/// What episodic memory is asked for the player's line: the moments of `history` its
/// prompt does not show. `None` when the NPC speaks first, recall is off or there is
/// nothing older to search.
fn recall_query(
    history: &DialogueHistory,
    player_line: Option<&str>,
    speaker: &str,
    env: &RequestEnv,
) -> Option<Box<RecallQuery>> {
    let query = player_line?;
    let settings = &env.settings;
    if settings.recall_moments == 0 || settings.recall_tokens == 0 || history.episodes.is_empty() {
        return None;
    }
    let episodes = history.unseen_episodes();
    if episodes.is_empty() {
        return None;
    }
    Some(Box::new(RecallQuery {
        query: query.to_owned(),
        episodes,
        speaker: speaker.to_owned(),
        player: crate::prompt::player_name(&env.world.facts).to_owned(),
        limit: settings.recall_moments,
        token_budget: settings.recall_tokens,
        recall: env.recall.0.clone(),
    }))
}

/// The plugin's defaults under the persona's, the NPC's and the request's settings, field
/// by field; the persona's stop strings added. The merged `best_of`, if any layer set it.
fn line_params(
    defaults: &GenerateParams,
    persona: &Persona,
    npc: Option<&LineSettings>,
    request: &RequestLine,
) -> Result<(GenerateParams, Option<usize>), DialogueError> {
    let persona_layer = crate::plugin::request::persona_settings(persona);
    let merged = LineSettings::merge([
        &persona_layer,
        npc.unwrap_or(&LineSettings::default()),
        &request.settings,
    ]);
    let mut params = merged.applied_to(defaults);
    params.stop.extend(persona.stop.iter().cloned());
    params
        .validate()
        .map_err(|e| DialogueError::InvalidRequest(e.to_string()))?;
    Ok((params, merged.best_of))
}

/// `PreUpdate`, after the reports: lines become messages, entity events and history.
pub(crate) fn deliver_lines(
    mut commands: Commands,
    mut inbox: ResMut<Inbox>,
    in_flight: Res<InFlight>,
    mut histories: Query<&mut DialogueHistory>,
    mut out: LineWriters,
    mut filtered: MessageWriter<LineFiltered>,
    mut sentences: ResMut<LineSentences>,
) {
    for (request, npc, progress) in std::mem::take(&mut inbox.lines) {
        match progress {
            Progress::Started(prompt) => {
                let ev = LineStarted {
                    npc,
                    request,
                    prompt,
                };
                crate::plugin::notify::notify(&mut commands, &mut out.started, ev);
            }
            Progress::Delta(text) => {
                let line = (npc, request);
                sentences.feed(&mut commands, &mut out.sentence, line, &text, false);
                let ev = LineDelta { npc, request, text };
                crate::plugin::notify::notify(&mut commands, &mut out.delta, ev);
            }
            Progress::Done(active, mut generations) => {
                let mut generation = generations.swap_remove(0);
                let (player_line, fallback, in_conversation) = match active.kind {
                    ActiveKind::Line {
                        player_line,
                        fallback,
                        in_conversation,
                    } => (player_line, fallback, in_conversation),
                    _ => (None, String::new(), false),
                };
                let (actions, extra) =
                    crate::plugin::content::settle(&mut generation, Some(&fallback));
                let rest = extra.as_deref().unwrap_or_default();
                sentences.feed(&mut commands, &mut out.sentence, (npc, request), rest, true);
                if let Some(text) = extra {
                    let ev = LineDelta { npc, request, text };
                    crate::plugin::notify::notify(&mut commands, &mut out.delta, ev);
                }
                for (rule, action) in actions {
                    let ev = LineFiltered {
                        npc,
                        request,
                        rule,
                        action,
                    };
                    report(&mut commands, &mut filtered, ev);
                }
                // A conversation's lines go to its log (the conversation's systems file them).
                if !in_conversation && let Ok(mut history) = histories.get_mut(npc) {
                    history.push_exchange(player_line, generation.text.clone());
                }
                still_speaking(&mut commands, &in_flight, npc);
                let ev = LineFinished {
                    npc,
                    request,
                    text: generation.text,
                    stop_reason: generation.stop_reason,
                    stats: generation.stats,
                };
                crate::plugin::notify::notify(&mut commands, &mut out.finished, ev);
            }
            Progress::Failed(error) => {
                sentences.0.remove(&request);
                still_speaking(&mut commands, &in_flight, npc);
                fail_line(&mut commands, &mut out.failed, npc, request, error);
            }
        }
    }
    // Cancelled lines send nothing more.
    sentences
        .0
        .retain(|id, _| in_flight.active.contains_key(id));
}

/// After a line ends: [`Speaking`] names the NPC's next line at the worker, or goes.
fn still_speaking(commands: &mut Commands, in_flight: &InFlight, npc: Entity) {
    let Ok(mut entity) = commands.get_entity(npc) else {
        return;
    };
    match in_flight.line_of(npc) {
        Some(request) => entity.try_insert(Speaking { request }),
        None => entity.try_remove::<Speaking>(),
    };
}

/// An NPC lost its [`Npc`] component (or was despawned): stop its lines, free its cache.
pub(crate) fn on_npc_removed(removed: On<Remove, Npc>, mut dispatcher: Dispatcher) {
    dispatcher.in_flight.cancel_entity(removed.entity);
    dispatcher.command(Command::ForgetSlot(removed.entity.to_bits()));
}
