//! Many generations advanced together ([`Engine::begin`] / [`Engine::step`]) with the real
//! model: each one's text is the text it gets alone, whatever runs beside it and whenever it
//! joins; a cancel ends one line only; a bad request fails alone.

use crate::common;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Decoding, Engine, GenerateParams, Generation, Grammar,
    SamplingParams, StopReason, TokenId,
};

/// Four requests of different lengths and kinds: greedy, sampled with seeds, one constrained.
fn requests(engine: &Engine) -> Vec<(Vec<TokenId>, GenerateParams, Option<Grammar>)> {
    let ask = |system: &str, user: &str| {
        engine
            .chat_tokens(&[ChatMessage::system(system), ChatMessage::user(user)])
            .expect("the template renders")
    };
    let sampled = |seed| GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    };
    let greedy = GenerateParams {
        max_tokens: 20,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    vec![
        (
            ask(
                "You are Mira, the village blacksmith.",
                "Can you fix my sword?",
            ),
            greedy.clone(),
            None,
        ),
        (
            ask(
                "You are Old Tom, a fisherman who has seen every storm on this coast and \
                 distrusts the new harbour master. You speak in short, salty sentences.",
                "What do you think of the harbour master?",
            ),
            sampled(7),
            None,
        ),
        (
            ask(
                "You are a guard at the north gate.",
                "Halt! Who goes there?",
            ),
            sampled(11),
            None,
        ),
        (
            ask("Answer yes or no.", "Is the bridge safe?"),
            GenerateParams {
                max_tokens: 8,
                ..sampled(3)
            },
            Some(Grammar::regex("(yes|no)")),
        ),
    ]
}

fn alone(
    engine: &mut Engine,
    (prompt, params, grammar): &(Vec<TokenId>, GenerateParams, Option<Grammar>),
) -> Generation {
    let mut session = engine.new_session();
    let cancel = CancelToken::new();
    match grammar {
        Some(g) => engine.generate_constrained(&mut session, prompt, params, g, &cancel, |_| {}),
        None => engine.generate(&mut session, prompt, params, &cancel, |_| {}),
    }
    .expect("generation succeeds")
}

fn begin(
    engine: &mut Engine,
    (prompt, params, grammar): &(Vec<TokenId>, GenerateParams, Option<Grammar>),
    cancel: CancelToken,
) -> Decoding {
    let session = engine.new_session();
    engine.begin(session, prompt, params, grammar.as_ref(), cancel)
}

fn same_line(batched: &Generation, solo: &Generation, what: &str) {
    assert_eq!(batched.tokens, solo.tokens, "{what}: tokens differ");
    assert_eq!(batched.text, solo.text, "{what}: text differs");
    assert_eq!(batched.stop_reason, solo.stop_reason, "{what}");
    assert_eq!(
        batched.stats.generated_tokens, solo.stats.generated_tokens,
        "{what}"
    );
}

#[test]
fn batched_lines_equal_the_lines_generated_alone_whenever_they_join() {
    let mut engine = common::engine();
    let requests = requests(&engine);
    let solo: Vec<Generation> = requests.iter().map(|r| alone(&mut engine, r)).collect();
    assert!(
        solo.iter().all(|g| g.stats.generated_tokens > 0),
        "every request generates"
    );

    // All four from the start, and two joining after the first two have generated a few
    // tokens (prompt chunks and single tokens in the same pass).
    for join_after in [0, 5] {
        let mut batch: Vec<Decoding> = requests[..2]
            .iter()
            .map(|r| begin(&mut engine, r, CancelToken::new()))
            .collect();
        let mut streamed = vec![String::new(); requests.len()];
        let mut steps = 0;
        while batch.iter().any(|d| !d.is_finished()) || batch.len() < requests.len() {
            if steps == join_after && batch.len() < requests.len() {
                for r in &requests[2..] {
                    batch.push(begin(&mut engine, r, CancelToken::new()));
                }
            }
            engine
                .step(&mut batch, |i, d| streamed[i].push_str(d.text))
                .expect("the step runs");
            steps += 1;
            assert!(steps < 200, "the batch never finished");
        }
        for (i, (d, solo)) in batch.into_iter().zip(&solo).enumerate() {
            let (session, g) = d.finish();
            let g = g.expect("generation succeeds");
            let what = format!("request {i}, others joining after {join_after} steps");
            same_line(&g, solo, &what);
            assert_eq!(streamed[i], g.text, "{what}: the stream is the text");
            // Every sampled token but the last was fed back (the last ended the line).
            let cached = session.cached_tokens();
            assert!(
                cached.starts_with(&requests[i].0),
                "{what}: the session holds the prompt"
            );
            assert!(
                cached.len() + 1 >= requests[i].0.len() + g.tokens.len(),
                "{what}: the session holds the line"
            );
        }
    }
}

