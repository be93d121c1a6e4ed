//! The inference worker without Bevy, with the real default model: jobs, recipes (best-of
//! draws, scenes), batching, priorities, cancels. With `LLM_DIALOGUE_TEST_SERVER` set (as
//! `.ci/run` sets it for its server step), the same jobs also run against that server
//! through the same job server. The helpers here drive the worker for `remote.rs` too.

use crate::common;

use std::time::{Duration, Instant};

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, GenerateParams, Generation, SamplingParams, StopReason, ends_sentence,
};
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Scene, Story, StoryAsset};
use bevy_llm_dialogue::worker::{
    Job, Output, Priority, Report, RequestId, Worker, WorkerConfig, WorkerError,
};
use bevy_llm_dialogue::{score, story};

/// What one job reported.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) started: bool,
    pub(crate) streamed: String,
    pub(crate) deltas: usize,
    pub(crate) result: Option<Result<Vec<Generation>, WorkerError>>,
}

/// A worker with the default model (or the test server), loaded.
fn worker() -> Worker {
    #[cfg_attr(
        not(feature = "remote"),
        expect(unused_mut, reason = "no server without it")
    )]
    let mut config = WorkerConfig::default();
    #[cfg_attr(
        not(feature = "remote"),
        expect(unused_mut, reason = "no server without it")
    )]
    let mut target = common::model_path();
    #[cfg(feature = "remote")]
    if let Some(url) = server() {
        config.remote = Some(bevy_llm_dialogue::remote::RemoteConfig::new(
            url.clone(),
            "smollm2",
        ));
        target = url.into();
    }
    let mut worker = Worker::spawn(config);
    worker.load(target);
    worker
}

fn server() -> Option<String> {
    std::env::var("LLM_DIALOGUE_TEST_SERVER")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Collects reports until every id in `ids` has ended (bounded).
pub(crate) fn run(worker: &Worker, ids: &[u64]) -> std::collections::HashMap<u64, Outcome> {
    let mut outcomes: std::collections::HashMap<u64, Outcome> =
        ids.iter().map(|&id| (id, Outcome::default())).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while outcomes.values().any(|o| o.result.is_none()) {
        assert!(Instant::now() < deadline, "jobs did not end: {outcomes:?}");
        let Some(report) = worker
            .recv_timeout(Duration::from_secs(1))
            .expect("the worker runs")
        else {
            continue;
        };
        match report {
            Report::LoadFailed(why) => panic!("the model failed to load: {why}"),
            Report::Started { id, .. } => {
                outcomes
                    .get_mut(&id.0)
                    .unwrap_or_else(|| {
                        panic!(
                            "a report for job {}, which was not asked for or was cancelled",
                            id.0
                        )
                    })
                    .started = true
            }
            Report::Delta { id, text } => {
                let o = outcomes.get_mut(&id.0).unwrap_or_else(|| {
                    panic!(
                        "a report for job {}, which was not asked for or was cancelled",
                        id.0
                    )
                });
                o.streamed.push_str(&text);
                o.deltas += 1;
            }
            Report::Finished { id, generations } => {
                outcomes
                    .get_mut(&id.0)
                    .unwrap_or_else(|| {
                        panic!(
                            "a report for job {}, which was not asked for or was cancelled",
                            id.0
                        )
                    })
                    .result = Some(Ok(generations));
            }
            Report::Failed { id, error } => {
                outcomes
                    .get_mut(&id.0)
                    .unwrap_or_else(|| {
                        panic!(
                            "a report for job {}, which was not asked for or was cancelled",
                            id.0
                        )
                    })
                    .result = Some(Err(error));
            }
            _ => {}
        }
    }
    outcomes
}

pub(crate) fn params(max_tokens: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    }
}

pub(crate) fn mira() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(
            "You are Mira, the blacksmith of Elmsbrook. Answer in one or two sentences.",
        ),
        ChatMessage::user("Who are you, and what do you make?"),
    ]
}

pub(crate) fn job(
    id: u64,
    slot: u64,
    messages: Vec<ChatMessage>,
    params: GenerateParams,
    output: Output,
) -> Job {
    Job {
        recall: None,
        id: RequestId(id),
        slot,
        messages,
        params,
        priority: Priority::Normal,
        cancel: CancelToken::new(),
        output,
    }
}

pub(crate) fn line(best_of: usize) -> Output {
    Output::Text {
        best_of,
        speaker: "Mira".into(),
    }
}

