//! Structured output with the real model: narrator scenes written as prose with exactly the
//! asked choices, NPC actions that are always declared, alternatives that share one prefill.

use crate::common;

use std::collections::BTreeMap;

use bevy_llm_dialogue::action::{ActionSpec, ArgSpec, action_schema, parse_action};
use bevy_llm_dialogue::engine::{
    CancelToken, EngineError, GenerateParams, Grammar, SamplingParams,
};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Story, StoryAsset};

/// A narrator reply as one JSON object (a scene and its choices): the structured output
/// this measures (the plugin writes scenes as prose and a constrained list instead).
fn scene_schema(choices: usize, max_chars: usize) -> serde_json::Value {
    let min_chars = (max_chars / 4).max(20);
    serde_json::json!({
        "type": "object",
        "properties": {
            "scene": { "type": "string", "minLength": min_chars, "maxLength": max_chars },
            "choices": {
                "type": "array",
                "minItems": choices,
                "maxItems": choices,
                "items": { "type": "string", "pattern": "^[A-Z][A-Za-z ,'.!?-]{2,59}$" },
            },
        },
        "required": ["scene", "choices"],
        "additionalProperties": false,
    })
}

fn story_asset() -> StoryAsset {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/stories/silver_key.story.ron"),
    )
    .unwrap();
    StoryAsset::from_ron(&text, "silver_key.story.ron").unwrap()
}

fn params(seed: u64, max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    }
}

#[test]
fn twenty_seeds_of_npc_actions_are_all_declared_with_valid_arguments() {
    let mut engine = common::engine();
    let actions = vec![
        ActionSpec {
            name: "give_item".into(),
            description: "hand the player something from the forge".into(),
            args: BTreeMap::from([(
                "item".into(),
                ArgSpec::OneOf(vec!["sword".into(), "iron key".into()]),
            )]),
        },
        ActionSpec {
            name: "set_price".into(),
            description: "name a price in silver".into(),
            args: BTreeMap::from([("silver".into(), ArgSpec::Integer { min: 1, max: 50 })]),
        },
        ActionSpec {
            name: "leave".into(),
            description: "walk away".into(),
            args: BTreeMap::new(),
        },
    ];
    let persona = Persona::from_ron(
        r#"(name: "Mira", description: "the blacksmith of Elmsbrook", personality: ["gruff"])"#,
        "mira.persona.ron",
    )
    .unwrap();
    let messages = PromptTemplate::default_action()
        .action_messages(
            &persona,
            &Facts::new(),
            &Facts::new(),
            &actions,
            "The player asks for a sword.",
        )
        .unwrap();
    let prompt = engine.chat_tokens(&messages).unwrap();
    let grammar = Grammar::json_schema(action_schema(&actions));
    let mut session = engine.new_session();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let g = engine
            .generate_constrained(
                &mut session,
                &prompt,
                &params(seed, 64),
                &grammar,
                &CancelToken::new(),
                |_| {},
            )
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let decision = parse_action(&g.text, &actions)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", g.text));
        seen.insert(decision.name);
    }
    eprintln!("actions chosen over 20 seeds: {seen:?}");
}

#[test]
fn alternatives_share_the_prefill_and_differ() {
    let mut engine = common::engine();
    let asset = story_asset();
    let messages = PromptTemplate::default_narrator()
        .narrator_messages(&asset, &Story::default(), &Facts::new(), &[])
        .unwrap();
    let prompt = engine.chat_tokens(&messages).unwrap();
    let grammar = Grammar::json_schema(scene_schema(asset.choices, asset.max_scene_chars));
    let mut session = engine.new_session();
    let mut first_deltas = String::new();
    let all = engine
        .generate_alternatives(
            &mut session,
            &prompt,
            &params(3, 200),
            Some(&grammar),
            3,
            &CancelToken::new(),
            |i, d| {
                if i == 0 {
                    first_deltas.push_str(d.text);
                }
            },
        )
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(first_deltas, all[0].text);
    for g in &all {
        // Only the last prompt token is computed per alternative.
        assert_eq!(g.stats.cached_tokens, prompt.len() - 1, "{:?}", g.stats);
        serde_json::from_str::<serde_json::Value>(&g.text).unwrap();
    }
    assert_ne!(all[0].text, all[1].text);
    assert_ne!(all[1].text, all[2].text);
    assert_ne!(all[0].text, all[2].text);
}

