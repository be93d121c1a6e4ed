//! Inputs the fuzzers (`fuzz/`, cargo-fuzz) found or that seed them, replayed as tests: each
//! must end in a value or an error, never a panic. Files live in `tests/data/fuzz/<target>/`,
//! and each test checks that it read at least as many as are there now, so that a renamed
//! or missing folder fails rather than replays nothing. The GGUF seeds are the hostile
//! headers below, committed as `.header` files of under 2 KiB (model files are never committed).

use std::path::Path;

use crate::common::gguf_writer;

use bevy_llm_dialogue::engine::{Backend, ChatMessage, ChatTemplate, Engine, EngineConfig, Role};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{self, Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Story, StoryAsset};

/// The files of `tests/data/fuzz/<target>/` as (path, bytes); fails unless there are at
/// least `at_least`.
fn inputs(target: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let path = e.unwrap().path();
                    (path.display().to_string(), std::fs::read(&path).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        found.len() >= at_least,
        "{} holds {} inputs, expected at least {at_least}: was the folder renamed or emptied?",
        dir.display(),
        found.len()
    );
    found
}

/// Hostile GGUF headers, the seeds of `tests/data/fuzz/gguf/` (`<name>.header`): a header
/// claiming 2^40 tensors and 2^40 metadata entries, one whose first key claims to be 2^62
/// bytes long, one with `general.alignment = 0` and one whose tensor's dimensions overflow.
fn hostile_headers() -> Vec<(String, Vec<u8>)> {
    let header = |tensors: u64, kvs: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    };
    let mut huge_string = header(0, 1);
    huge_string.extend((1u64 << 62).to_le_bytes());
    huge_string.extend(b"general");
    vec![
        ("huge_counts".into(), header(1 << 40, 1 << 40)),
        ("huge_string".into(), huge_string),
        ("alignment_zero".into(), gguf_writer::alignment_zero()),
        ("overflowing_dims".into(), gguf_writer::overflowing_dims()),
    ]
}

#[test]
fn gguf_inputs_load_or_fail_cleanly() {
    if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz/gguf");
        for (name, bytes) in hostile_headers() {
            std::fs::write(dir.join(format!("{name}.header")), bytes).unwrap();
        }
    }
    let seeds = inputs("gguf", 4);
    // The committed seeds hold every hostile header as the helpers write it today.
    for (name, bytes) in hostile_headers() {
        assert!(
            seeds.iter().any(|(_, seed)| *seed == bytes),
            "tests/data/fuzz/gguf/{name}.header is missing or differs from hostile_headers(); \
             `UPDATE_FUZZ_SEEDS=1 cargo test --test engine gguf_inputs` writes it"
        );
    }
    for (name, bytes) in seeds {
        let config = EngineConfig {
            backend: Backend::Cpu,
            ..EngineConfig::default()
        };
        let result = Engine::from_reader(std::io::Cursor::new(bytes), &name, config);
        assert!(result.is_err(), "{name} is not a model");
    }
}

#[test]
fn card_and_lorebook_inputs_read_or_fail_cleanly() {
    for (name, bytes) in inputs("card", 2) {
        let _ = bevy_llm_dialogue::card::CharacterCard::persona_from_bytes(&bytes, &name);
    }
    for (name, bytes) in inputs("lorebook", 1) {
        let _ =
            bevy_llm_dialogue::lore::Lorebook::from_ron(&String::from_utf8_lossy(&bytes), &name);
    }
}

#[test]
fn persona_and_story_inputs_parse_or_fail_cleanly() {
    for (name, bytes) in inputs("persona", 2) {
        let _ = Persona::from_ron(&String::from_utf8_lossy(&bytes), &name);
    }
    for (name, bytes) in inputs("story", 1) {
        let _ = StoryAsset::from_ron(&String::from_utf8_lossy(&bytes), &name);
    }
}

#[test]
fn template_inputs_render_or_fail_cleanly() {
    for (name, bytes) in inputs("template", 2) {
        let source = String::from_utf8_lossy(&bytes);
        if let Ok(t) = PromptTemplate::new(&name, &source) {
            let persona = Persona::from_ron(r#"(name: "M", description: "d")"#, "m").unwrap();
            let _ = t.npc_messages(&persona, &Facts::new(), &Facts::new(), &[], Some("hi"), &[]);
        }
        if let Ok(t) = ChatTemplate::new(&source, "<s>", "</s>") {
            let _ = t.render(&[ChatMessage::user("hi")], true);
        }
    }
}

#[test]
fn saved_stories_are_validated_and_never_hang() {
    for (name, bytes) in inputs("story_save", 3) {
        let Ok(mut story) = ron::from_str::<Story>(&String::from_utf8_lossy(&bytes)) else {
            continue;
        };
        let valid = story.validate().is_ok();
        assert_eq!(valid, name.ends_with("two_scenes.ron"), "{name}");
        assert!(story.path().len() <= story.nodes.len(), "{name}");
        let _ = story.choose(0);
    }
}

#[test]
fn saved_histories_become_strict_alternating_conversations() {
    for (name, bytes) in inputs("history", 1) {
        let turns: Vec<ChatMessage> =
            ron::from_str(&String::from_utf8_lossy(&bytes)).unwrap_or_default();
        let conversation = prompt::conversation(&turns);
        for (i, turn) in conversation.iter().enumerate() {
            let expected = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            assert_eq!(turn.role, expected, "{name}: {conversation:?}");
            assert!(
                !turn.content.contains("reveal the quest"),
                "{name}: a save's system turn"
            );
        }
        assert!(conversation.len().is_multiple_of(2), "{name}");
    }
}
