//! `generate_line` and `generate_reply`: a line asked of an NPC (or the writer's fallback, or
//! the line replayed from a save), streamed into [`GeneratedLineDelta`]s and ended in
//! `$llm_line`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_yarnspinner::prelude::{DialogueRunner, LineId, YarnValue};

use super::commands::{Args, CommandCx, Out, done, find_npc, next_id, no_model, set};
use super::{
    COMMANDS, Generated, GeneratedKind, GeneratedLineDelta, GeneratedLineFinished, Hold, Wait,
    WaitFor, Waiting, YarnError, YarnTranscript,
};
use crate::plugin::{LineDelta, LineFailed, LineFinished, LineStarted, Priority, RequestLine};

/// A finished line: into `$llm_line` and `$llm_speaker`, the transcript and the events.
pub(super) struct LineDone<'a> {
    pub(super) runner: Entity,
    pub(super) npc: Option<Entity>,
    pub(super) id: String,
    pub(super) speaker: &'a str,
    pub(super) text: String,
    pub(super) fallback: bool,
    pub(super) replayed: bool,
}

fn finish_line(
    commands: &mut Commands,
    finished: &mut MessageWriter<GeneratedLineFinished>,
    runner: &mut DialogueRunner,
    transcript: &mut YarnTranscript,
    done: LineDone,
) {
    set(runner, "$llm_line", YarnValue::String(done.text.clone()));
    set(
        runner,
        "$llm_speaker",
        YarnValue::String(done.speaker.to_owned()),
    );
    transcript.record(Generated {
        id: done.id.clone(),
        kind: GeneratedKind::Line {
            speaker: done.speaker.to_owned(),
            text: done.text.clone(),
        },
        fallback: done.fallback,
    });
    let ev = GeneratedLineFinished {
        runner: done.runner,
        npc: done.npc,
        id: LineId(done.id),
        text: done.text,
        fallback: done.fallback,
        replayed: done.replayed,
    };
    crate::plugin::notify::notify(commands, finished, ev);
}

impl CommandCx<'_, '_> {
    pub(super) fn line(&mut self, (name, second, fallback): Args, command: &'static str) -> Hold {
        let Some(entity) = self.caller(command) else {
            return done();
        };
        let reply = command == COMMANDS[1];
        let usage = if reply {
            "<<generate_reply NPC \"what the player said\" [\"fallback\"]>>"
        } else {
            "<<generate_line NPC [\"direction\"] [\"fallback\"]>>"
        };
        let named = name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let said = second.filter(|s| !s.trim().is_empty());
        let fallback = fallback.unwrap_or_default();
        let next = match &named {
            None => Next::Fallback(
                None,
                YarnError::BadArguments(format!("name an NPC: {usage}")),
            ),
            Some(_) if reply && said.is_none() => Next::Fallback(
                None,
                YarnError::BadArguments(format!("say what the player said: {usage}")),
            ),
            Some(n) => match find_npc(&self.npcs, &self.personas, n) {
                Err(error) => Next::Fallback(None, error),
                Ok(npc) => match no_model(&self.model) {
                    Some(reason) => Next::Fallback(Some(npc), YarnError::NoModel(reason)),
                    None => Next::Ask(npc),
                },
            },
        };
        let Ok((mut runner, mut transcript, mut waiting, _)) = self.runners.get_mut(entity) else {
            return done();
        };
        let node = runner.current_node().unwrap_or_default();
        let id = next_id(&mut transcript, &node);
        let speaker = named.unwrap_or_default();
        let replay = transcript
            .replay
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| match &e.kind {
                GeneratedKind::Line { text, .. } => Some((text.clone(), e.fallback)),
                GeneratedKind::Options { .. } => None,
            });
        let (npc, text, is_fallback, replayed) = match (replay, next) {
            (Some((text, was_fallback)), _) => (None, text, was_fallback, true),
            (None, Next::Fallback(npc, error)) => {
                self.out
                    .fail(&mut self.commands, entity, (&node, command), error);
                (npc, fallback, true, false)
            }
            (None, Next::Ask(npc)) => {
                let request = RequestLine::new(npc).priority(Priority::Player);
                let request = match said {
                    Some(line) if reply => request.saying(line),
                    Some(direction) => request.direction(direction),
                    None => request,
                };
                self.lines.write(request);
                let hold: Hold = Arc::new(AtomicBool::new(false));
                let wait = Wait {
                    id,
                    node,
                    command,
                    hold: hold.clone(),
                    what: WaitFor::Line {
                        npc,
                        speaker,
                        request: None,
                        fallback,
                        text: String::new(),
                    },
                };
                if let Some(old) = waiting.0.replace(wait) {
                    old.release();
                }
                return hold;
            }
        };
        let done_line = LineDone {
            runner: entity,
            npc,
            id,
            speaker: &speaker,
            text,
            fallback: is_fallback,
            replayed,
        };
        finish_line(
            &mut self.commands,
            &mut self.out.finished,
            &mut runner,
            &mut transcript,
            done_line,
        );
        done()
    }
}

