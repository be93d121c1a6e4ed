//! Lore in the plugin: a `*.lore.ron` asset as the world's lorebook (`DialogueContext::lore`)
//! fires on the game's facts and on the player's words, and what fired is in the prompt next
//! to the question; a broken lore file fails to load naming the file.

use bevy::asset::LoadState;
use bevy_llm_dialogue::lore::Lorebook;

use crate::harness::*;

fn load_lore(app: &mut App, path: &str) -> Handle<Lorebook> {
    let handle: Handle<Lorebook> = app.world().resource::<AssetServer>().load(path.to_owned());
    let start = Instant::now();
    loop {
        app.update();
        match app.world().resource::<AssetServer>().load_state(&handle) {
            LoadState::Loaded | LoadState::Failed(_) => return handle,
            _ => assert!(start.elapsed() < LONG, "{path} never loaded"),
        }
    }
}

#[test]
fn world_lore_fires_on_game_state_and_words_and_reaches_the_prompt() {
    let assets = scratch_assets("lore");
    std::fs::write(
        assets.join("world.lore.ron"),
        r#"(entries: [
    (when: [("quest.silver_key", "found")], content: "The player carries the silver key."),
    (keys: ["tower"], content: "The tower door is barred from inside."),
    (keys: ["dragon"], content: "No dragon has been seen in a hundred years."),
])"#,
    )
    .unwrap();
    std::fs::write(
        assets.join("broken.lore.ron"),
        r#"(entries: [(content: "x")])"#,
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let world = load_lore(&mut app, "world.lore.ron");
    let broken = load_lore(&mut app, "broken.lore.ron");
    match app.world().resource::<AssetServer>().load_state(&broken) {
        LoadState::Failed(e) => {
            let e = e.to_string();
            assert!(
                e.contains("broken.lore.ron") && e.contains("can never fire"),
                "{e}"
            );
        }
        other => panic!("a broken lore file loaded: {other:?}"),
    }
    let book = app
        .world()
        .resource::<Assets<Lorebook>>()
        .get(&world)
        .unwrap()
        .clone();
    {
        let mut context = app.world_mut().resource_mut::<DialogueContext>();
        context.set("quest", serde_json::json!({ "silver_key": "found" }));
        context.lore = book;
    }
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira).saying("How do I get into the tower?"),
    );
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) > 0);
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let prompt = &log.started[0].prompt;
    assert!(
        prompt.contains("The player carries the silver key."),
        "{prompt}"
    );
    assert!(
        prompt.contains("The tower door is barred from inside."),
        "{prompt}"
    );
    assert!(
        !prompt.contains("dragon"),
        "an entry whose key was not said stays out"
    );
}
