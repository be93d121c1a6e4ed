//! Saved conversations (`DialogueHistory`'s turns as RON): any list of turns becomes a prompt
//! that strict chat templates accept: no system turns from the save, user and assistant
//! alternating from a user turn, no turn over the size limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

use bevy_llm_dialogue::engine::{ChatMessage, Role};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{self, Facts, PromptTemplate};

fuzz_target!(|text: &str| {
    let Ok(turns) = ron::from_str::<Vec<ChatMessage>>(text) else {
        return;
    };
    let conversation = prompt::conversation(&turns);
    assert!(conversation.len() <= prompt::MAX_HISTORY_TURNS * 2);
    for (i, turn) in conversation.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        assert_eq!(turn.role, expected, "{conversation:?}");
        assert!(turn.content.len() <= prompt::MAX_TURN_BYTES);
    }
    assert!(
        conversation.len().is_multiple_of(2),
        "ends with the NPC's turn"
    );
    let persona = Persona::from_ron(r#"(name: "M", description: "d")"#, "m").expect("parses");
    let _ = PromptTemplate::default_npc().npc_messages(
        &persona,
        &Facts::new(),
        &Facts::new(),
        &turns,
        Some("hi"),
        &[],
    );
});
