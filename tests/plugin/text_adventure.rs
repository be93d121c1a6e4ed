//! The example adventure's rules, played headless with the real model: no window, the same
//! `game.rs` the example runs, driven by `PlayerInput` like the UI drives it.

#[expect(dead_code, reason = "the UI uses parts of the game the test does not")]
#[path = "../../examples/text_adventure/game.rs"]
mod game;

use crate::harness::*;

use game::{
    AdventureConfig, AdventurePlugin, Busy, DebugInfo, Entry, GameState, Location, PlayerInput,
    Speaker, StoryTeller, Transcript,
};

const SLOW: Duration = Duration::from_secs(180);

fn app(test: &str) -> App {
    app_with_model(test, model_path())
}

/// The game with `model`, saving under a scratch folder of its own (tests run in parallel).
fn app_with_model(test: &str, model: std::path::PathBuf) -> App {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let plugin = LlmDialoguePlugin {
        model: Some(model),
        ..default()
    };
    let mut app = base_app(&assets, plugin);
    app.add_plugins(AdventurePlugin);
    let save_file = scratch_dir(test).join("save.ron");
    let _ = std::fs::remove_file(&save_file);
    let mut config = app.world_mut().resource_mut::<AdventureConfig>();
    config.save_file = save_file;
    config.seed = Some(11);
    ready(&mut app);
    app
}