#[test]
fn a_cancel_in_the_middle_of_a_batch_ends_only_that_line() {
    let mut engine = common::engine();
    let requests = requests(&engine);
    let solo: Vec<Generation> = requests[..3]
        .iter()
        .map(|r| alone(&mut engine, r))
        .collect();
    let cancels: Vec<CancelToken> = (0..3).map(|_| CancelToken::new()).collect();
    let mut batch: Vec<Decoding> = requests[..3]
        .iter()
        .zip(&cancels)
        .map(|(r, c)| begin(&mut engine, r, c.clone()))
        .collect();
    let mut steps = 0;
    while batch.iter().any(|d| !d.is_finished()) {
        if batch[1].generated_tokens() == 4 {
            cancels[1].cancel();
        }
        engine.step(&mut batch, |_, _| {}).expect("the step runs");
        steps += 1;
        assert!(steps < 200, "the batch never finished");
    }
    let results: Vec<Generation> = batch
        .into_iter()
        .map(|d| d.finish().1.expect("generation succeeds"))
        .collect();
    assert_eq!(results[1].stop_reason, StopReason::Cancelled);
    assert_eq!(
        results[1].tokens,
        solo[1].tokens[..4],
        "the cancelled line stops where it was"
    );
    same_line(&results[0], &solo[0], "the line before the cancelled one");
    same_line(&results[2], &solo[2], "the line after the cancelled one");
}

#[test]
fn a_bad_request_fails_alone_and_sessions_reuse_their_prefix_in_a_batch() {
    let mut engine = common::engine();
    let requests = requests(&engine);
    let bad = GenerateParams {
        max_tokens: 0,
        ..GenerateParams::default()
    };
    let mut batch = vec![
        begin(&mut engine, &requests[0], CancelToken::new()),
        engine.begin(
            engine.new_session(),
            &requests[1].0,
            &bad,
            None,
            CancelToken::new(),
        ),
    ];
    assert!(
        batch[1].is_finished(),
        "a bad request ends before any compute"
    );
    while batch.iter().any(|d| !d.is_finished()) {
        engine.step(&mut batch, |_, _| {}).expect("the step runs");
    }
    let mut results = batch.into_iter().map(Decoding::finish);
    let (session, first) = results.next().unwrap();
    let first = first.expect("the good request is not hurt by the bad one");
    assert!(first.stats.generated_tokens > 0);
    let (_, second) = results.next().unwrap();
    assert!(second.is_err(), "max_tokens 0 is refused");

    // The same conversation, a turn later, in a batch with a fresh one: the persona and the
    // first exchange come from the cache.
    let mut messages = vec![
        ChatMessage::system("You are Mira, the village blacksmith."),
        ChatMessage::user("Can you fix my sword?"),
    ];
    messages.push(ChatMessage::assistant(first.text.clone()));
    messages.push(ChatMessage::user("How much will it cost?"));
    let next = engine.chat_tokens(&messages).unwrap();
    let mut batch = vec![
        engine.begin(session, &next, &requests[0].1, None, CancelToken::new()),
        begin(&mut engine, &requests[2], CancelToken::new()),
    ];
    while batch.iter().any(|d| !d.is_finished()) {
        engine.step(&mut batch, |_, _| {}).expect("the step runs");
    }
    let stats: Vec<_> = batch
        .into_iter()
        .map(|d| d.finish().1.unwrap().stats)
        .collect();
    assert!(
        stats[0].cached_tokens > 10,
        "the second turn reuses the first: {} cached",
        stats[0].cached_tokens
    );
    assert_eq!(
        stats[1].cached_tokens, 0,
        "a fresh session has nothing cached"
    );
}