#[test]
fn best_of_keeps_the_highest_scoring_of_the_same_draws_and_sends_it_whole() {
    if server().is_some() {
        return eprintln!("the draws are compared with the local engine's");
    }
    let mut worker = worker();
    let mut p = params(40, 11);
    p.whole_sentences = true;
    worker.submit(job(1, 1, mira(), p.clone(), line(4)));
    let mut outcomes = run(&worker, &[1]);
    let outcome = outcomes.remove(&1).unwrap();
    let best = outcome.result.unwrap().unwrap().remove(0);
    assert!(outcome.started);
    assert_eq!(
        (outcome.deltas, outcome.streamed.as_str()),
        (1, best.text.as_str())
    );
    // The same seed draws the same alternatives again: the kept one scores highest.
    let mut engine = common::engine();
    let prompt = engine.fit_chat(mira(), p.max_tokens).unwrap();
    let mut session = engine.new_session();
    let draws = engine
        .generate_alternatives(
            &mut session,
            &prompt.tokens,
            &p,
            None,
            4,
            &CancelToken::new(),
            |_, _| {},
        )
        .unwrap();
    let scores: Vec<f64> = draws.iter().map(|g| score::line_score(g, "Mira")).collect();
    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert!(draws.iter().any(|d| d.text == best.text), "{}", best.text);
    assert_eq!(score::line_score(&best, "Mira"), top, "{scores:?}");
    assert!(best.stats.logprob < 0.0, "{:?}", best.stats);
}

fn story_asset() -> StoryAsset {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/stories/silver_key.story.ron"),
    )
    .unwrap();
    StoryAsset::from_ron(&text, "silver_key.story.ron").unwrap()
}

#[test]
fn twelve_seeds_of_scenes_are_prose_then_exactly_the_asked_choices() {
    let mut worker = worker();
    let asset = story_asset();
    // The story after the pinned opening and its first choice.
    let mut story = Story::default();
    let gate = asset.node("gate").unwrap();
    story.push_scene(
        gate.text.clone(),
        gate.choices
            .iter()
            .map(|c| (c.text.clone(), c.goto.clone()))
            .collect(),
        Some("gate".into()),
    );
    story.choose(0).unwrap();
    let messages = PromptTemplate::default_narrator()
        .narrator_messages(&asset, &story, &Facts::new(), &[])
        .unwrap();
    let scene = Output::Scene {
        choices: asset.choices,
        alternatives: 1,
    };
    let seeds: Vec<u64> = (0..12).collect();
    for &seed in &seeds {
        let p = params(asset.max_scene_chars / 4, seed);
        worker.submit(job(seed, 1, messages.clone(), p, scene.clone()));
    }
    let outcomes = run(&worker, &seeds);
    let mut rejected = 0;
    for seed in seeds {
        let outcome = &outcomes[&seed];
        let generations = outcome
            .result
            .clone()
            .unwrap()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let [prose, list] = generations.as_slice() else {
            panic!("seed {seed}: a scene and its list, got {generations:?}")
        };
        // The prose streams exactly, and a scene cut by its budget ends at a sentence end.
        assert_eq!(outcome.streamed, prose.text, "seed {seed}");
        assert!(!prose.text.contains('\n'));
        if prose.stop_reason == StopReason::MaxTokens {
            assert!(ends_sentence(&prose.text), "seed {seed}: {}", prose.text);
        }
        // The grammar: exactly the asked number of lines, each a dash and one to eight words.
        let lines: Vec<&str> = list.text.lines().collect();
        assert_eq!(lines.len(), asset.choices, "seed {seed}: {}", list.text);
        for line in lines {
            let words = line.strip_prefix("- ").expect("a dash").split(' ').count();
            assert!((1..=8).contains(&words), "{line}");
            assert!(line[2..].starts_with(char::is_uppercase), "{line}");
        }
        if Scene::from_prose(&prose.text, &list.text, asset.choices).is_err() {
            rejected += 1;
        }
    }
    eprintln!("{rejected} of 12 scenes would be drawn again");
    // The list is asked for as the next turn after the scene.
    assert!(story::choices_ask(asset.choices).contains(&asset.choices.to_string()));
}