#[test]
fn a_bad_schema_fails_before_any_compute_and_a_short_limit_is_an_error() {
    let mut engine = common::engine();
    let prompt = engine
        .chat_tokens(&[bevy_llm_dialogue::engine::ChatMessage::user(
            "Say hi as JSON.",
        )])
        .unwrap();
    let mut session = engine.new_session();
    let bad = Grammar::lark("start: ( unclosed");
    let err = engine
        .generate_constrained(
            &mut session,
            &prompt,
            &params(1, 16),
            &bad,
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::Grammar(_)), "{err}");
    assert!(session.cached_tokens().is_empty(), "nothing was computed");

    let long = Grammar::json_schema(serde_json::json!({
        "type": "object",
        "properties": { "text": { "type": "string", "minLength": 200 } },
        "required": ["text"],
    }));
    let err = engine
        .generate_constrained(
            &mut session,
            &prompt,
            &params(1, 8),
            &long,
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_tokens"), "{err}");
}

#[test]
fn multi_byte_characters_split_across_tokens_stream_whole() {
    // A grammar forces emoji and CJK, whose UTF-8 bytes this vocabulary splits across
    // tokens; every delta must still be whole characters and add up to the text.
    let mut engine = common::engine();
    let prompt = engine
        .chat_tokens(&[bevy_llm_dialogue::engine::ChatMessage::user(
            "Write wolves.",
        )])
        .unwrap();
    let mut session = engine.new_session();
    let mut deltas = Vec::new();
    let g = engine
        .generate_constrained(
            &mut session,
            &prompt,
            &params(5, 64),
            &Grammar::regex("(🐺|狼|森林|é){6}"),
            &CancelToken::new(),
            |d| deltas.push(d.text.to_owned()),
        )
        .unwrap();
    assert_eq!(deltas.concat(), g.text);
    assert!(g.text.chars().count() >= 6, "{}", g.text);
    let split = g
        .tokens
        .iter()
        .any(|&t| std::str::from_utf8(engine.tokenizer().token_bytes(t)).is_err());
    assert!(split, "some token held part of a character: {:?}", g.tokens);
}

#[test]
fn alternatives_without_a_seed_draw_fresh_text_every_time() {
    // Scenes and decisions go through alternatives; with no seed each playthrough must get
    // its own text (a fixed base seed made every playthrough the same).
    let mut engine = common::engine();
    let prompt = engine
        .chat_tokens(&[bevy_llm_dialogue::engine::ChatMessage::user(
            "Describe a strange room in a castle.",
        )])
        .unwrap();
    let unseeded = GenerateParams {
        max_tokens: 24,
        ..GenerateParams::default()
    };
    assert_eq!(unseeded.sampling.seed, None);
    // One alternative in a fresh session.
    let mut draw = |params: &GenerateParams| {
        let mut session = engine.new_session();
        engine
            .generate_alternatives(
                &mut session,
                &prompt,
                params,
                None,
                1,
                &CancelToken::new(),
                |_, _| {},
            )
            .unwrap()
            .remove(0)
            .text
    };
    let texts: Vec<String> = (0..3).map(|_| draw(&unseeded)).collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three unseeded draws were identical: {texts:?}"
    );
    // A seed still reproduces.
    let seeded = GenerateParams {
        sampling: SamplingParams::default().with_seed(5),
        ..unseeded
    };
    assert_eq!(draw(&seeded), draw(&seeded));
}
