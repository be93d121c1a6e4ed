//! The bridge's Yarn commands, and the systems that bring their results back to the runner.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_yarnspinner::prelude::{DialogueRunner, LineId, YarnValue};

use super::{
    COMMANDS, Callers, ChooseGenerated, Generated, GeneratedKind, GeneratedLineDelta,
    GeneratedLineFinished, GeneratedOptions, Hold, OPTIONS, Wait, WaitFor, Waiting, YarnBridge,
    YarnBridgeFailed, YarnError, YarnTranscript,
};
use crate::persona::Persona;
use crate::plugin::{
    ActionFailed, ActionFinished, DialogueModel, LineDelta, LineFailed, LineFinished, LineStarted,
    ModelState, Npc, Priority, RequestAction, RequestLine, RequestScene, SceneFailed,
    SceneFinished,
};
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
    commands: Commands<'w, 's>,
    callers: ResMut<'w, Callers>,
    runners: Query<
        'w,
        's,
        (
            &'static mut DialogueRunner,
            &'static mut YarnTranscript,
            &'static mut Waiting,
            &'static YarnBridge,
        ),
    >,
    npcs: Query<'w, 's, (Entity, &'static Npc, Option<&'static Name>)>,
    stories: Query<'w, 's, &'static Story>,
    personas: Res<'w, Assets<Persona>>,
    model: Res<'w, DialogueModel>,
    lines: MessageWriter<'w, RequestLine>,
    scenes: MessageWriter<'w, RequestScene>,
    actions: MessageWriter<'w, RequestAction>,
    out: Out<'w>,
}

/// The bridge's results.
#[derive(SystemParam)]
pub(super) struct Out<'w> {
    delta: MessageWriter<'w, GeneratedLineDelta>,
    finished: MessageWriter<'w, GeneratedLineFinished>,
    options: MessageWriter<'w, GeneratedOptions>,
    failed: MessageWriter<'w, YarnBridgeFailed>,
}

impl Out<'_> {
    fn fail(
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
        self.failed.write(ev.clone());
        commands.trigger(ev);
    }
}

/// A hold that is already released: the runner goes on.
fn done() -> Hold {
    Arc::new(AtomicBool::new(true))
}

/// Sets a Yarn variable, logging what the storage refuses.
fn set(runner: &mut DialogueRunner, name: &str, value: YarnValue) {
    if let Err(e) = runner.variable_storage_mut().set(name.to_owned(), value) {
        tracing::warn!("Yarn bridge: could not set {name}: {e}");
    }
}

/// The next line id on `node` of this runner.
fn next_id(transcript: &mut YarnTranscript, node: &str) -> String {
    transcript.in_visit += 1;
    let visit = transcript.visits.get(node).copied().unwrap_or(0);
    format!("llm:{node}:{visit}:{}", transcript.in_visit)
}

