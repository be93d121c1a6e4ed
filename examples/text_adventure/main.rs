//! The Silver Key: a small text adventure where every character talks through the local
//! language model. Three places, three characters with their own persona files, a narrator
//! that writes scenes with choices, and NPCs whose decisions change the game.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --example text_adventure
//! ```
//!
//! Pick a choice at the bottom, or type to whoever is here. Ask Mira for a lantern, find the
//! hunter in the forest, and talk your way into the tower. F3 shows the debug panel.
//!
//! `game.rs` holds the rules (the headless test `tests/plugin/text_adventure.rs` plays them),
//! with the transcript in `transcript.rs` and saves in `save.rs`; `ui.rs` is the egui window,
//! `autoplay.rs` the scripted turns `scripts/screenshot` uses.

mod autoplay;
mod game;
mod ui;

use bevy::prelude::*;
use bevy::window::WindowResolution;
use bevy_egui::EguiPlugin;
use bevy_llm_dialogue::prelude::*;

fn main() -> AppExit {
    let mut app = App::new();
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title: "The Silver Key".into(),
            resolution: WindowResolution::new(1100, 720),
            ..default()
        }),
        ..default()
    }))
    .add_plugins(EguiPlugin::default())
    .add_plugins(LlmDialoguePlugin {
        // `normal` runs the model at the game's priority, for comparison (`scripts/screenshot`
        // reports frame times): the default is `InferencePriority::Idle`.
        inference_priority: match std::env::var("TEXT_ADVENTURE_PRIORITY").as_deref() {
            Ok("normal") => InferencePriority::Normal,
            _ => InferencePriority::Idle,
        },
        ..default()
    })
    .add_plugins((game::AdventurePlugin, ui::UiPlugin));
    if let Some(path) = std::env::var_os("TEXT_ADVENTURE_AUTOPLAY") {
        app.add_plugins(autoplay::Autoplay {
            screenshot: path.into(),
        });
    }
    app.run()
}
