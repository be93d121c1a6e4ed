//! The table of requests in flight: waiting for their assets, at the worker, and the
//! worker's reports sorted by kind for the systems that turn them into messages.

use std::collections::HashMap;
use std::sync::Arc;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::request::{DialogueError, MAX_PENDING, MAX_PENDING_PER_ENTITY, RequestId};
use crate::action::ActionSpec;
use crate::engine::{CancelToken, Generation};
use crate::plugin::worker_link::WorkerLink;
use crate::worker::{Command, Job};

/// A request between its sending and its result.
pub(crate) struct Active {
    /// The NPC, or the story entity for scenes.
    pub(crate) entity: Entity,
    pub(crate) cancel: CancelToken,
    pub(crate) kind: ActiveKind,
}

/// What the result of a request turns into.
pub(crate) enum ActiveKind {
    /// A line; the player's line it answers goes into the history with it. `fallback` is
    /// said when the content policy leaves the line nothing whole to say.
    Line {
        player_line: Option<String>,
        fallback: String,
        /// A line of a conversation: it goes to the conversation's log, not the history.
        in_conversation: bool,
    },
    /// A narrator scene.
    Scene(Box<PendingScene>),
    /// An NPC's decision among actions.
    Action(Vec<ActionSpec>),
    /// An NPC's new disposition, within its persona's declaration.
    Disposition(crate::persona::DispositionSpec),
    /// Who speaks next in a conversation (the request's entity).
    Turn,
    /// A note of an NPC's `turns` oldest turns, which it replaces.
    Summary {
        /// How many turns it covers.
        turns: usize,
    },
}

/// A scene being written.
pub(crate) struct PendingScene {
    /// How many choices the story asks for.
    pub(crate) choices: usize,
    /// Draws so far (a scene whose choices repeat is drawn again).
    pub(crate) attempts: u32,
    /// The job, to send again for another draw.
    pub(crate) job: Job,
}

/// Gives out request ids: shared by the dispatch systems and
/// [`DialogueRequests`](super::DialogueRequests), which hands a game its id at once.
#[derive(Resource, Clone, Default)]
pub(crate) struct RequestIds(Arc<std::sync::atomic::AtomicU64>);

impl RequestIds {
    pub(crate) fn next(&self) -> RequestId {
        RequestId(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }
}

/// Requests waiting for their assets, and requests at the worker.
#[derive(Resource, Default)]
pub(crate) struct InFlight {
    pub(crate) ids: RequestIds,
    /// Lines whose persona or template is still loading, by id and NPC: counted against the
    /// caps and dropped by a cancel (the lines module keeps what they ask).
    pub(crate) waiting: Vec<(RequestId, Entity)>,
    pub(crate) active: HashMap<RequestId, Active>,
}

impl InFlight {
    pub(crate) fn next_id(&mut self) -> RequestId {
        self.ids.next()
    }

    /// Whether one more request of `entity` may queue, with `also_waiting` requests waiting
    /// elsewhere (`others` of them the entity's).
    pub(crate) fn admit(
        &self,
        entity: Entity,
        also_waiting: usize,
        others: usize,
    ) -> Result<(), DialogueError> {
        let total = self.waiting.len() + self.active.len() + also_waiting;
        if total >= MAX_PENDING {
            return Err(DialogueError::QueueFull(format!(
                "{total} requests are waiting (the limit is {MAX_PENDING})"
            )));
        }
        let mine = others
            + self.waiting.iter().filter(|(_, e)| *e == entity).count()
            + self.active.values().filter(|a| a.entity == entity).count();
        if mine >= MAX_PENDING_PER_ENTITY {
            return Err(DialogueError::QueueFull(format!(
                "{entity} has {mine} requests waiting (the limit is {MAX_PENDING_PER_ENTITY} per entity)"
            )));
        }
        Ok(())
    }

