//! Lines a voice can follow, with the real model: each line arrives as whole sentences
//! (`LineSentence`, message and entity event), in order, the first before the line ends,
//! together exactly the finished line; under content control's rollbacks and its fallback
//! line too.

use bevy_llm_dialogue::content::ContentPolicy;

use crate::harness::*;

/// Entity events seen by an observer: `(npc, request, index)`.
#[derive(Resource, Default)]
struct Observed(Vec<(Entity, RequestId, usize)>);

/// Four Mira NPCs, each asked `question` with its own seed (from `first_seed`); waits for
/// the four lines.
fn four_lines(app: &mut App, question: &str, first_seed: u64, max_tokens: usize) {
    let npcs: Vec<Entity> = (0..4)
        .map(|_| spawn_npc(app, "personas/mira.persona.ron"))
        .collect();
    for (seed, &npc) in (first_seed..).zip(&npcs) {
        request(
            app,
            RequestLine::new(npc)
                .saying(question)
                .sampling(SamplingParams::default().with_seed(seed))
                .max_tokens(max_tokens),
        );
    }
    update_until(app, LONG, "four lines", |log| {
        log.finished.len() + log.failed.len() == npcs.len()
    });
}

/// Checks every finished line against its sentences; returns how many lines sent their first
/// sentence in an earlier frame than their end.
fn check_sentences(log: &Log) -> usize {
    let mut early = 0;
    for (line, &finished_at) in log.finished.iter().zip(&log.finished_frames) {
        let mine: Vec<&(usize, LineSentence)> = log
            .sentences
            .iter()
            .filter(|(_, s)| s.request == line.request)
            .collect();
        let indices: Vec<usize> = mine.iter().map(|(_, s)| s.index).collect();
        assert_eq!(
            indices,
            (0..mine.len()).collect::<Vec<_>>(),
            "in order, none missing"
        );
        let squash = |t: &str| t.split_whitespace().collect::<String>();
        let joined: String = mine.iter().map(|(_, s)| s.text.as_str()).collect();
        assert_eq!(
            squash(&joined),
            squash(&line.text),
            "the sentences are the line: {mine:?} vs {:?}",
            line.text
        );
        if line.text.trim().is_empty() {
            assert!(mine.is_empty());
            continue;
        }
        assert!(!mine.is_empty(), "a line with text sent no sentence");
        for (at, sentence) in &mine {
            assert!(*at <= finished_at, "a sentence after its line finished");
            assert_eq!(sentence.text, sentence.text.trim());
            assert!(!sentence.text.is_empty());
            assert_eq!(sentence.npc, line.npc);
        }
        // Every sentence but the last ended at punctuation.
        for (_, sentence) in &mine[..mine.len() - 1] {
            let last = sentence.text.chars().last().unwrap();
            assert!(
                ".!?…\"'”’)]*".contains(last),
                "cut mid-sentence: {:?}",
                sentence.text
            );
        }
        if mine.len() > 1 && mine[0].0 < finished_at {
            early += 1;
        }
    }
    early
}

#[test]
fn lines_arrive_as_whole_sentences_in_order_and_the_first_before_the_end() {
    let assets = scratch_assets("sentences");
    let mut app = app(&assets, plugin());
    app.init_resource::<Observed>().add_observer(
        |s: On<LineSentence>, mut seen: ResMut<Observed>| {
            seen.0.push((s.event_target(), s.request, s.index));
        },
    );
    four_lines(
        &mut app,
        "Tell me about this town and what you sell. Take your time.",
        1,
        96,
    );
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let early = check_sentences(log);
    assert!(
        early > 0,
        "no line of several sentences sent its first before it ended: {:?}",
        log.sentences
    );
    let observed = &app.world().resource::<Observed>().0;
    let sent: Vec<(Entity, RequestId, usize)> = log
        .sentences
        .iter()
        .map(|(_, s)| (s.npc, s.request, s.index))
        .collect();
    assert_eq!(
        observed, &sent,
        "each sentence is an entity event on its NPC too"
    );
}

#[test]
fn sentences_never_hold_a_word_that_was_taken_back() {
    let assets = scratch_assets("sentences-rollback");
    let mut app = app(&assets, plugin());
    // Common words: lines are taken back and written again, some end in the fallback line.
    let policy = ContentPolicy {
        banned: ["the", "is", "you"].map(String::from).to_vec(),
        ..ContentPolicy::default()
    };
    let filter = policy.filter();
    app.insert_resource(policy);
    four_lines(&mut app, "What is the news in the town today?", 0, 24);
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert!(
        !log.filtered.is_empty(),
        "no word was taken back: the test shows nothing"
    );
    check_sentences(log);
    for (_, sentence) in &log.sentences {
        assert!(
            filter.check(&sentence.text).is_none(),
            "a sentence holds a banned word: {:?}",
            sentence.text
        );
    }
}
