//! The bridge's Yarn commands: their arguments, what they read and write, and the helpers
//! they share. Each command's work and the systems that bring its results back to the runner
//! are in [`super::lines`], [`super::options`] and [`super::actions`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_yarnspinner::prelude::{DialogueRunner, YarnValue};

use super::{
    COMMANDS, Callers, GeneratedLineDelta, GeneratedLineFinished, GeneratedOptions, Hold, Waiting,
    YarnBridge, YarnBridgeFailed, YarnError, YarnTranscript,
};
use crate::persona::Persona;
use crate::plugin::{DialogueModel, ModelState, Npc, RequestAction, RequestLine, RequestScene};
use crate::story::Story;

/// A bridge command's arguments, all optional so that a writer's mistake is an error
/// message, not a panic in `bevy_yarnspinner`'s argument conversion.
pub(super) type Args = (Option<String>, Option<String>, Option<String>);

/// `generate_options`' arguments: a fourth says where the options go.
pub(super) type OptionArgs = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Everything the commands read and write.
#[derive(SystemParam)]
pub(super) struct CommandCx<'w, 's> {
    pub(super) commands: Commands<'w, 's>,
    pub(super) callers: ResMut<'w, Callers>,
    pub(super) runners: Query<
        'w,
        's,
        (
            &'static mut DialogueRunner,
            &'static mut YarnTranscript,
            &'static mut Waiting,
            &'static YarnBridge,
        ),
    >,
    pub(super) npcs: Query<'w, 's, (Entity, &'static Npc, Option<&'static Name>)>,
    pub(super) stories: Query<'w, 's, &'static Story>,
    pub(super) personas: Res<'w, Assets<Persona>>,
    pub(super) model: Res<'w, DialogueModel>,
    pub(super) lines: MessageWriter<'w, RequestLine>,
    pub(super) scenes: MessageWriter<'w, RequestScene>,
    pub(super) actions: MessageWriter<'w, RequestAction>,
    pub(super) out: Out<'w>,
}

/// The bridge's results.
#[derive(SystemParam)]
pub(super) struct Out<'w> {
    pub(super) delta: MessageWriter<'w, GeneratedLineDelta>,
    pub(super) finished: MessageWriter<'w, GeneratedLineFinished>,
    pub(super) options: MessageWriter<'w, GeneratedOptions>,
    pub(super) failed: MessageWriter<'w, YarnBridgeFailed>,
}

impl Out<'_> {
    pub(super) fn fail(
        &mut self,
        commands: &mut Commands,
        runner: Entity,
        at: (&str, &str),
        error: YarnError,
    ) {
        let (node, command) = at;
        tracing::warn!(?runner, node, command, "Yarn bridge: {error}");
        let ev = YarnBridgeFailed {
            runner,
            node: node.to_owned(),
            command: command.to_owned(),
            error,
        };
        crate::plugin::notify::notify(commands, &mut self.failed, ev);
    }
}

/// A hold that is already released: the runner goes on.
pub(super) fn done() -> Hold {
    Arc::new(AtomicBool::new(true))
}

/// Sets a Yarn variable, logging what the storage refuses.
pub(super) fn set(runner: &mut DialogueRunner, name: &str, value: YarnValue) {
    if let Err(e) = runner.variable_storage_mut().set(name.to_owned(), value) {
        tracing::warn!("Yarn bridge: could not set {name}: {e}");
    }
}

/// The next line id on `node` of this runner.
pub(super) fn next_id(transcript: &mut YarnTranscript, node: &str) -> String {
    transcript.in_visit += 1;
    let visit = transcript.visits.get(node).copied().unwrap_or(0);
    format!("llm:{node}:{visit}:{}", transcript.in_visit)
}

/// The NPC a script names: by its `Name`, else its persona's name, in any case.
pub(super) fn find_npc(
    npcs: &Query<(Entity, &Npc, Option<&Name>)>,
    personas: &Assets<Persona>,
    name: &str,
) -> Result<Entity, YarnError> {
    let names = |npc: &Npc, label: Option<&Name>| {
        let persona = personas.get(&npc.persona).map(|p| p.name.clone());
        [label.map(|n| n.as_str().to_owned()), persona]
    };
    for (entity, npc, label) in npcs {
        if names(npc, label)
            .iter()
            .flatten()
            .any(|n| n.eq_ignore_ascii_case(name.trim()))
        {
            return Ok(entity);
        }
    }
    let mut known: Vec<String> = npcs
        .iter()
        .filter_map(|(_, npc, label)| names(npc, label).into_iter().flatten().next())
        .collect();
    known.sort();
    Err(YarnError::UnknownNpc {
        name: name.to_owned(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// Why no request can be served now: nothing loaded or loading, or the load failed.
pub(super) fn no_model(model: &DialogueModel) -> Option<String> {
    match &model.state {
        ModelState::NotLoaded => Some(
            "none is loaded or loading (LlmDialoguePlugin::model, or a LoadModel message)".into(),
        ),
        ModelState::Failed(reason) => Some(reason.clone()),
        _ => None,
    }
}

/// `<<generate_line NPC [direction] [fallback]>>`.
pub(super) fn generate_line(In(args): In<Args>, mut cx: CommandCx) -> Hold {
    cx.line(args, COMMANDS[0])
}

/// `<<generate_reply NPC player_line [fallback]>>`.
pub(super) fn generate_reply(In(args): In<Args>, mut cx: CommandCx) -> Hold {
    cx.line(args, COMMANDS[1])
}

/// `<<generate_action NPC [situation]>>`.
pub(super) fn generate_action(In(args): In<Args>, mut cx: CommandCx) -> Hold {
    cx.action(args)
}

/// `<<generate_options N [direction] [fallback|fallback|...]>>`.
pub(super) fn generate_options(In(args): In<OptionArgs>, mut cx: CommandCx) -> Hold {
    cx.options(args)
}

impl CommandCx<'_, '_> {
    /// The runner that runs `command` now.
    pub(super) fn caller(&mut self, command: &str) -> Option<Entity> {
        let at = self.callers.0.iter().position(|(_, c)| c == command);
        let caller = at.and_then(|i| self.callers.0.remove(i)).map(|(e, _)| e);
        if caller.is_none() {
            tracing::error!("Yarn bridge: `{command}` ran without its ExecuteCommand event");
        }
        caller
    }
}