    /// Stops everything `entity` asked for: waiting and active lines, scenes and decisions.
    pub(crate) fn cancel_entity(&mut self, entity: Entity) {
        self.waiting.retain(|(_, e)| *e != entity);
        self.active.retain(|_, a| {
            if a.entity == entity {
                a.cancel.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Stops one request, waiting or at the worker; nothing more is reported about it.
    pub(crate) fn cancel_request(&mut self, id: RequestId) {
        self.waiting.retain(|(w, _)| *w != id);
        if let Some(active) = self.active.remove(&id) {
            active.cancel.cancel();
        }
    }

    /// Whether request `id` is waiting or at the worker.
    pub(crate) fn is_pending(&self, id: RequestId) -> bool {
        self.is_waiting(id) || self.active.contains_key(&id)
    }

    /// Whether request `id` still waits for its assets (a cancel drops it).
    pub(crate) fn is_waiting(&self, id: RequestId) -> bool {
        self.waiting.iter().any(|(w, _)| *w == id)
    }

    /// Request `id` no longer waits: it went to the worker or failed.
    pub(crate) fn stop_waiting(&mut self, id: RequestId) {
        self.waiting.retain(|(w, _)| *w != id);
    }

    /// The oldest line of `npc` still at the worker, if any.
    pub(crate) fn line_of(&self, npc: Entity) -> Option<RequestId> {
        self.active
            .iter()
            .filter(|(_, a)| a.entity == npc && matches!(a.kind, ActiveKind::Line { .. }))
            .map(|(id, _)| *id)
            .min()
    }

    /// The oldest decision of `npc` still at the worker, if any.
    pub(crate) fn decision_of(&self, npc: Entity) -> Option<RequestId> {
        self.active
            .iter()
            .filter(|(_, a)| {
                a.entity == npc
                    && matches!(a.kind, ActiveKind::Action(_) | ActiveKind::Disposition(_))
            })
            .map(|(id, _)| *id)
            .min()
    }

    /// The oldest scene of `story` still at the worker, if any.
    pub(crate) fn scene_of(&self, story: Entity) -> Option<RequestId> {
        self.active
            .iter()
            .filter(|(_, a)| a.entity == story && matches!(a.kind, ActiveKind::Scene(_)))
            .map(|(id, _)| *id)
            .min()
    }
}

/// What the worker said about one request.
pub(crate) enum Progress {
    /// It started computing; the prompt as the model sees it.
    Started(Arc<str>),
    /// More output.
    Delta(String),
    /// Done: every alternative, the first first. The request has left the table.
    Done(Active, Vec<Generation>),
    /// Failed. The request has left the table.
    Failed(DialogueError),
}

/// The worker's reports of one frame, sorted by what they are about, for the systems that
/// deliver lines, scenes and decisions.
#[derive(Resource, Default)]
pub(crate) struct Inbox {
    pub(crate) lines: Vec<(RequestId, Entity, Progress)>,
    pub(crate) scenes: Vec<(RequestId, Entity, Progress)>,
    pub(crate) actions: Vec<(RequestId, Entity, Progress)>,
    pub(crate) summaries: Vec<(RequestId, Entity, Progress)>,
    pub(crate) turns: Vec<(RequestId, Entity, Progress)>,
}

impl Inbox {
    /// Where reports about a request of this kind go.
    pub(crate) fn bucket(&mut self, kind: &ActiveKind) -> &mut Vec<(RequestId, Entity, Progress)> {
        match kind {
            ActiveKind::Line { .. } => &mut self.lines,
            ActiveKind::Scene(_) => &mut self.scenes,
            ActiveKind::Action(_) | ActiveKind::Disposition(_) => &mut self.actions,
            ActiveKind::Summary { .. } => &mut self.summaries,
            ActiveKind::Turn => &mut self.turns,
        }
    }
}

/// Sends jobs to the worker and keeps them in the table until their result.
#[derive(SystemParam)]
pub(crate) struct Dispatcher<'w> {
    link: ResMut<'w, WorkerLink>,
    pub(crate) in_flight: ResMut<'w, InFlight>,
}

impl Dispatcher<'_> {
    /// Sends `job` for `entity`; its result turns into what `kind` says.
    pub(crate) fn send(&mut self, job: Job, entity: Entity, kind: ActiveKind) {
        let active = Active {
            entity,
            cancel: job.cancel.clone(),
            kind,
        };
        self.in_flight.active.insert(job.id, active);
        self.link.send(Command::Generate(Box::new(job)));
    }

    /// Sends a command that is not a request.
    pub(crate) fn command(&mut self, command: Command) {
        self.link.send(command);
    }
}
