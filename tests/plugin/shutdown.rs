//! Quitting mid-line: the app drops cleanly, the worker stops within a token, nothing hangs.

use bevy_llm_dialogue::plugin::running_workers;

use crate::harness::*;

#[test]
fn dropping_the_app_mid_line_stops_the_worker_promptly() {
    // It counts the process's worker threads: no other test may have an app meanwhile.
    let _alone = exclusive();
    // A test that just dropped its app may have a worker still finishing (a model load is
    // not interrupted); wait for it.
    let start = Instant::now();
    while running_workers() > 0 {
        assert!(
            start.elapsed() < LONG,
            "workers of dropped apps did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut app = base_app(
        &assets,
        LlmDialoguePlugin {
            model: Some(model_path()),
            ..default()
        },
    );
    ready(&mut app);
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
