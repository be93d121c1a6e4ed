//! NPC actions in the app: an NPC decides among declared actions, under a JSON schema so
//! that the decision always parses and is always one it may take.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::disposition::{
    DispositionChanged, NpcDisposition, UpdateDisposition, change_disposition, feel_action,
    with_disposition,
};
use crate::action::{ActionSpec, action_schema, parse_action};
use crate::engine::{CancelToken, Grammar, Role, SamplingParams};
use crate::plugin::assets::DialogueAssets;
use crate::plugin::env::RequestEnv;
use crate::plugin::in_flight::{ActiveKind, Dispatcher, InFlight, Inbox, Progress};
use crate::plugin::npc::{DialogueHistory, Npc, NpcContext};
use crate::plugin::request::{DialogueError, Priority, RequestId};
use crate::settings::LineSettings;
use crate::worker::{Job, Output};

/// Asks an NPC to decide what to do among its persona's `actions` (or the request's).
#[derive(Message, Clone, Debug, Reflect)]
pub struct RequestAction {
    /// The NPC.
    pub npc: Entity,
    /// What just happened, for the model; `None` uses the player's last line.
    pub situation: Option<String>,
    /// Actions to choose from instead of the persona's.
    pub actions: Option<Vec<ActionSpec>>,
    /// Settings for this decision, over the persona's and the NPC's, field by field.
    pub settings: LineSettings,
    /// The id results will carry (see [`RequestLine::id`](crate::plugin::RequestLine::id)).
    pub id: Option<RequestId>,
}

impl RequestAction {
    /// A decision by `npc` among its persona's actions.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            situation: None,
            actions: None,
            settings: LineSettings::default(),
            id: None,
        }
    }
    /// What just happened.
    pub fn situation(mut self, text: impl Into<String>) -> Self {
        self.situation = Some(text.into());
        self
    }
    /// Actions to choose from.
    pub fn actions(mut self, actions: Vec<ActionSpec>) -> Self {
        self.actions = Some(actions);
        self
    }
    /// Sampling for this decision.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.settings = LineSettings::merge([&self.settings, &LineSettings::from(&sampling)]);
        self
    }
    /// A fixed seed for this decision, keeping the persona's other settings.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }
}

/// An NPC decided to act: always a declared action with valid arguments. Failures arrive as
/// [`ActionFailed`].
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct ActionFinished {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The action's name.
    pub name: String,
    /// Its arguments, by name (JSON values, which reflection does not see: inspectors
    /// show the name only).
    #[reflect(ignore)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// The old name of [`ActionFinished`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `ActionFinished` (results are `*Finished`)"
)]
pub type NpcAction = ActionFinished;

/// An NPC could not decide: no actions to choose from, its persona failed to load, the model
/// is missing. The game keeps running; the NPC does nothing.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct ActionFailed {
    /// The NPC (it may no longer exist, for [`DialogueError::NpcNotFound`]).
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// What went wrong.
    pub error: DialogueError,
}

/// The writers of every decision result.
#[derive(SystemParam)]
pub(crate) struct ActionWriters<'w> {
    finished: MessageWriter<'w, ActionFinished>,
    failed: MessageWriter<'w, ActionFailed>,
    changed: MessageWriter<'w, DispositionChanged>,
}

impl ActionWriters<'_> {
    fn fail(
        &mut self,
        commands: &mut Commands,
        npc: Entity,
        request: RequestId,
        error: DialogueError,
    ) {
        tracing::warn!(?npc, ?request, "decision failed: {error}");
        let ev = ActionFailed {
            npc,
            request,
            error,
        };
        crate::plugin::notify::notify(commands, &mut self.failed, ev);
    }
}

/// Present on an NPC while it decides what to do: from the decision reaching the model to
/// [`ActionFinished`] or [`ActionFailed`] (or a [`CancelLine`](crate::plugin::CancelLine)).
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
#[reflect(Component, Clone, Debug, PartialEq)]
pub struct Deciding {
    /// The decision being made.
    pub request: RequestId,
}

