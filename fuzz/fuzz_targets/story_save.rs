//! Saved playthroughs (`Story` as RON, as a save file or a player's edit holds it): any text
//! must give an error or a story; a story `validate` refuses is never used, and every step on
//! any story (valid or not) ends without a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Story, StoryAsset};

fuzz_target!(|text: &str| {
    let Ok(mut story) = ron::from_str::<Story>(text) else {
        return;
    };
    let valid = story.validate().is_ok();
    // Panic-free and finite on anything, valid or not.
    let path = story.path();
    assert!(path.len() <= story.nodes.len());
    if valid {
        let asset = StoryAsset::from_ron(
            r#"(title: "T", premise: "A gate.", choices: 2)"#,
            "fuzz.story.ron",
        )
        .expect("the fixed asset parses");
        let _ = PromptTemplate::default_narrator().narrator_messages(&asset, &story, &Facts::new(), &[]);
        if story.choose(0).is_ok() {
            story.push_scene("Next.".into(), vec![("Go".into(), None)], None);
            assert!(story.validate().is_ok(), "a valid story stays valid");
        }
    }
});
