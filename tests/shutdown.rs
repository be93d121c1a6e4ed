//! Quitting mid-line: the app drops cleanly, the worker stops within a token, nothing hangs.
//! (Its own test binary: it counts the process's worker threads.)

#![cfg(feature = "bevy")]

mod common;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::plugin::running_workers;
use bevy_llm_dialogue::prelude::*;

#[test]
fn dropping_the_app_mid_line_stops_the_worker_promptly() {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: assets.display().to_string(),
            ..default()
        },
        LlmDialoguePlugin {
            model: Some(common::model_path()),
            ..default()
        },
    ));
    app.finish();
    app.cleanup();
    let persona = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mira = app.world_mut().spawn(Npc::new(persona)).id();
    app.world_mut().write_message(
        RequestLine::new(mira)
            .saying("Tell me the whole history of your village.")
            .max_tokens(2000)
            .sampling(SamplingParams {
                seed: Some(1),
                ..default()
            }),
    );
    let start = Instant::now();
    loop {
        app.update();
        if !app.world().resource::<Messages<LineDelta>>().is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no delta");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(running_workers(), 1);

    let quit = Instant::now();
    drop(app);
    let took = quit.elapsed();
    assert_eq!(running_workers(), 0, "the worker stopped with the app");
    eprintln!("dropping the app mid-line took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "dropping the app took {took:?}"
    );
}