fn update_until(app: &mut App, what: &str, done: impl Fn(&mut World) -> bool) {
    let start = Instant::now();
    while !done(app.world_mut()) {
        assert!(start.elapsed() < SLOW, "timed out waiting for {what}");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Nothing is at the model (no NPC `Speaking` or `Deciding`, the story not `Narrating`) and
/// nothing streams into the transcript.
fn settled(world: &mut World) -> bool {
    let busy = world
        .query_filtered::<(), Busy>()
        .iter(world)
        .next()
        .is_some();
    !busy && !world.resource::<Transcript>().is_streaming()
}

fn play(app: &mut App, input: PlayerInput) {
    app.world_mut().write_message(input);
    // The requests go out (and the markers go on) in this frame's PostUpdate; a request
    // refused there is reported then and read by the game in the next frame's Update.
    app.update();
    app.update();
    update_until(app, "the turn to settle", settled);
}

fn story(world: &mut World) -> Story {
    world
        .query_filtered::<&Story, With<StoryTeller>>()
        .single(world)
        .unwrap()
        .clone()
}

fn last_entry(app: &App) -> Entry {
    let entries = &app.world().resource::<Transcript>().entries;
    entries.last().expect("the transcript has entries").clone()
}

fn fact(world: &World, key: &str) -> String {
    world.resource::<DialogueContext>().facts[key]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn scripted_turns_change_the_game_and_a_save_restores_them() {
    let mut app = app("text-adventure");
    update_until(&mut app, "the model and the opening scene", |world| {
        matches!(
            world.resource::<DialogueModel>().state,
            ModelState::Ready(_)
        ) && story(world).current_scene().is_some()
            && !world.resource::<Transcript>().entries.is_empty()
    });
    let opening = story(app.world_mut()).current_scene().unwrap().text.clone();
    let transcript = app.world().resource::<Transcript>();
    assert_eq!(transcript.entries[0].speaker, Speaker::Narrator);
    assert_eq!(transcript.entries[0].text, opening);
    assert_eq!(fact(app.world(), "traveller_carries"), "nothing");
    // The world's lore file was read: its entries fire on the game's facts and words.
    let lore = &app.world().resource::<DialogueContext>().lore;
    assert!(lore.entries.iter().any(|e| !e.when.is_empty()), "{lore:?}");

    // Ask Mira until she gives something: her decisions are constrained to her persona's
    // actions, and a gift lands in the inventory.
    let mut asked = 0;
    while app.world().resource::<GameState>().inventory.is_empty() {
        asked += 1;
        assert!(asked <= 3, "Mira refused three times");
        play(
            &mut app,
            PlayerInput::Say {
                to: "mira".into(),
                text: "The forest is dark. Could you give me a lantern, friend?".into(),
            },
        );
        let world = app.world();
        let debug = world.resource::<DebugInfo>();
        assert!(
            debug.last_action.starts_with("Mira: give_item")
                || debug.last_action.starts_with("Mira: refuse"),
            "{}",
            debug.last_action
        );
        let mira = world
            .resource::<Transcript>()
            .entries
            .iter()
            .rev()
            .find(|e| e.speaker == Speaker::Npc("Mira".into()))
            .expect("Mira answered");
        assert!(!mira.streaming && !mira.text.is_empty());
    }
    let item = app.world().resource::<GameState>().inventory[0].clone();
    assert!(item == "lantern" || item == "iron sword", "{item}");
    assert!(
        fact(app.world(), "traveller_carries").contains(&item),
        "the prompts learn what the player carries"
    );
    // The next line's prompt, as sent to the model, says so.
    play(
        &mut app,
        PlayerInput::Say {
            to: "mira".into(),
            text: "Thank you. What do you think of what I carry?".into(),
        },
    );
    let prompt = app.world().resource::<DebugInfo>().last_prompt.clone();
    assert!(
        prompt.contains(&format!("traveller carries: a {item}")),
        "{prompt}"
    );

    // Travel follows the map, and the prompts follow the player.
    play(&mut app, PlayerInput::Travel(Location::Ruin));
    assert_eq!(
        app.world().resource::<GameState>().location,
        Location::Village
    );
    play(&mut app, PlayerInput::Travel(Location::Forest));
    assert_eq!(
        app.world().resource::<GameState>().location,
        Location::Forest
    );
    assert_eq!(fact(app.world(), "traveller_is_at"), "the Old Forest");
    let before = app.world().resource::<Transcript>().entries.len();
    play(
        &mut app,
        PlayerInput::Say {
            to: "mira".into(),
            text: "Can you hear me from here?".into(),
        },
    );
    let transcript = app.world().resource::<Transcript>();
    assert_eq!(transcript.entries.len(), before + 1);
    assert_eq!(transcript.entries[before].text, "Mira is not here.");

    // The narrator writes the scene after a choice; it streams into the transcript. A second
    // choice while it writes is refused, not queued behind it.
    app.world_mut().write_message(PlayerInput::Choose(0));
    app.update();
    app.world_mut().write_message(PlayerInput::Choose(1));
    app.update();
    let last = last_entry(&app);
    assert_eq!(last.text, "Wait for the narrator to finish the scene.");
    update_until(&mut app, "the scene", settled);
    let story_now = story(app.world_mut());
    assert_eq!(story_now.nodes.len(), 2);
    let scene = story_now.current_scene().unwrap();
    assert_eq!(scene.choices.len(), 3);
    let last = last_entry(&app);
    assert_eq!(last.speaker, Speaker::Narrator);
    assert_eq!(last.text, scene.text);

    // Save, change things, load: everything is as it was.
    let saved_state = app.world().resource::<GameState>().clone();
    let saved_entries = app.world().resource::<Transcript>().entries.clone();
    app.world_mut().write_message(PlayerInput::Save);
    update_until(&mut app, "the save", |world| {
        let entries = &world.resource::<Transcript>().entries;
        entries
            .last()
            .is_some_and(|e| e.text.starts_with("Saved to"))
    });
    play(&mut app, PlayerInput::Travel(Location::Village));
    play(&mut app, PlayerInput::Choose(1));
    assert_ne!(story(app.world_mut()), story_now);
    app.world_mut().write_message(PlayerInput::Load);
    update_until(&mut app, "the load", |world| {
        let entries = &world.resource::<Transcript>().entries;
        entries.last().is_some_and(|e| e.text == "Game loaded.")
    });
    app.update();
    assert_eq!(*app.world().resource::<GameState>(), saved_state);
    assert_eq!(story(app.world_mut()), story_now);
    let entries = &app.world().resource::<Transcript>().entries;
    assert_eq!(entries[..entries.len() - 1], saved_entries[..]);
    assert_eq!(fact(app.world(), "traveller_is_at"), "the Old Forest");
}

#[test]
fn without_a_model_the_game_runs_and_says_how_to_get_one() {
    let none = scratch_dir("text-adventure-none").join("none.gguf");
    let mut app = app_with_model("text-adventure-none", none);
    update_until(&mut app, "the model to fail", |world| {
        matches!(
            world.resource::<DialogueModel>().state,
            ModelState::Failed(_)
        ) && story(world).current_scene().is_some()
    });
    // The pinned opening needs no model; talking does, and the answer explains.
    play(
        &mut app,
        PlayerInput::Say {
            to: "mira".into(),
            text: "Hello?".into(),
        },
    );
    let last = last_entry(&app);
    assert_eq!(last.speaker, Speaker::Game);
    assert!(last.text.contains("scripts/fetch-model"), "{}", last.text);
    play(&mut app, PlayerInput::Travel(Location::Forest));
    assert_eq!(
        app.world().resource::<GameState>().location,
        Location::Forest
    );
    // A generated scene cannot be written: the choice stays taken, so it can be retried.
    play(&mut app, PlayerInput::Choose(0));
    let last = last_entry(&app);
    assert!(last.text.contains("scripts/fetch-model"), "{}", last.text);
    assert!(story(app.world_mut()).pending.is_some());
    assert!(settled(app.world_mut()), "nothing is left at the model");
}

#[test]
fn at_the_ruined_tower_wren_and_aldous_are_talking_and_the_player_joins() {
    let mut app = app("text-adventure-tower");
    update_until(&mut app, "the model", |world| {
        matches!(
            world.resource::<DialogueModel>().state,
            ModelState::Ready(_)
        )
    });
    play(&mut app, PlayerInput::Travel(Location::Forest));
    // Walking in, the player finds them talking: four lines, Aldous first.
    play(&mut app, PlayerInput::Travel(Location::Ruin));
    let npc_lines = |app: &App, from: usize| -> Vec<String> {
        app.world().resource::<Transcript>().entries[from..]
            .iter()
            .filter_map(|e| match &e.speaker {
                Speaker::Npc(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(npc_lines(&app, 0), ["Aldous", "Wren", "Aldous", "Wren"]);
    let entries = &app.world().resource::<Transcript>().entries;
    assert!(
        entries
            .iter()
            .any(|e| e.text.starts_with("Wren leans on the broken wall")),
        "the game says who is here"
    );

    // The player speaks to Wren: she answers, in the conversation.
    let before = app.world().resource::<Transcript>().entries.len();
    play(
        &mut app,
        PlayerInput::Say {
            to: "wren".into(),
            text: "What are you two whispering about?".into(),
        },
    );
    let after = npc_lines(&app, before);
    assert_eq!(after.first().map(String::as_str), Some("Wren"), "{after:?}");
    let log = app
        .world_mut()
        .query::<&ConversationLog>()
        .single(app.world())
        .unwrap()
        .clone();
    assert!(log.player_joined);
    assert!(
        log.lines
            .iter()
            .any(|l| l.text == "What are you two whispering about?"),
        "{log:?}"
    );

    // Leaving ends it; Wren goes home.
    play(&mut app, PlayerInput::Travel(Location::Forest));
    let conversations = app
        .world_mut()
        .query::<&Conversation>()
        .iter(app.world())
        .count();
    assert_eq!(conversations, 0);
    let wren_at = app
        .world_mut()
        .query::<&game::Character>()
        .iter(app.world())
        .find(|c| c.id == "wren")
        .map(|c| c.location);
    assert_eq!(wren_at, Some(Location::Forest));
}
