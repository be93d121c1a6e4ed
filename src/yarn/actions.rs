//! `generate_action`: an NPC decides among its actions while the runner waits, and is
//! released when the decision lands (or reported when it fails).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy::prelude::*;

use super::commands::{Args, CommandCx, Out, done, find_npc, no_model};
use super::{COMMANDS, Hold, Wait, WaitFor, Waiting, YarnError};
use crate::plugin::{ActionFailed, ActionFinished, RequestAction};

impl CommandCx<'_, '_> {
    pub(super) fn action(&mut self, (name, situation, _): Args) -> Hold {
        let command = COMMANDS[3];
        let Some(entity) = self.caller(command) else {
            return done();
        };
        let named = name.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let npc = match named {
            None => Err(YarnError::BadArguments(
                "name an NPC: <<generate_action NPC [\"situation\"]>>".into(),
            )),
            Some(n) => find_npc(&self.npcs, &self.personas, n),
        };
        let npc = npc.and_then(|npc| match no_model(&self.model) {
            Some(reason) => Err(YarnError::NoModel(reason)),
            None => Ok(npc),
        });
        let Ok((runner, _, mut waiting, _)) = self.runners.get_mut(entity) else {
            return done();
        };
        let node = runner.current_node().unwrap_or_default();
        let npc = match npc {
            Ok(npc) => npc,
            Err(error) => {
                self.out
                    .fail(&mut self.commands, entity, (&node, command), error);
                return done();
            }
        };
        let mut request = RequestAction::new(npc);
        if let Some(situation) = situation.filter(|s| !s.trim().is_empty()) {
            request = request.situation(situation);
        }
        self.actions.write(request);
        let hold: Hold = Arc::new(AtomicBool::new(false));
        let wait = Wait {
            id: String::new(),
            node,
            command,
            hold: hold.clone(),
            what: WaitFor::Action { npc },
        };
        if let Some(old) = waiting.0.replace(wait) {
            old.release();
        }
        hold
    }
}

/// `PreUpdate`, after the variables are set: an NPC's decision releases the runner waiting
/// for it; a failed one is reported and the runner goes on with the variables as they were.
pub(super) fn deliver_actions(
    mut commands: Commands,
    mut decided: MessageReader<ActionFinished>,
    mut failures: MessageReader<ActionFailed>,
    mut runners: Query<(Entity, &mut Waiting)>,
    mut out: Out,
) {
    let decided: Vec<Entity> = decided.read().map(|a| a.npc).collect();
    let failed: Vec<ActionFailed> = failures.read().cloned().collect();
    if decided.is_empty() && failed.is_empty() {
        return;
    }
    for (entity, mut waiting) in &mut runners {
        let Some(Wait {
            what: WaitFor::Action { npc },
            ..
        }) = waiting.0.as_ref()
        else {
            continue;
        };
        let npc = *npc;
        let failure = failed.iter().find(|f| f.npc == npc);
        if !decided.contains(&npc) && failure.is_none() {
            continue;
        }
        let wait = waiting.0.take().expect("matched above");
        if let Some(f) = failure.filter(|_| !decided.contains(&npc)) {
            let at = (wait.node.as_str(), wait.command);
            out.fail(
                &mut commands,
                entity,
                at,
                YarnError::Dialogue(f.error.clone()),
            );
        }
        wait.release();
    }
}
