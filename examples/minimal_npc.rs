//! The smallest game with a talking NPC, streamed to the log at 60 frames a second.
//! `scripts/fetch-model`, then `cargo run --release --example minimal_npc`.

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;

const FRAME: std::time::Duration = std::time::Duration::from_millis(16);

fn main() {
    App::new()
        .add_plugins((
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(FRAME)),
            AssetPlugin::default(),
            bevy::log::LogPlugin::default(),
        ))
        .add_plugins(LlmDialoguePlugin::default())
        .add_systems(Startup, spawn_mira)
        .add_systems(Update, (greet_when_ready, show_line))
        .run();
}

fn spawn_mira(mut commands: Commands, assets: Res<AssetServer>) {
    commands.spawn(Npc::new(assets.load("personas/mira.persona.ron")));
}

fn greet_when_ready(
    mut loaded: MessageReader<ModelLoaded>,
    mut requests: MessageWriter<RequestLine>,
    mira: Single<Entity, With<Npc>>,
) {
    if loaded.read().next().is_some() {
        requests.write(RequestLine::new(*mira).saying("Hello! Can you fix my sword?"));
    }
}

fn show_line(
    mut deltas: MessageReader<LineDelta>,
    mut finished: MessageReader<LineFinished>,
    mut failed: (MessageReader<LineFailed>, MessageReader<ModelFailed>),
    mut exit: MessageWriter<AppExit>,
) {
    for delta in deltas.read() {
        info!("Mira says: …{}", delta.text);
    }
    for line in finished.read() {
        let tps = line.stats.decode_tokens_per_second();
        info!(
            "Mira said: {} ({:?}, {tps:.0} tokens/s)",
            line.text, line.stop_reason
        );
        exit.write(AppExit::Success);
    }
    let errors = failed.0.read().map(|f| f.error.to_string());
    for error in errors.chain(failed.1.read().map(|f| f.error.clone())) {
        error!("{error}");
        exit.write(AppExit::error());
    }
}
