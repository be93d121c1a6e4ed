//! Lorebooks: entries fire on words in the recent turns (secondary-key logic, case, whole
//! words, scan depth) and on game facts, within the budget by priority, in order; a card's
//! book becomes one; the prompt carries what fired next to the newest turn.

use bevy_llm_dialogue::engine::{ChatMessage, Role};
use bevy_llm_dialogue::lore::{LoreEntry, Lorebook, Selective, from_character_book};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use serde_json::json;

fn contents(fired: &[&LoreEntry]) -> Vec<String> {
    fired.iter().map(|e| e.content.clone()).collect()
}

fn book(entries: Vec<LoreEntry>) -> Lorebook {
    Lorebook {
        entries,
        ..Lorebook::default()
    }
}

#[test]
fn keys_fire_on_whole_words_in_the_scanned_turns() {
    let mut exact = LoreEntry::new(["Wren"], "Wren lives in the forest.");
    exact.case_sensitive = true;
    let b = book(vec![
        LoreEntry::new(["wolf", "old forest"], "Wolves roam the Old Forest."),
        exact,
    ]);
    let none = Facts::new();
    let fire = |turns: &[&str]| contents(&b.select(turns, &none, &none));
    assert_eq!(
        fire(&["Is there a WOLF nearby?"]),
        ["Wolves roam the Old Forest."]
    );
    assert_eq!(
        fire(&["I went to the old forest."]),
        ["Wolves roam the Old Forest."]
    );
    assert!(
        fire(&["I bought wolfsbane."]).is_empty(),
        "not inside another word"
    );
    assert!(fire(&["Where is wren?"]).is_empty(), "case-sensitive key");
    assert_eq!(fire(&["Where is Wren?"]), ["Wren lives in the forest."]);
    // Only the last `scan_depth` (4) turns are scanned.
    let old = ["A wolf!", "Hm.", "Anyway.", "So.", "Weather?"];
    assert!(fire(&old).is_empty());
    assert_eq!(fire(&old[1..]).len(), 0);
    assert_eq!(fire(&old[..4]).len(), 1);
}

#[test]
fn secondary_keys_combine_as_the_entry_says() {
    let entry = |selective| LoreEntry {
        keys: vec!["key".into()],
        secondary_keys: vec!["silver".into(), "tower".into()],
        selective,
        content: format!("{selective:?}"),
        ..LoreEntry::default()
    };
    let b = book(
        [
            Selective::AndAny,
            Selective::AndAll,
            Selective::NotAny,
            Selective::NotAll,
        ]
        .into_iter()
        .map(entry)
        .collect(),
    );
    let none = Facts::new();
    let fire = |turn: &str| contents(&b.select(&[turn], &none, &none));
    assert_eq!(fire("the key"), ["NotAny", "NotAll"]);
    assert_eq!(fire("the silver key"), ["AndAny", "NotAll"]);
    assert_eq!(fire("the silver key of the tower"), ["AndAny", "AndAll"]);
}

#[test]
fn game_facts_fire_entries_without_any_word() {
    let b = book(vec![
        LoreEntry::when_fact(
            "quest.silver_key",
            "found",
            "The player has the silver key.",
        ),
        LoreEntry::when_fact("met_wren", "*", "Wren has met the player."),
        LoreEntry::when_fact("mood", "angry", "Mira is angry today."),
        LoreEntry {
            constant: true,
            content: "Elmsbrook is a village.".into(),
            ..LoreEntry::default()
        },
    ]);
    let world: Facts = [
        ("quest", json!({ "silver_key": "found" })),
        ("met_wren", json!(true)),
    ]
    .into_iter()
    .collect();
    let npc: Facts = [("mood", "angry")].into_iter().collect();
    assert_eq!(
        contents(&b.select(&["Hello."], &world, &npc)),
        [
            "The player has the silver key.",
            "Wren has met the player.",
            "Mira is angry today.",
            "Elmsbrook is a village."
        ]
    );
    let lost: Facts = [("quest", json!({ "silver_key": "lost" }))]
        .into_iter()
        .collect();
    assert_eq!(
        contents(&b.select(&["Hello."], &lost, &Facts::new())),
        ["Elmsbrook is a village."]
    );
}

#[test]
fn the_budget_takes_the_highest_priority_and_order_places_them() {
    let entry = |content: &str, priority, order| LoreEntry {
        constant: true,
        content: content.into(),
        priority,
        order,
        ..LoreEntry::default()
    };
    let b = Lorebook {
        // 10 tokens: 40 characters.
        token_budget: 10,
        entries: vec![
            entry("Low priority, placed first.", 0, 1),
            entry("High priority, placed last.", 5, 9),
            entry("Middle priority, middle.", 3, 5),
        ],
        ..Lorebook::default()
    };
    let none = Facts::new();
    assert_eq!(
        contents(&b.select(&["x"], &none, &none)),
        ["High priority, placed last."],
        "27 characters fit, the next 24 do not"
    );
    let roomy = Lorebook {
        token_budget: 100,
        ..b
    };
    assert_eq!(
        contents(&roomy.select(&["x"], &none, &none)),
        [
            "Low priority, placed first.",
            "Middle priority, middle.",
            "High priority, placed last."
        ]
    );
}

