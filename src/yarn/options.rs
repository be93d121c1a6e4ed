//! `generate_options`: the narrator writes options for the player (instead of authored ones
//! or beside them), shown through `$llm_option_N`; the player's [`ChooseGenerated`] is
//! taken back into the runner and the narrator's story.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bevy::prelude::*;
use bevy_yarnspinner::prelude::{DialogueRunner, LineId, YarnValue};

use super::commands::{CommandCx, OptionArgs, Out, done, next_id, no_model, set};
use super::{
    COMMANDS, ChooseGenerated, Generated, GeneratedKind, GeneratedOptions, Hold, OPTIONS, Wait,
    WaitFor, Waiting, YarnError, YarnTranscript,
};
use crate::plugin::{RequestScene, SceneFailed, SceneFinished};
use crate::story::Story;

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
    transcript.record(Generated {
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
    crate::plugin::notify::notify(commands, out, ev);
}

impl CommandCx<'_, '_> {
    pub(super) fn options(&mut self, (n, direction, fallback, place): OptionArgs) -> Hold {
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
