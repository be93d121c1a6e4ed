//! The smallest game with a talking NPC: one persona, one question, the answer streamed to
//! the log. Run `scripts/fetch-model` first, then:
//!
//! ```text
//! cargo run --release --example minimal_npc
//! ```

use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;

fn main() {
    App::new()
        .add_plugins((
            // 60 frames a second, like a game; without a wait the loop would spin a core.
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
                1.0 / 60.0,
            ))),
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
    mut failed: MessageReader<LineFailed>,
    mut model_failed: MessageReader<ModelFailed>,
    mut exit: MessageWriter<AppExit>,
) {
    for failure in model_failed.read() {
        error!("{}", failure.error);
        exit.write(AppExit::error());
    }
    for delta in deltas.read() {
        info!("Mira says: …{}", delta.text);
    }
    for line in finished.read() {
        info!(
            "Mira said: {} ({:?}; {} prompt tokens, {:.1} tokens/s)",
            line.text,
            line.stop_reason,
            line.stats.prompt_tokens,
            line.stats.decode_tokens_per_second()
        );
        exit.write(AppExit::Success);
    }
    for line in failed.read() {
        error!("{}", line.error);
        exit.write(AppExit::error());
    }
}