#[test]
fn a_cards_book_and_a_ron_book_read_and_bad_entries_are_refused() {
    let from_card = from_character_book(&json!({
        "scan_depth": 2, "token_budget": 50,
        "entries": [
            { "keys": ["tower"], "content": "The tower is barred.", "insertion_order": 3, "priority": 2,
              "selective": true, "secondary_keys": ["door"], "case_sensitive": false, "enabled": true },
            { "keys": [], "content": "Never fires." },
            { "keys": ["well"], "content": "@@depth 4\n@@activate_only_after 2\nThe well is dry." },
            { "keys": ["crypt"], "content": "@@dont_activate\nThe crypt is sealed." },
            { "keys": ["x"], "content": "  " }
        ]
    }));
    assert_eq!(from_card.entries.len(), 3);
    assert_eq!(
        from_card.entries[1].content, "The well is dry.",
        "V3 decorators are not lore"
    );
    assert!(!from_card.entries[2].enabled, "@@dont_activate");
    assert_eq!((from_card.scan_depth, from_card.token_budget), (2, 50));
    assert_eq!(from_card.entries[0].secondary_keys, ["door"]);
    assert_eq!(from_card.entries[0].order, 3);

    let ron = Lorebook::from_ron(
        r#"(scan_depth: 3, entries: [(keys: ["ring"], content: "The ring is cursed."),
            (when: [("quest.ring", "returned")], content: "The ring is back.")])"#,
        "world.lore.ron",
    )
    .unwrap();
    assert_eq!(
        ron.entries[1].when,
        [("quest.ring".to_owned(), "returned".to_owned())]
    );
    let err = Lorebook::from_ron(r#"(entries: [(content: "Lost.")])"#, "bad.lore.ron")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.lore.ron") && err.contains("can never fire"),
        "{err}"
    );
    let err = Lorebook::from_ron(
        r#"(entries: [(keys: [""], content: "All.")])"#,
        "bad.lore.ron",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty key"), "{err}");
}

#[test]
fn what_fires_goes_next_to_the_newest_turn_and_nothing_else_changes() {
    let persona = Persona::from_ron(
        r#"(name: "Mira", description: "the blacksmith",
            lore: Some((entries: [(keys: ["tower"], content: "The tower door is barred from inside.")])))"#,
        "mira.persona.ron",
    )
    .unwrap();
    let world_lore = book(vec![LoreEntry::when_fact(
        "quest.silver_key",
        "found",
        "The player carries the silver key.",
    )]);
    let world: Facts = [("quest", json!({ "silver_key": "found" }))]
        .into_iter()
        .collect();
    let template = PromptTemplate::default_npc();
    let messages = template
        .npc_messages(
            &persona,
            &world,
            &Facts::new(),
            &[],
            Some("How do I get into the tower?"),
            &[&world_lore],
        )
        .unwrap();
    let note = &messages[messages.len() - 2];
    assert_eq!(note.role, Role::System);
    assert_eq!(
        note.content,
        "Mira knows: The player carries the silver key. The tower door is barred from inside."
    );
    assert_eq!(
        messages.last().unwrap(),
        &ChatMessage::user("How do I get into the tower?")
    );
    // Nothing fires: the prompt is the one without lore.
    let quiet = template
        .npc_messages(
            &persona,
            &Facts::new(),
            &Facts::new(),
            &[],
            Some("Hi."),
            &[&world_lore],
        )
        .unwrap();
    let plain = template
        .npc_messages(
            &persona,
            &Facts::new(),
            &Facts::new(),
            &[],
            Some("Hi."),
            &[],
        )
        .unwrap();
    assert_eq!(quiet, plain);
}

/// The README's lorebook example parses as written.
#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("### Lorebooks").unwrap()..];
    let start = section.find("```ron\n").unwrap() + "```ron\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let persona = Persona::from_ron(block, "README.md").unwrap();
    let lore = persona.lore.unwrap();
    assert_eq!(lore.entries.len(), 4);
    assert_eq!(lore.entries[1].selective, Selective::AndAll);
}

/// The narrator's own lore and the world's fire on the recent scenes and facts, next to the
/// newest ask; a story without fired lore gets the same prompt as before.
#[test]
fn the_narrator_hears_its_lore_next_to_its_newest_ask() {
    use bevy_llm_dialogue::story::{Story, StoryAsset};
    let asset = StoryAsset::from_ron(
        r#"(title: "The Lighthouse", premise: "You row to the old lighthouse at dusk.",
            lore: Some((entries: [(keys: ["lighthouse"], content: "The keeper vanished last winter.")])))"#,
        "lighthouse.story.ron",
    )
    .unwrap();
    let world_lore = book(vec![LoreEntry::when_fact(
        "storm",
        "coming",
        "A storm is coming.",
    )]);
    let world: Facts = [("storm", "coming")].into_iter().collect();
    let template = PromptTemplate::default_narrator();
    let story = Story::default();
    let messages = template
        .narrator_messages(&asset, &story, &world, &[&world_lore])
        .unwrap();
    let note = &messages[messages.len() - 2];
    assert_eq!(note.role, Role::System);
    assert_eq!(
        note.content,
        "The narrator knows: A storm is coming. The keeper vanished last winter."
    );
    let quiet = template
        .narrator_messages(
            &StoryAsset {
                lore: None,
                ..asset.clone()
            },
            &story,
            &Facts::new(),
            &[&world_lore],
        )
        .unwrap();
    let plain = template
        .narrator_messages(
            &StoryAsset {
                lore: None,
                ..asset
            },
            &story,
            &Facts::new(),
            &[],
        )
        .unwrap();
    assert_eq!(quiet, plain);
}
