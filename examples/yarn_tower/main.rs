//! Authored and generated dialogue together: a Yarn script (`examples/yarn_tower/tower.yarn`)
//! hands over to generated lines, options and an NPC's decision, and back.
//! `scripts/fetch-model`, then `cargo run --release --features yarn --example yarn_tower`;
//! type an option's number and Enter when options appear.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use bevy_llm_dialogue::yarn::{
    ChooseGenerated, GeneratedOptions, YarnBridge, YarnBridgeFailed, YarnBridgePlugin,
};
use bevy_yarnspinner::events::{DialogueCompleted, PresentLine};
use bevy_yarnspinner::prelude::*;

const FRAME: std::time::Duration = std::time::Duration::from_millis(16);

fn main() {
    App::new()
        .add_plugins((
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(FRAME)),
            AssetPlugin::default(),
            bevy::log::LogPlugin::default(),
        ))
        .add_plugins(LlmDialoguePlugin::default())
        // A game would load its scripts from its asset folder (`YarnFileSource::file`).
        .add_plugins(
            YarnSpinnerPlugin::with_yarn_source(YarnFile::new(
                "tower.yarn",
                include_str!("tower.yarn"),
            ))
            .with_development_file_generation(DevelopmentFileGeneration::None),
        )
        .add_plugins(YarnBridgePlugin)
        .insert_resource(Keyboard::spawn())
        .add_systems(Startup, spawn_aldous)
        .add_systems(Update, (start_dialogue, choose_from_keyboard))
        .add_observer(show_line)
        .add_observer(show_options)
        .add_observer(|failed: On<YarnBridgeFailed>| {
            warn!("{} in {}: {}", failed.command, failed.node, failed.error);
        })
        .add_observer(
            |_: On<DialogueCompleted>, mut exit: MessageWriter<AppExit>| {
                exit.write(AppExit::Success);
            },
        )
        .run();
}

fn spawn_aldous(mut commands: Commands, assets: Res<AssetServer>) {
    commands.spawn(Npc::new(assets.load("personas/aldous.persona.ron")));
    commands.spawn(Narrator::new(assets.load("stories/tower.story.ron")));
}

/// Once the Yarn project has compiled: a runner whose options the tower's narrator writes.
fn start_dialogue(
    mut commands: Commands,
    project: Option<Res<YarnProject>>,
    narrator: Single<Entity, With<Narrator>>,
    mut started: Local<bool>,
) {
    let Some(project) = project.filter(|_| !*started) else {
        return;
    };
    *started = true;
    let mut runner = project.create_dialogue_runner(&mut commands);
    runner.start_node("Tower");
    let bridge = YarnBridge {
        narrator: Some(*narrator),
        ..default()
    };
    commands.spawn((runner, bridge));
}

/// Every line, authored or generated, arrives the same way; this view continues at once.
fn show_line(line: On<PresentLine>, mut runners: Query<&mut DialogueRunner>) {
    info!("{}", line.line.text);
    if let Ok(mut runner) = runners.get_mut(line.entity) {
        runner.continue_in_next_update();
    }
}

fn show_options(options: On<GeneratedOptions>, mut keyboard: ResMut<Keyboard>) {
    // Options `beside` authored ones are the script's own to list; nothing answers them.
    if options.beside {
        return;
    }
    if !options.scene.is_empty() {
        info!("{}", options.scene);
    }
    for (i, option) in options.options.iter().enumerate() {
        info!("  {}. {option}", i + 1);
    }
    info!("Type a number and Enter.");
    keyboard.waiting = Some((options.runner, options.options.len()));
}

/// Lines typed on the terminal, read on their own thread (a read blocks).
#[derive(Resource)]
struct Keyboard {
    lines: Mutex<Receiver<String>>,
    waiting: Option<(Entity, usize)>,
}

impl Keyboard {
    fn spawn() -> Self {
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines: Mutex::new(lines),
            waiting: None,
        }
    }
}

fn choose_from_keyboard(
    mut keyboard: ResMut<Keyboard>,
    mut choose: MessageWriter<ChooseGenerated>,
) {
    let Some((runner, count)) = keyboard.waiting else {
        return;
    };
    let typed = keyboard.lines.lock().ok().and_then(|l| l.try_recv().ok());
    let Some(n) = typed.and_then(|t| t.trim().parse::<usize>().ok()) else {
        return;
    };
    if (1..=count).contains(&n) {
        keyboard.waiting = None;
        choose.write(ChooseGenerated {
            runner,
            index: n - 1,
        });
    } else {
        info!("Type a number from 1 to {count}.");
    }
}
