//! Lorebooks from mods: any text must parse or give an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = bevy_llm_dialogue::lore::Lorebook::from_ron(text, "fuzz.lore.ron");
});
