//! Generation properties with the real model: determinism, streaming, stop conditions.

use crate::common;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, GenerateParams, Generation, SamplingParams, StopReason, ends_sentence,
};

fn ask(question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are Mira, the village blacksmith. Answer briefly."),
        ChatMessage::user(question),
    ]
}

fn params(max_tokens: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    }
}

/// Runs a chat in a fresh session and returns the result with the streamed deltas.
fn run(messages: &[ChatMessage], params: &GenerateParams) -> (Generation, Vec<String>) {
    let mut engine = common::engine();
    let mut session = engine.new_session();
    let mut deltas = Vec::new();
    let generation = engine
        .chat(&mut session, messages, params, &CancelToken::new(), |d| {
            deltas.push(d.text.to_owned())
        })
        .expect("generation succeeds");
    (generation, deltas)
}

#[test]
fn same_seed_same_text_and_different_seeds_vary() {
    let mut engine = common::engine();
    let messages = ask("Tell me about your forge.");
    let mut texts = Vec::new();
    for seed in [1, 1, 2, 3] {
        let mut session = engine.new_session();
        let g = engine
            .chat(
                &mut session,
                &messages,
                &params(24, seed),
                &CancelToken::new(),
                |_| {},
            )
            .unwrap();
        assert!(!g.text.is_empty(), "seed {seed} produced no text");
        texts.push(g.text);
    }
    assert_eq!(texts[0], texts[1], "the same seed must give the same text");
    assert!(
        texts[1] != texts[2] || texts[2] != texts[3],
        "three seeds gave one text: {texts:?}"
    );
}

#[test]
fn streamed_deltas_concatenate_to_the_final_text() {
    for seed in [4, 5] {
        let (g, deltas) = run(
            &ask("What do you sell? Use an emoji or two."),
            &params(40, seed),
        );
        assert_eq!(deltas.concat(), g.text, "seed {seed}");
        assert!(!g.text.contains('\u{FFFD}'), "broken UTF-8 in {:?}", g.text);
        assert!(!g.text.contains("<|im_end|>") && !g.text.contains("<|im_start|>"));
        assert_eq!(g.text, g.text.trim(), "lines are trimmed");
    }
}

#[test]
fn stop_strings_end_the_text_and_never_appear() {
    let mut stopped = 0;
    for seed in 10..14 {
        let mut p = params(64, seed);
        p.stop = vec![".".to_owned(), "!".to_owned()];
        let (g, deltas) = run(&ask("Describe your forge in three sentences."), &p);
        assert_eq!(deltas.concat(), g.text);
        for d in &deltas {
            assert!(
                !d.contains('.') && !d.contains('!'),
                "delta leaked a stop string: {d:?}"
            );
        }
        if g.stop_reason == StopReason::StopString {
            stopped += 1;
        }
    }
    assert!(stopped > 0, "no generation ever reached a stop string");
}

#[test]
fn max_tokens_bounds_the_generation() {
    for max in [1, 7] {
        let (g, _) = run(
            &ask("Tell me a very long story about dragons."),
            &params(max, 1),
        );
        assert!(g.stats.generated_tokens <= max);
        assert_eq!(g.stop_reason, StopReason::MaxTokens);
        assert_eq!(g.tokens.len(), max);
    }
}

#[test]
fn the_model_ends_its_turn_with_the_end_of_turn_token() {
    let mut engine = common::engine();
    let end = engine.tokenizer().token_id("<|im_end|>").unwrap();
    assert!(engine.tokenizer().is_end_of_generation(end));
    let mut eos = 0;
    for seed in 20..23 {
        let mut session = engine.new_session();
        let g = engine
            .chat(
                &mut session,
                &ask("Say hello."),
                &params(96, seed),
                &CancelToken::new(),
                |_| {},
            )
            .unwrap();
        assert!(
            !g.tokens.contains(&end),
            "the end-of-turn token is not part of the text"
        );
        if g.stop_reason == StopReason::Eos {
            eos += 1;
            assert!(g.stats.generated_tokens < 96);
        }
    }
    assert!(eos > 0, "the model never ended its turn within 96 tokens");
}

#[test]
fn greedy_decoding_is_deterministic_without_a_seed() {
    let p = GenerateParams {
        max_tokens: 16,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let (a, _) = run(&ask("Who are you?"), &p);
    let (b, _) = run(&ask("Who are you?"), &p);
    assert_eq!(a.text, b.text);
}

#[test]
fn stats_add_up() {
    let (g, _) = run(&ask("Hello!"), &params(12, 3));
    let s = &g.stats;
    assert!(s.prompt_tokens > 10);
    assert_eq!(s.cached_tokens, 0);
    assert_eq!(s.prefilled_tokens(), s.prompt_tokens);
    assert!(s.generated_tokens >= 1 && s.generated_tokens <= 12);
    assert!(s.time_to_first_token >= s.prefill_time);
    assert!(s.prefill_tokens_per_second() > 0.0);
}

#[test]
fn lines_cut_by_their_budget_end_at_a_sentence_end_and_still_stream_exactly() {
    let mut engine = common::engine();
    let messages = ask("Tell me everything about your village and its people.");
    let (mut cut, mut limited) = (0, 0);
    for seed in 0..8 {
        let whole = GenerateParams {
            whole_sentences: true,
            ..params(20, seed)
        };
        let mut session = engine.new_session();
        let mut streamed = String::new();
        let g = engine
            .chat(&mut session, &messages, &whole, &CancelToken::new(), |d| {
                streamed.push_str(d.text)
            })
            .unwrap();
        assert_eq!(streamed, g.text, "seed {seed}");
        if g.stop_reason == StopReason::MaxTokens {
            cut += 1;
            assert!(ends_sentence(&g.text), "seed {seed}: {:?}", g.text);
        }

        // A sentence limit of one ends after the first sentence.
        let one = GenerateParams {
            max_sentences: Some(1),
            ..params(60, seed)
        };
        let mut session = engine.new_session();
        let g = engine
            .chat(&mut session, &messages, &one, &CancelToken::new(), |_| {})
            .unwrap();
        if g.stop_reason == StopReason::SentenceLimit {
            limited += 1;
            assert!(ends_sentence(&g.text), "seed {seed}: {:?}", g.text);
            let inner = g.text[..g.text.len() - 1].trim_end_matches(['.', '!', '?', '…']);
            assert!(
                !inner.contains(". ") && !inner.contains("! ") && !inner.contains("? "),
                "one sentence: {:?}",
                g.text
            );
        }
    }
    // A 20-token budget cuts most answers to this question; the limit ends most at one.
    assert!(cut > 0 && limited > 0, "cut {cut}, limited {limited}");
}
