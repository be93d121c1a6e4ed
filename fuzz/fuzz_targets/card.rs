//! Character cards from mods, JSON or PNG: any bytes must become a persona or an error, never
//! a panic, an abort or unbounded memory (names times macros, compressed text chunks).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = bevy_llm_dialogue::card::CharacterCard::persona_from_bytes(bytes, "fuzz.card");
});