/// The NPC a script names: by its `Name`, else its persona's name, in any case.
fn find_npc(
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
fn no_model(model: &DialogueModel) -> Option<String> {
    match &model.state {
        ModelState::NotLoaded => Some(
            "none is loaded or loading (LlmDialoguePlugin::model, or a LoadModel message)".into(),
        ),
        ModelState::Failed(reason) => Some(reason.clone()),
        _ => None,
    }
}

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
    transcript.entries.push(Generated {
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
    finished.write(ev.clone());
    commands.trigger(ev);
}

/// Options to show: into `$llm_scene` and `$llm_option_N`, the transcript and the events.
/// The runner then waits for the player's choice.
struct OptionsShown {
    runner: Entity,
    id: String,
    scene: String,
    options: Vec<String>,
    fallback: bool,
    beside: bool,
}

fn show_options(
    commands: &mut Commands,
    out: &mut MessageWriter<GeneratedOptions>,
    runner: &mut DialogueRunner,
    transcript: &mut YarnTranscript,
    shown: OptionsShown,
) {
    set(runner, "$llm_scene", YarnValue::String(shown.scene.clone()));
    for (i, option) in shown.options.iter().enumerate() {
        let name = format!("$llm_option_{}", i + 1);
        set(runner, &name, YarnValue::String(option.clone()));
    }
    if !shown.beside {
        set(runner, "$llm_choice", YarnValue::Number(0.0));
    }
    transcript.entries.push(Generated {
        id: shown.id.clone(),
        kind: GeneratedKind::Options {
            scene: shown.scene.clone(),
            options: shown.options.clone(),
            chosen: None,
        },
        fallback: shown.fallback,
    });
    let ev = GeneratedOptions {
        runner: shown.runner,
        id: LineId(shown.id),
        scene: shown.scene,
        options: shown.options,
        fallback: shown.fallback,
        beside: shown.beside,
    };
    out.write(ev.clone());
    commands.trigger(ev);
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
    fn caller(&mut self, command: &str) -> Option<Entity> {
        let at = self.callers.0.iter().position(|(_, c)| c == command);
        let caller = at.and_then(|i| self.callers.0.remove(i)).map(|(e, _)| e);
        if caller.is_none() {
            tracing::error!("Yarn bridge: `{command}` ran without its ExecuteCommand event");
        }
        caller
    }

    fn line(&mut self, (name, second, fallback): Args, command: &'static str) -> Hold {
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

    fn action(&mut self, (name, situation, _): Args) -> Hold {
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

    fn options(&mut self, (n, direction, fallback, place): OptionArgs) -> Hold {
        let command = COMMANDS[2];
        let Some(entity) = self.caller(command) else {
            return done();
        };
        let place = place.as_deref().map(str::trim).map(str::to_ascii_lowercase);
        let (beside, bad_place) = match place.as_deref() {
            None | Some("" | "instead") => (false, None),
            Some("beside") => (true, None),
            Some(other) => (false, Some(other.to_owned())),
        };
        let fallback: Vec<String> = fallback
            .unwrap_or_default()
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let count = n
            .as_deref()
            .and_then(|n| n.trim().parse::<f32>().ok())
            .filter(|n| n.fract() == 0.0 && *n >= 0.0)
            .map(|n| n as usize)
            .filter(|n| OPTIONS.contains(n));
        let no_model = no_model(&self.model);
        let Ok((mut runner, mut transcript, mut waiting, bridge)) = self.runners.get_mut(entity)
        else {
            return done();
        };
        let node = runner.current_node().unwrap_or_default();
        let id = next_id(&mut transcript, &node);
        let hold: Hold = Arc::new(AtomicBool::new(false));
        let wait = |what| Wait {
            id: id.clone(),
            node: node.clone(),
            command,
            hold: hold.clone(),
            what,
        };

        // Replayed from a save: the same options again; otherwise the narrator's, or the
        // writer's fallback when the narrator cannot write them.
        let replay = transcript.replay.iter().find(|e| e.id == id).cloned();
        let count = count.filter(|_| bad_place.is_none());
        let shown = match (replay, count, bridge.narrator, no_model) {
            (
                Some(Generated {
                    kind: GeneratedKind::Options { scene, options, .. },
                    fallback,
                    ..
                }),
                ..,
            ) => (scene, options, fallback),
            (_, Some(count), Some(story), None) => {
                let mut request = RequestScene::new(story).choices(count);
                if let Some(direction) = direction.filter(|d| !d.trim().is_empty()) {
                    request = request.direction(direction);
                }
                self.scenes.write(request);
                // Options beside authored ones leave the narrator's story as it was: the
                // bridge does not learn which option the script's player takes.
                let mark = beside.then(|| StoryMark::of(self.stories.get(story).ok()));
                let what = WaitFor::Scene {
                    story,
                    fallback,
                    beside: mark,
                };
                if let Some(old) = waiting.0.replace(wait(what)) {
                    old.release();
                }
                return hold;
            }
            (_, count, narrator, no_model) => {
                let error = if let Some(place) = &bad_place {
                    YarnError::BadArguments(format!(
                        "`{place}`: options go `beside` authored ones or `instead` of them"
                    ))
                } else if count.is_none() {
                    YarnError::BadArguments(format!(
                        "the number of options must be {}..={}: <<generate_options N [\"direction\"] [\"fallback|fallback\"]>>",
                        OPTIONS.start(),
                        OPTIONS.end()
                    ))
                } else if narrator.is_none() {
                    YarnError::NoNarrator
                } else {
                    YarnError::NoModel(no_model.unwrap_or_default())
                };
                self.out
                    .fail(&mut self.commands, entity, (&node, command), error);
                if fallback.is_empty() {
                    set(&mut runner, "$llm_choice", YarnValue::Number(0.0));
                    if beside {
                        // No stale options from an earlier command: a script can hide
                        // empty ones with `<<if $llm_option_1 != "">>`.
                        for i in 1..=*OPTIONS.end() {
                            let name = format!("$llm_option_{i}");
                            set(&mut runner, &name, YarnValue::String(String::new()));
                        }
                    }
                    return done();
                }
                (String::new(), fallback, true)
            }
        };
        let (scene, options, is_fallback) = shown;
        let shown = OptionsShown {
            runner: entity,
            id: id.clone(),
            scene,
            options: options.clone(),
            fallback: is_fallback,
            beside,
        };
        show_options(
            &mut self.commands,
            &mut self.out.options,
            &mut runner,
            &mut transcript,
            shown,
        );
        if beside {
            return done();
        }
        waiting.0 = Some(wait(WaitFor::Choice {
            story: None,
            options,
        }));
        hold
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
            out.delta.write(ev.clone());
            commands.trigger(ev);
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

/// `PreUpdate`, after the plugin's results: the narrator's scene for a runner's
/// `generate_options` becomes [`GeneratedOptions`]; a failed one offers the fallback.
pub(super) fn deliver_options(
    mut commands: Commands,
    mut scenes: MessageReader<SceneFinished>,
    mut scene_failures: MessageReader<SceneFailed>,
    mut runners: Query<(
        Entity,
        &mut DialogueRunner,
        &mut YarnTranscript,
        &mut Waiting,
    )>,
    mut stories: Query<&mut Story>,
    mut out: Out,
) {
    let finished: Vec<SceneFinished> = scenes.read().cloned().collect();
    let failed: Vec<SceneFailed> = scene_failures.read().cloned().collect();
    if finished.is_empty() && failed.is_empty() {
        return;
    }
    for (entity, mut runner, mut transcript, mut waiting) in &mut runners {
        let Some(Wait {
            what:
                WaitFor::Scene {
                    story,
                    fallback,
                    beside,
                },
            ..
        }) = waiting.0.as_ref()
        else {
            continue;
        };
        let (story, mark) = (*story, beside.clone());
        let (scene, options, is_fallback) =
            if let Some(f) = finished.iter().find(|f| f.story == story) {
                (f.text.clone(), f.choices.clone(), false)
            } else if let Some(f) = failed.iter().find(|f| f.story == story) {
                let wait = waiting.0.as_ref().expect("matched above");
                let at = (wait.node.as_str(), wait.command);
                let error = YarnError::Dialogue(f.error.clone());
                out.fail(&mut commands, entity, at, error);
                (String::new(), fallback.clone(), true)
            } else {
                continue;
            };
        let mut wait = waiting.0.take().expect("matched above");
        if let (Some(mark), Ok(mut story)) = (&mark, stories.get_mut(story)) {
            mark.restore(&mut story);
        }
        if options.is_empty() {
            set(&mut runner, "$llm_choice", YarnValue::Number(0.0));
            wait.release();
            continue;
        }
        let shown = OptionsShown {
            runner: entity,
            id: wait.id.clone(),
            scene,
            options: options.clone(),
            fallback: is_fallback,
            beside: mark.is_some(),
        };
        show_options(
            &mut commands,
            &mut out.options,
            &mut runner,
            &mut transcript,
            shown,
        );
        if mark.is_some() {
            wait.release();
            continue;
        }
        wait.what = WaitFor::Choice {
            story: (!is_fallback).then_some(story),
            options,
        };
        waiting.0 = Some(wait);
    }
}

/// Where a narrator's story was before a scene written only for options beside authored
/// ones, to go back to once they are shown.
#[derive(Clone, Debug)]
pub(crate) struct StoryMark {
    scenes: usize,
    current: Option<usize>,
    pending: Option<(usize, usize)>,
}

impl StoryMark {
    fn of(story: Option<&Story>) -> Self {
        Self {
            scenes: story.map_or(0, |s| s.nodes.len()),
            current: story.and_then(|s| s.current),
            pending: story.and_then(|s| s.pending),
        }
    }

    fn restore(&self, story: &mut Story) {
        story.nodes.truncate(self.scenes);
        story.current = self.current;
        story.pending = self.pending;
    }
}

/// `Update`: the player's [`ChooseGenerated`]: `$llm_choice` and `$llm_choice_text` are set,
/// the narrator's story takes the choice, and the runner goes on.
pub(super) fn take_choices(
    mut commands: Commands,
    mut chooses: MessageReader<ChooseGenerated>,
    mut runners: Query<(&mut DialogueRunner, &mut YarnTranscript, &mut Waiting)>,
    mut stories: Query<&mut Story>,
    mut out: Out,
) {
    for choose in chooses.read() {
        let refuse = |out: &mut Out, commands: &mut Commands, why: String| {
            let at = ("", COMMANDS[2]);
            out.fail(commands, choose.runner, at, YarnError::BadChoice(why));
        };
        let Ok((mut runner, mut transcript, mut waiting)) = runners.get_mut(choose.runner) else {
            let why = format!("{} is not a dialogue runner", choose.runner);
            refuse(&mut out, &mut commands, why);
            continue;
        };
        let Some(Wait {
            what: WaitFor::Choice { story, options },
            id,
            ..
        }) = waiting.0.as_ref()
        else {
            let why = "the runner shows no generated options".to_owned();
            refuse(&mut out, &mut commands, why);
            continue;
        };
        let Some(text) = options.get(choose.index).cloned() else {
            let why = format!(
                "option {} of {} (options count from 0)",
                choose.index,
                options.len()
            );
            refuse(&mut out, &mut commands, why);
            continue;
        };
        if let Some(mut story) = story.and_then(|s| stories.get_mut(s).ok())
            && let Err(e) = story.choose(choose.index)
        {
            tracing::warn!("Yarn bridge: the narrator's story refused the choice: {e}");
        }
        let id = id.clone();
        if let Some(Generated {
            kind: GeneratedKind::Options { chosen, .. },
            ..
        }) = transcript.entries.iter_mut().rev().find(|e| e.id == id)
        {
            *chosen = Some(choose.index);
        }
        set(
            &mut runner,
            "$llm_choice",
            YarnValue::Number(choose.index as f32 + 1.0),
        );
        set(&mut runner, "$llm_choice_text", YarnValue::String(text));
        if let Some(wait) = waiting.0.take() {
            wait.release();
        }
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