#[test]
fn lines_of_several_conversations_batch_and_a_cancelled_one_reports_nothing() {
    let mut worker = worker();
    let ids: Vec<u64> = (1..=4).collect();
    for &id in &ids {
        worker.submit(job(id, id, mira(), params(16, id), line(1)));
    }
    let cancelled = job(9, 9, mira(), params(16, 9), line(1));
    // Cancelled before the worker can take it: it leaves the queue unseen.
    cancelled.cancel.cancel();
    worker.submit(cancelled);
    let outcomes = run(&worker, &ids);
    for id in ids {
        let outcome = &outcomes[&id];
        let g = &outcome.result.clone().unwrap().unwrap()[0];
        assert!(outcome.started);
        assert_eq!(
            outcome.streamed, g.text,
            "line {id} streams exactly its text"
        );
        assert!(g.stats.generated_tokens <= 16);
    }
    // Nothing about the cancelled job arrives, even once the worker is idle.
    let idle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < idle {
        if let Ok(Some(Report::Started { id, .. } | Report::Finished { id, .. })) =
            worker.recv_timeout(Duration::from_millis(50))
        {
            assert_ne!(id, RequestId(9), "a cancelled job reported");
        }
    }
}

#[test]
fn a_job_without_a_model_fails_with_the_reason() {
    let mut worker = Worker::spawn(WorkerConfig::default());
    worker.load(std::path::PathBuf::from("no/such/model.gguf"));
    worker.submit(job(1, 1, mira(), params(8, 1), line(1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        assert!(Instant::now() < deadline);
        if let Ok(Some(Report::Failed { error, .. })) = worker.recv_timeout(Duration::from_secs(1))
        {
            break error;
        }
    };
    match error {
        WorkerError::ModelUnavailable(why) => assert!(why.contains("model.gguf"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_player_line_takes_the_engine_alone_until_its_first_sentence_is_out() {
    if server().is_some() {
        // A server schedules its own batch.
        return;
    }
    let mut worker = worker();
    let background: Vec<u64> = (1..=4).collect();
    for &id in &background {
        let mut chatter = job(id, id, mira(), params(64, id), line(1));
        chatter.priority = Priority::Background;
        worker.submit(chatter);
    }
    // Every background line is decoding before the player speaks.
    let mut reports = Vec::new();
    let mut talking = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while talking.len() < background.len() {
        assert!(Instant::now() < deadline, "the chatter did not start");
        if let Some(report) = worker.recv_timeout(Duration::from_secs(1)).unwrap() {
            if let Report::Delta { id, .. } = &report {
                talking.insert(id.0);
            }
            reports.push(report);
        }
    }
    let mut player = job(10, 10, mira(), params(48, 10), line(1));
    player.priority = Priority::Player;
    worker.submit(player);
    let mut order = Vec::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ended.len() < background.len() + 1 {
        assert!(Instant::now() < deadline, "the lines did not end");
        let Some(report) = worker.recv_timeout(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        match &report {
            Report::Finished { id, .. } => {
                ended.insert(id.0);
            }
            Report::Failed { id, error } => panic!("line {} failed: {error}", id.0),
            _ => {}
        }
        order.push(report);
    }
    // From the player's start to its first whole sentence, only the player's line moved.
    let start = order
        .iter()
        .position(|r| matches!(r, Report::Started { id, .. } if id.0 == 10))
        .expect("the player's line started");
    let mut split = bevy_llm_dialogue::speech::SentenceSplitter::default();
    let mut first_sentence = None;
    for (at, report) in order.iter().enumerate().skip(start) {
        match report {
            Report::Delta { id, text } if id.0 == 10 && !split.push(text).is_empty() => {
                first_sentence = Some(at);
                break;
            }
            Report::Finished { id, .. } if id.0 == 10 => {
                first_sentence = Some(at);
                break;
            }
            _ => {}
        }
    }
    let first_sentence = first_sentence.expect("the player's line said something");
    let chatter_meanwhile: Vec<&Report> = order[start..first_sentence]
        .iter()
        .filter(|r| matches!(r, Report::Delta { id, .. } if id.0 != 10))
        .collect();
    assert!(
        chatter_meanwhile.is_empty(),
        "background lines moved while the player waited for its first sentence: {chatter_meanwhile:?}"
    );
    // Then the chatter goes on and ends.
    assert!(
        order[first_sentence..]
            .iter()
            .any(|r| matches!(r, Report::Delta { id, .. } if id.0 != 10)),
        "the chatter never resumed"
    );
}
