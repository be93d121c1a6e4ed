//! Episodic memory: a fact told hundreds of turns ago, out of every prompt since, comes back
//! when the player asks about it, after a save and a load.

use crate::harness::*;

/// A history of `filler` exchanges of small talk after the player told Mira their sister's
/// name and town; summaries off, so the history is exactly this.
fn long_history(filler: usize) -> DialogueHistory {
    let mut history = DialogueHistory::default();
    history.push_exchange(
        Some("My sister Elda keeps bees in Harrowgate.".into()),
        "Bees in Harrowgate? I'll remember that.".into(),
    );
    let talk = [
        (
            "Is the forge hot today?",
            "Hot enough to bend iron, friend.",
        ),
        (
            "Any news from the road?",
            "Carts came in at dawn, nothing more.",
        ),
        ("Will it rain tonight?", "The clouds say yes."),
    ];
    for i in 0..filler {
        let (q, a) = talk[i % talk.len()];
        history.push_exchange(Some(format!("{q} ({i})")), format!("{a} ({i})"));
    }
    history
}

#[test]
fn a_fact_told_hundreds_of_turns_ago_is_recalled_after_a_save_and_load() {
    let history = long_history(150);
    assert_eq!(history.episodes.len(), 151);
    assert!(
        !history
            .turns
            .iter()
            .any(|t| t.content.contains("Harrowgate")),
        "the fact is older than the turns kept"
    );
    let saved = ron::to_string(&history).unwrap();
    let loaded: DialogueHistory = ron::from_str(&saved).unwrap();
    assert_eq!(loaded, history, "episodes are saved with the history");

    let assets = scratch_assets("recall");
    let mut app = app(&assets, plugin());
    app.world_mut()
        .resource_mut::<DialogueSettings>()
        .summarize_after = None;
    let persona = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mira = app
        .world_mut()
        .spawn((Npc::new(persona.clone()), loaded.clone()))
        .id();
    // The control: the same NPC and history, asked with recall off.
    let control = app.world_mut().spawn((Npc::new(persona), loaded)).id();
    request(
        &mut app,
        RequestLine::new(mira).saying("Do you remember where my sister keeps her bees?"),
    );
    update_until(&mut app, LONG, "the recalled line", |log| {
        log.results_for(mira) == 1
    });
    // The same question with recall off: the control.
    app.world_mut()
        .resource_mut::<DialogueSettings>()
        .recall_moments = 0;
    request(
        &mut app,
        RequestLine::new(control).saying("Do you remember where my sister keeps her bees?"),
    );
    update_until(&mut app, LONG, "the line without recall", |log| {
        log.results_for(control) == 1
    });

    let log = app.world().resource::<Log>();
    assert_eq!(log.finished.len(), 2, "{:?}", log.failed);
    let recalled = &log.started[0].prompt;
    // The old exchange comes back as the turns it was, after the newest history and before
    // the question.
    let at_fact = recalled
        .find("My sister Elda keeps bees in Harrowgate.")
        .unwrap_or_else(|| panic!("not recalled: {recalled}"));
    assert!(recalled.contains("Bees in Harrowgate? I'll remember that."));
    let at_newest_history = recalled.rfind("(149)").unwrap();
    let at_question = recalled.rfind("where my sister keeps her bees").unwrap();
    assert!(
        at_newest_history < at_fact && at_fact < at_question,
        "{recalled}"
    );
    assert_eq!(
        recalled.matches("Harrowgate").count(),
        2,
        "only the exchange the question is about (its line and reply): {recalled}"
    );
    assert!(
        !log.started[1].prompt.contains("Harrowgate"),
        "without recall the fact is nowhere in the prompt"
    );
    // The new exchanges are episodes too.
    let history = app.world().get::<DialogueHistory>(mira).unwrap();
    assert_eq!(history.episodes.len(), 152);
}

#[test]
fn memories_pushed_out_of_every_prompt_are_recalled_when_asked_about() {
    let mut history = DialogueHistory::default();
    history.remember("The player lent Mira a bronze lantern");
    for i in 0..DialogueHistory::MAX_MEMORIES {
        history.remember(format!("The player paid {i} coins"));
    }
    assert!(!history.memories.iter().any(|m| m.contains("lantern")));
    assert_eq!(
        history.episodes,
        [Episode::Memory(
            "The player lent Mira a bronze lantern".into()
        )]
    );
    let assets = scratch_assets("recall-memory");
    let mut app = app(&assets, plugin());
    let persona = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mira = app.world_mut().spawn((Npc::new(persona), history)).id();
    request(
        &mut app,
        RequestLine::new(mira).saying("Can I have my lantern back?"),
    );
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) == 1);
    let log = app.world().resource::<Log>();
    assert_eq!(log.finished.len(), 1, "{:?}", log.failed);
    assert!(
        log.started[0]
            .prompt
            .contains("Mira remembers: The player lent Mira a bronze lantern."),
        "{}",
        log.started[0].prompt
    );
}
