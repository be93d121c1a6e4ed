//! [`DialogueRequests`]: the system parameter that sends requests and hands back their ids at
//! once, as `bevy_egui`'s `EguiContexts` hands out contexts.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::in_flight::RequestIds;
use super::request::RequestId;
use crate::plugin::actions::RequestAction;
use crate::plugin::lines::{CancelLine, RequestLine};
use crate::plugin::narrator::RequestScene;

/// Sends lines, scenes and decisions, and returns each one's [`RequestId`] at once, so a game
/// can match results ([`LineStarted`](super::LineStarted), [`LineDelta`](super::LineDelta),
/// [`LineFinished`](super::LineFinished), ...) to what it asked without waiting for the first
/// of them. Writing the request messages directly works too; their ids then arrive with
/// their first result.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// #[derive(Resource)]
/// struct Asked(RequestId);
///
/// fn talk(mut dialogue: DialogueRequests, npc: Single<Entity, With<Npc>>, mut commands: Commands) {
///     let id = dialogue.request_line(RequestLine::new(*npc).saying("Any news?"));
///     commands.insert_resource(Asked(id));
/// }
///
/// fn show(asked: Option<Res<Asked>>, mut deltas: MessageReader<LineDelta>) {
///     for delta in deltas.read() {
///         if asked.as_ref().is_some_and(|a| a.0 == delta.request) {
///             // append delta.text to the dialogue box
///         }
///     }
/// }
/// ```
#[derive(SystemParam)]
pub struct DialogueRequests<'w> {
    ids: Res<'w, RequestIds>,
    lines: MessageWriter<'w, RequestLine>,
    scenes: MessageWriter<'w, RequestScene>,
    actions: MessageWriter<'w, RequestAction>,
    cancels: MessageWriter<'w, CancelLine>,
}

impl DialogueRequests<'_> {
    /// Asks an NPC for a line; the id its results will carry.
    pub fn request_line(&mut self, mut request: RequestLine) -> RequestId {
        let id = *request.id.get_or_insert_with(|| self.ids.next());
        self.lines.write(request);
        id
    }

    /// Asks a narrator for its next scene; the id its results will carry.
    pub fn request_scene(&mut self, mut request: RequestScene) -> RequestId {
        let id = *request.id.get_or_insert_with(|| self.ids.next());
        self.scenes.write(request);
        id
    }

    /// Asks an NPC to decide among actions; the id its results will carry.
    pub fn request_action(&mut self, mut request: RequestAction) -> RequestId {
        let id = *request.id.get_or_insert_with(|| self.ids.next());
        self.actions.write(request);
        id
    }

    /// Stops an NPC's queued and current lines ([`CancelLine`]).
    pub fn cancel_lines(&mut self, npc: Entity) {
        self.cancels.write(CancelLine { npc });
    }
}
