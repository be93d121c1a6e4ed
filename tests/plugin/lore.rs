//! Lore in the plugin: the world's lorebook (`DialogueContext::lore`) fires on the game's
//! facts and on the player's words, and what fired is in the prompt next to the question.

use bevy_llm_dialogue::lore::LoreEntry;

use crate::harness::*;

#[test]
fn world_lore_fires_on_game_state_and_words_and_reaches_the_prompt() {
    let mut app = app(&scratch_assets("lore"), plugin());
    {
        let mut context = app.world_mut().resource_mut::<DialogueContext>();
        context.set("quest", serde_json::json!({ "silver_key": "found" }));
        context.lore.entries = vec![
            LoreEntry::when_fact(
                "quest.silver_key",
                "found",
                "The player carries the silver key.",
            ),
            LoreEntry::new(["tower"], "The tower door is barred from inside."),
            LoreEntry::new(["dragon"], "No dragon has been seen in a hundred years."),
        ];
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