/// What a decision decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decide {
    /// An action among the declared ones ([`RequestAction`]).
    Act,
    /// The NPC's disposition ([`UpdateDisposition`]).
    Feel,
}

/// Decisions waiting for their persona.
#[derive(Resource, Default)]
pub(crate) struct WaitingActions(Vec<(RequestId, RequestAction, Decide)>);

/// Decision requests: those still waiting, then the new ones.
#[derive(SystemParam)]
pub(crate) struct ActionRequests<'w, 's> {
    waiting: ResMut<'w, WaitingActions>,
    requests: MessageReader<'w, 's, RequestAction>,
    updates: MessageReader<'w, 's, UpdateDisposition>,
}

/// What a decision's NPC query reads.
type DecidingNpc<'a> = (
    &'a Npc,
    &'a DialogueHistory,
    &'a NpcContext,
    Option<&'a NpcDisposition>,
    Option<&'a LineSettings>,
);

/// The decision's token budget: the longest declared JSON is far shorter.
const DECISION_TOKENS: usize = 96;

/// `PostUpdate`: [`RequestAction`]s become jobs once the persona is loaded.
pub(crate) fn dispatch_actions(
    mut commands: Commands,
    mut dispatcher: Dispatcher,
    mut requests: ActionRequests,
    npcs: Query<DecidingNpc>,
    assets: DialogueAssets,
    env: RequestEnv,
    mut out: ActionWriters,
) {
    let mut todo = std::mem::take(&mut requests.waiting.0);
    let updates: Vec<(RequestAction, Decide)> = requests
        .updates
        .read()
        .map(|u| {
            let mut request = RequestAction::new(u.npc);
            request.situation.clone_from(&u.situation);
            (request, Decide::Feel)
        })
        .collect();
    let new = requests
        .requests
        .read()
        .map(|r| (r.clone(), Decide::Act))
        .chain(updates);
    for (request, decide) in new {
        let id = request.id.unwrap_or_else(|| dispatcher.in_flight.next_id());
        let others = todo.iter().filter(|(_, r, _)| r.npc == request.npc).count();
        match dispatcher.in_flight.admit(request.npc, todo.len(), others) {
            Ok(()) => todo.push((id, request, decide)),
            Err(error) => out.fail(&mut commands, request.npc, id, error),
        }
    }
    for (id, request, decide) in todo {
        match action_job(id, &request, decide, &npcs, &assets, &env) {
            Ok(Some((job, kind))) => {
                dispatcher.send(job, request.npc, kind);
                commands
                    .entity(request.npc)
                    .try_insert(Deciding { request: id });
            }
            Ok(None) => requests.waiting.0.push((id, request, decide)),
            Err(error) => out.fail(&mut commands, request.npc, id, error),
        }
    }
}

