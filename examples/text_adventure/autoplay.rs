//! Scripted play for `scripts/screenshot`: when `TEXT_ADVENTURE_AUTOPLAY=out.png` is set, the
//! game talks to Mira, takes a narrator choice, saves a screenshot of the window once the
//! scene has streamed in (plus `out-streaming.png` while Mira's line is still streaming and
//! `out-debug.png` with the debug panel open), reports frame times and exits.

#![expect(clippy::print_stdout, reason = "the script's report goes to stdout")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured, save_to_disk};
use bevy_llm_dialogue::prelude::*;

use crate::game::{Busy, PlayerInput, Speaker, StoryTeller, Transcript};
use crate::ui::UiState;

/// Plays a few turns, saves `screenshot` and exits.
pub struct Autoplay {
    /// Where the PNG goes.
    pub screenshot: PathBuf,
}

impl Plugin for Autoplay {
    fn build(&self, app: &mut App) {
        app.insert_resource(Script {
            screenshot: self.screenshot.clone(),
            step: Step::WaitForModel,
            started: Instant::now(),
            settle: 0,
            caught_streaming: false,
            frames_idle: Vec::new(),
            frames_busy: Vec::new(),
        })
        .add_systems(Update, (measure_frames, play).chain());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    WaitForModel,
    WaitForMira,
    MiraSpeaking,
    WaitForScene,
    Capture,
    WaitForCapture,
    OpenDebug,
    CaptureDebug,
    WaitForDebugCapture,
    Done,
}

#[derive(Resource)]
struct Script {
    screenshot: PathBuf,
    step: Step,
    started: Instant,
    settle: u32,
    caught_streaming: bool,
    frames_idle: Vec<f32>,
    frames_busy: Vec<f32>,
}

const GIVE_UP: Duration = Duration::from_secs(900);

/// What the script watches.
#[derive(SystemParam)]
struct Game<'w, 's> {
    model: Res<'w, DialogueModel>,
    transcript: Res<'w, Transcript>,
    story: Single<'w, 's, &'static Story, With<StoryTeller>>,
    at_the_model: Query<'w, 's, (), Busy>,
}

impl Game<'_, '_> {
    /// Something is at the model (the plugin's markers), streaming in, or a scene is owed.
    fn busy(&self) -> bool {
        !self.at_the_model.is_empty()
            || self.transcript.is_streaming()
            || self.story.pending.is_some()
    }
}

/// Frame times once the model is ready, split by whether the model is writing.
fn measure_frames(mut script: ResMut<Script>, game: Game, time: Res<Time<Real>>) {
    if game.model.is_ready() && script.step != Step::Done {
        let ms = time.delta_secs() * 1000.0;
        if game.busy() {
            script.frames_busy.push(ms);
        } else {
            script.frames_idle.push(ms);
        }
    }
}

fn play(
    mut commands: Commands,
    mut script: ResMut<Script>,
    game: Game,
    mut ui: ResMut<UiState>,
    mut input: MessageWriter<PlayerInput>,
    mut exit: MessageWriter<AppExit>,
) {
    let busy = game.busy();
    let (model, transcript, story) = (&game.model, &game.transcript, &game.story);
    if script.started.elapsed() > GIVE_UP {
        println!(
            "autoplay: gave up after {GIVE_UP:?} at step {:?}",
            script.step
        );
        exit.write(AppExit::error());
        return;
    }
    match script.step {
        Step::WaitForModel => match &model.state {
            ModelState::Ready(_) if story.current_scene().is_some() => {
                input.write(PlayerInput::Say {
                    to: "mira".into(),
                    text: "Good evening, Mira! The forest is dark tonight. Could you spare me a lantern?"
                        .into(),
                });
                script.step = Step::WaitForMira;
            }
            ModelState::Failed(reason) => {
                println!("autoplay: no model: {reason}");
                exit.write(AppExit::error());
            }
            _ => {}
        },
        // Her line and her decision go out at the end of the frame that sent them.
        Step::WaitForMira if busy => script.step = Step::MiraSpeaking,
        Step::MiraSpeaking if busy => {
            // One picture mid-line, to show the text arriving token by token.
            let streaming = transcript
                .entries
                .iter()
                .any(|e| e.streaming && matches!(&e.speaker, Speaker::Npc(_)) && e.text.len() > 40);
            if streaming && !script.caught_streaming {
                script.caught_streaming = true;
                let path = sibling(&script.screenshot, "streaming");
                screenshot(&mut commands, path, None);
            }
        }
        Step::MiraSpeaking => {
            let answered = transcript.entries.iter().any(|e| {
                matches!(&e.speaker, Speaker::Npc(n) if n == "Mira") && !e.text.is_empty()
            });
            if !answered {
                println!("autoplay: Mira did not answer");
                exit.write(AppExit::error());
                return;
            }
            // "Walk to the forge": the narrator writes the next scene.
            input.write(PlayerInput::Choose(0));
            script.step = Step::WaitForScene;
        }
        Step::WaitForScene if !busy && story.nodes.len() >= 2 => {
            // A few frames for egui to lay out the last text.
            script.settle += 1;
            if script.settle > 10 {
                script.step = Step::Capture;
            }
        }
        Step::Capture => {
            let path = script.screenshot.clone();
            screenshot(&mut commands, path, Some(Step::OpenDebug));
            script.step = Step::WaitForCapture;
        }
        Step::OpenDebug => {
            ui.debug_open = true;
            script.settle = 0;
            script.step = Step::CaptureDebug;
        }
        Step::CaptureDebug => {
            script.settle += 1;
            if script.settle > 10 {
                let path = sibling(&script.screenshot, "debug");
                screenshot(&mut commands, path, Some(Step::Done));
                script.step = Step::WaitForDebugCapture;
            }
        }
        Step::Done => {
            report("idle", &mut script.frames_idle);
            report("while the model writes", &mut script.frames_busy);
            println!(
                "autoplay: {} transcript entries, screenshot {}",
                transcript.entries.len(),
                script.screenshot.display()
            );
            exit.write(AppExit::Success);
        }
        _ => {}
    }
}

/// Saves the window to `path`; once it is on disk, the script goes on to `then`.
fn screenshot(commands: &mut Commands, path: PathBuf, then: Option<Step>) {
    let mut shot = commands.spawn(Screenshot::primary_window());
    shot.observe(save_to_disk(path));
    if let Some(step) = then {
        // An observer on the screenshot entity: the picture is captured a frame or two later.
        shot.observe(
            move |_: On<ScreenshotCaptured>, mut script: ResMut<Script>| {
                script.step = step;
            },
        );
    }
}

/// `out.png` → `out-{tag}.png`.
fn sibling(path: &std::path::Path, tag: &str) -> PathBuf {
    let stem = path.with_extension("");
    PathBuf::from(format!("{}-{tag}.png", stem.display()))
}

fn report(what: &str, frames: &mut [f32]) {
    if frames.is_empty() {
        return;
    }
    frames.sort_by(f32::total_cmp);
    let at = |q: f32| frames[((frames.len() - 1) as f32 * q) as usize];
    println!(
        "frame times {what}: {} frames, median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        frames.len(),
        at(0.5),
        at(0.99),
        frames[frames.len() - 1]
    );
}
