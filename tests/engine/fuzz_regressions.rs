//! Inputs the fuzzers (`fuzz/`, cargo-fuzz) found or that seed them, replayed as tests: each
//! must end in a value or an error, never a panic. Files live in `tests/data/fuzz/<target>/`;
//! hostile GGUF headers are written by the tests themselves (model files are never committed).

use std::path::Path;

use crate::common::gguf_writer;

use bevy_llm_dialogue::engine::{Backend, ChatMessage, ChatTemplate, Engine, EngineConfig, Role};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{self, Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Story, StoryAsset};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Hostile GGUF headers, made here rather than stored: a header claiming 2^40 tensors and
/// 2^40 metadata entries, and one whose first key claims to be 2^62 bytes long.
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
    for (name, bytes) in inputs("gguf").into_iter().chain(hostile_headers()) {
        let config = EngineConfig {
            backend: Backend::Cpu,
            ..EngineConfig::default()
        };
        let result = Engine::from_reader(std::io::Cursor::new(bytes), &name, config);
        assert!(result.is_err(), "{name} is not a model");
    }
}

#[test]
fn persona_and_story_inputs_parse_or_fail_cleanly() {
    for (name, bytes) in inputs("persona") {
        let _ = Persona::from_ron(&String::from_utf8_lossy(&bytes), &name);
    }
    for (name, bytes) in inputs("story") {
        let _ = StoryAsset::from_ron(&String::from_utf8_lossy(&bytes), &name);
    }
}

#[test]
fn template_inputs_render_or_fail_cleanly() {
    for (name, bytes) in inputs("template") {
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
    let found = inputs("story_save");
    assert!(
        found.len() >= 3,
        "the seeds are in tests/data/fuzz/story_save"
    );
    for (name, bytes) in found {
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
    let found = inputs("history");
    assert!(
        !found.is_empty(),
        "the seeds are in tests/data/fuzz/history"
    );
    for (name, bytes) in found {
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