/// The job for a decision and what its result turns into; `None` while the persona loads.
fn action_job(
    id: RequestId,
    request: &RequestAction,
    decide: Decide,
    npcs: &Query<DecidingNpc>,
    assets: &DialogueAssets,
    env: &RequestEnv,
) -> Result<Option<(Job, ActiveKind)>, DialogueError> {
    let (npc, history, facts, disposition, npc_settings) = npcs
        .get(request.npc)
        .map_err(|_| DialogueError::NpcNotFound(request.npc))?;
    let Some(persona) = assets
        .persona(&npc.persona)
        .or_fail(DialogueError::Persona)?
    else {
        return Ok(None);
    };
    let (actions, kind) = match decide {
        Decide::Act => {
            let actions = request
                .actions
                .clone()
                .unwrap_or_else(|| persona.actions.clone());
            (actions.clone(), ActiveKind::Action(actions))
        }
        Decide::Feel => {
            let spec = persona.disposition.clone().ok_or_else(|| {
                DialogueError::InvalidRequest(format!(
                    "{} declares no disposition (a `disposition` in the persona)",
                    persona.name
                ))
            })?;
            (vec![feel_action(&spec)], ActiveKind::Disposition(spec))
        }
    };
    if actions.is_empty() {
        return Err(DialogueError::InvalidRequest(format!(
            "{} has no actions to choose from",
            persona.name
        )));
    }
    if let Some(error) = env.unavailable() {
        return Err(error);
    }
    let situation = request.situation.clone().unwrap_or_else(|| {
        history
            .turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .map_or_else(|| "The player is here.".to_owned(), |t| t.content.clone())
    });
    let messages = assets
        .builtin
        .action
        .action_messages(
            persona,
            &env.world.facts,
            &with_disposition(&facts.facts, disposition),
            &actions,
            &situation,
        )
        .map_err(|e| DialogueError::Template(e.to_string()))?;
    let persona_layer = crate::plugin::request::persona_settings(persona);
    let npc_layer = npc_settings.cloned().unwrap_or_default();
    let mut params = LineSettings::merge([&persona_layer, &npc_layer, &request.settings])
        .applied_to(&env.settings.defaults);
    params.max_tokens = DECISION_TOKENS;
    let job = Job {
        recall: None,
        id,
        // Decisions have their own cache slot, next to the NPC's conversation.
        slot: request.npc.to_bits() ^ (1 << 63),
        messages,
        params,
        priority: Priority::Player,
        cancel: CancelToken::new(),
        output: Output::Structured {
            grammar: Grammar::json_schema(action_schema(&actions)),
            alternatives: 1,
        },
    };
    Ok(Some((job, kind)))
}

/// `PreUpdate`, after the reports: decisions become [`ActionFinished`] or [`ActionFailed`].
pub(crate) fn deliver_actions(
    mut commands: Commands,
    mut inbox: ResMut<Inbox>,
    in_flight: Res<InFlight>,
    dispositions: Query<&NpcDisposition>,
    mut out: ActionWriters,
) {
    for (request, npc, progress) in std::mem::take(&mut inbox.actions) {
        if matches!(progress, Progress::Done(..) | Progress::Failed(..))
            && let Ok(mut entity) = commands.get_entity(npc)
        {
            // Deciding names the NPC's next decision at the worker, or goes.
            match in_flight.decision_of(npc) {
                Some(request) => entity.try_insert(Deciding { request }),
                None => entity.try_remove::<Deciding>(),
            };
        }
        match progress {
            Progress::Started(_) | Progress::Delta(_) => {}
            Progress::Done(active, generations) => {
                let text = generations.first().map_or("", |g| g.text.as_str());
                let actions = match active.kind {
                    ActiveKind::Action(actions) => actions,
                    ActiveKind::Disposition(spec) => {
                        match parse_action(text, &[feel_action(&spec)]) {
                            Ok(decision) => {
                                let before = dispositions.get(npc).ok();
                                let ev = change_disposition(
                                    &mut commands,
                                    &spec,
                                    before,
                                    &decision.args,
                                    npc,
                                    request,
                                );
                                out.changed.write(ev);
                            }
                            Err(e) => {
                                let error = DialogueError::Structure(e.to_string());
                                out.fail(&mut commands, npc, request, error);
                            }
                        }
                        continue;
                    }
                    _ => continue,
                };
                match parse_action(text, &actions) {
                    Ok(decision) => {
                        let ev = ActionFinished {
                            npc,
                            request,
                            name: decision.name,
                            args: decision.args,
                        };
                        crate::plugin::notify::notify(&mut commands, &mut out.finished, ev);
                    }
                    Err(e) => {
                        let error = DialogueError::Structure(e.to_string());
                        out.fail(&mut commands, npc, request, error);
                    }
                }
            }
            Progress::Failed(error) => out.fail(&mut commands, npc, request, error),
        }
    }
}