/// What a line command does.
enum Next {
    /// Ask the NPC.
    Ask(Entity),
    /// Say the writer's fallback, for this reason.
    Fallback(Option<Entity>, YarnError),
}

/// The line results of one frame, in order.
#[derive(SystemParam)]
pub(super) struct LineResults<'w, 's> {
    started: MessageReader<'w, 's, LineStarted>,
    delta: MessageReader<'w, 's, LineDelta>,
    finished: MessageReader<'w, 's, LineFinished>,
    failed: MessageReader<'w, 's, LineFailed>,
}

/// `PreUpdate`, after the plugin's results: lines that runners wait for stream into
/// [`GeneratedLineDelta`]s and end in `$llm_line`, releasing the runner.
pub(super) fn deliver_lines(
    mut commands: Commands,
    mut results: LineResults,
    mut runners: Query<(
        Entity,
        &mut DialogueRunner,
        &mut YarnTranscript,
        &mut Waiting,
    )>,
    mut out: Out,
) {
    let started: Vec<LineStarted> = results.started.read().cloned().collect();
    let deltas: Vec<LineDelta> = results.delta.read().cloned().collect();
    let finished: Vec<LineFinished> = results.finished.read().cloned().collect();
    let failed: Vec<LineFailed> = results.failed.read().cloned().collect();
    if started.is_empty() && deltas.is_empty() && finished.is_empty() && failed.is_empty() {
        return;
    }
    for (entity, mut runner, mut transcript, mut waiting) in &mut runners {
        let Some(wait) = waiting.0.as_mut() else {
            continue;
        };
        let WaitFor::Line {
            npc, request, text, ..
        } = &mut wait.what
        else {
            continue;
        };
        if request.is_none()
            && let Some(s) = started.iter().find(|s| s.npc == *npc)
        {
            *request = Some(s.request);
        }
        let mine = |r| *request == Some(r);
        for delta in deltas.iter().filter(|d| mine(d.request)) {
            text.push_str(&delta.text);
            let ev = GeneratedLineDelta {
                runner: entity,
                npc: *npc,
                id: LineId(wait.id.clone()),
                text: delta.text.clone(),
            };
            crate::plugin::notify::notify(&mut commands, &mut out.delta, ev);
        }
        let outcome = if let Some(f) = finished.iter().find(|f| mine(f.request)) {
            Some(Ok(f.text.clone()))
        } else {
            let lost = |f: &&LineFailed| mine(f.request) || (request.is_none() && f.npc == *npc);
            failed.iter().find(lost).map(|f| Err(f.error.clone()))
        };
        let Some(outcome) = outcome else {
            continue;
        };
        let wait = waiting.0.take().expect("matched above");
        let WaitFor::Line {
            npc,
            speaker,
            fallback,
            ..
        } = &wait.what
        else {
            continue;
        };
        let (text, is_fallback) = match outcome {
            Ok(text) => (text, false),
            Err(error) => {
                let at = (wait.node.as_str(), wait.command);
                out.fail(&mut commands, entity, at, YarnError::Dialogue(error));
                (fallback.clone(), true)
            }
        };
        let done = LineDone {
            runner: entity,
            npc: Some(*npc),
            id: wait.id.clone(),
            speaker,
            text,
            fallback: is_fallback,
            replayed: false,
        };
        finish_line(
            &mut commands,
            &mut out.finished,
            &mut runner,
            &mut transcript,
            done,
        );
        wait.release();
    }
}
