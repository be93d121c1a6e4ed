//! The player's line first: how long a `Priority::Player` line waits for its first delta and
//! its first sentence on an idle worker, and behind 8 `Background` lines that keep talking,
//! with `LocalConfig::player_first` on (the default: the player's line takes the engine alone
//! until its first sentence is out) and off. Bevy-free: the worker alone.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --no-default-features --example bench_player -- --repeat 5
//! ```
//!
//! One inference thread (as the plugin gives a 2-core machine). Figures are medians of
//! `--repeat` runs, with background lines already decoding (each asks again when it ends);
//! the player's prompt is either new (computed whole) or cached (the same conversation
//! asked again).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, GenerateParams, SamplingParams};
use bevy_llm_dialogue::speech::SentenceSplitter;
use bevy_llm_dialogue::worker::{
    Job, LocalConfig, Output, Priority, Report, RequestId, Worker, WorkerConfig,
};

const MODEL: &str = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn job(id: u64, priority: Priority, who: &str, question: &str, max_tokens: usize) -> Job {
    Job {
        recall: None,
        id: RequestId(id),
        slot: id,
        messages: vec![
            ChatMessage::system(format!(
                "You are {who} in the village of Elmsbrook. Stay in character and answer in \
                 two or three sentences."
            )),
            ChatMessage::user(question),
        ],
        params: GenerateParams {
            max_tokens,
            sampling: SamplingParams::default().with_seed(id),
            ..GenerateParams::default()
        },
        priority,
        cancel: CancelToken::new(),
        output: Output::Text {
            best_of: 1,
            speaker: who.into(),
        },
    }
}

/// Time from submitting the player's line to its first delta and to its first sentence.
/// A background line: an NPC talking to itself, nobody waiting.
fn chatter_line(id: u64) -> Job {
    job(
        id,
        Priority::Background,
        "Tom, an old fisherman",
        "Tell me about the sea.",
        48,
    )
}

/// With `cached`, every run is the same conversation asked the same again (its prompt
/// cached but the last token); without, a new conversation (its prompt computed whole).
fn player_line(
    worker: &mut Worker,
    id: u64,
    cached: bool,
    chatter: &mut u64,
) -> (Duration, Duration) {
    let mut line = job(
        id,
        Priority::Player,
        "Mira, the blacksmith",
        "I need a sword before nightfall. Can you help me?",
        64,
    );
    if cached {
        line.slot = 1;
    }
    worker.submit(line);
    let asked = Instant::now();
    let (mut first_delta, mut split) = (None, SentenceSplitter::default());
    let mut first_sentence = None;
    // Until the line ends: a conversation takes one line at a time.
    loop {
        let report = worker
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker runs")
            .expect("a report within a minute");
        match report {
            Report::Delta { id: got, text } if got.0 == id => {
                let at = asked.elapsed();
                first_delta.get_or_insert(at);
                if first_sentence.is_none() && !split.push(&text).is_empty() {
                    first_sentence = Some(at);
                }
            }
            Report::Finished { id: got, .. } if got.0 == id => {
                let at = asked.elapsed();
                return (first_delta.unwrap_or(at), first_sentence.unwrap_or(at));
            }
            // Chatter that ends asks again: the background never runs dry.
            Report::Finished { id: got, .. } if got.0 >= 100 => {
                *chatter += 1;
                worker.submit(chatter_line(*chatter));
            }
            Report::Failed { id, error } => panic!("line {} failed: {error}", id.0),
            _ => {}
        }
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let mut repeat = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => repeat = args.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    println!(
        "| player's prompt | background lines | player_first | first delta (ms, median) | first sentence (ms, median) |"
    );
    println!("|---|---|---|---|---|");
    for (cached, background, player_first) in [
        (false, 0, true),
        (false, 8, false),
        (false, 8, true),
        (true, 0, true),
        (true, 8, false),
        (true, 8, true),
    ] {
        let mut config = WorkerConfig::default();
        config.local = LocalConfig {
            player_first,
            ..config.local
        };
        config.local.engine.threads = Some(1);
        let mut worker = Worker::spawn(config);
        worker.load(MODEL);
        let mut chatter = 100;
        for _ in 0..background {
            chatter += 1;
            worker.submit(chatter_line(chatter));
        }
        // Let the chatter reach its decoding (and the model load).
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(if background > 0 { 4 } else { 1 }) {
            if let Ok(Some(Report::Finished { id, .. })) =
                worker.recv_timeout(Duration::from_millis(50))
                && id.0 >= 100
            {
                chatter += 1;
                worker.submit(chatter_line(chatter));
            }
        }
        let (mut deltas, mut sentences) = (Vec::new(), Vec::new());
        for run in 0..repeat {
            let (delta, sentence) = player_line(&mut worker, 10 + run as u64, cached, &mut chatter);
            deltas.push(delta);
            sentences.push(sentence);
        }
        println!(
            "| {} | {background} | {player_first} | {:.0} | {:.0} |",
            if cached { "cached" } else { "new" },
            median(deltas),
            median(sentences)
        );
    }
}
