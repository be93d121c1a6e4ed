//! Remote backend benchmark: the same lines through the plugin on the local model and on an
//! inference server serving the same file, and the plugin's cost per streamed token.
//!
//! ```text
//! scripts/llama-server --threads 1 &        # llama.cpp's server on 127.0.0.1:8088
//! cargo run --release --example bench_remote -- --server http://127.0.0.1:8088/v1 --threads 1
//! ```
//!
//! Each backend answers `--lines` lines (default 6), one at a time, each from a fresh NPC
//! (Mira's persona) with a fixed seed: time to first token is from writing the `RequestLine`
//! to the first `LineDelta` the game sees, tokens per second are the line's generated tokens
//! over the time from its first delta to `LineFinished`. The overhead row streams 2,000
//! one-word parts from a local stand-in server as fast as it can write them, once through
//! `RemoteClient` alone and once through the plugin (HTTP, SSE parsing, the worker channel,
//! messages): the difference per part is what the plugin adds to each streamed token.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../tests/common/fake_server.rs"]
#[allow(
    dead_code,
    reason = "the tests' stand-in server; the benchmark uses part of it"
)]
mod fake_server;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, GenerateParams};
use bevy_llm_dialogue::prelude::*;
use bevy_llm_dialogue::remote::{ChatRequest, RemoteClient, RemoteConfig};

/// What one backend measured.
struct Figures {
    ttft: Vec<Duration>,
    tokens: usize,
    streaming: Duration,
}

impl Figures {
    fn median_ttft_ms(&self) -> f64 {
        let mut t = self.ttft.clone();
        t.sort();
        t.get(t.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.streaming.as_secs_f64().max(1e-9)
    }
}

const QUESTIONS: [&str; 6] = [
    "Can you fix my sword?",
    "What do you sell?",
    "Have you seen a stranger in the village?",
    "How long have you worked the forge?",
    "Where does the old forest road lead?",
    "Do you know anything about the tower?",
];

fn app_with(plugin: LlmDialoguePlugin) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, AssetPlugin::default(), plugin));
    app.finish();
    app.cleanup();
    let start = Instant::now();
    while !matches!(
        app.world().resource::<DialogueModel>().state,
        ModelState::Ready(_) | ModelState::Failed(_)
    ) {
        app.update();
        assert!(start.elapsed() < Duration::from_secs(120), "no model");
    }
    if let ModelState::Failed(e) = &app.world().resource::<DialogueModel>().state {
        panic!("{e}");
    }
    app
}

/// Asks `lines` lines one at a time, each of a fresh NPC, and times them.
fn measure(app: &mut App, lines: usize, max_tokens: usize) -> Figures {
    let persona: Handle<Persona> = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mut figures = Figures {
        ttft: Vec::new(),
        tokens: 0,
        streaming: Duration::ZERO,
    };
    for i in 0..lines {
        let npc = app.world_mut().spawn(Npc::new(persona.clone())).id();
        app.world_mut().write_message(
            RequestLine::new(npc)
                .saying(QUESTIONS[i % QUESTIONS.len()])
                .max_tokens(max_tokens)
                .sampling(SamplingParams::default().with_seed(i as u64)),
        );
        let asked = Instant::now();
        let mut first = None;
        loop {
            app.update();
            let world = app.world_mut();
            // Every frame's deltas are drained, so none is left over for the next line.
            let mine = world
                .resource_mut::<Messages<LineDelta>>()
                .drain()
                .filter(|d| d.npc == npc)
                .count();
            if first.is_none() && mine > 0 {
                first = Some(Instant::now());
            }
            if let Some(failed) = world.resource_mut::<Messages<LineFailed>>().drain().next() {
                panic!("a line failed: {}", failed.error);
            }
            let finished: Vec<LineFinished> = world
                .resource_mut::<Messages<LineFinished>>()
                .drain()
                .filter(|l| l.npc == npc)
                .collect();
            if let Some(line) = finished.into_iter().next() {
                let first = first.unwrap_or_else(Instant::now);
                figures.ttft.push(first - asked);
                figures.tokens += line.stats.generated_tokens;
                figures.streaming += first.elapsed();
                eprintln!(
                    "line {i}: first token after {:?}, {} tokens in {:?} ({:?})",
                    first - asked,
                    line.stats.generated_tokens,
                    first.elapsed(),
                    line.stop_reason
                );
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(300),
                "a line took 5 minutes"
            );
        }
    }
    figures
}

/// Microseconds per streamed part: through `RemoteClient` alone, and through the plugin.
fn overhead(parts: usize) -> (f64, f64) {
    let words: Vec<String> = (0..parts).map(|i| format!("w{i} ")).collect();
    let server = fake_server::FakeServer::start(200, move |_, _| fake_server::Reply::Stream {
        parts: words.clone(),
        delay: Duration::ZERO,
        end: fake_server::End::Done,
    });
    let config = RemoteConfig::new(&server.url, "stand-in");
    let client = RemoteClient::new(config.clone()).expect("a client");
    let messages = [ChatMessage::user("Go.")];
    let params = GenerateParams {
        max_tokens: parts * 2,
        ..GenerateParams::default()
    };
    let mut best_alone = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let line = client
            .chat(
                &ChatRequest {
                    messages: &messages,
                    params: &params,
                    schema: None,
                    logprobs: false,
                },
                &CancelToken::new(),
                |_| {},
            )
            .expect("a stream");
        assert!(line.stats.generated_tokens >= parts);
        best_alone = best_alone.min(start.elapsed().as_secs_f64() * 1e6 / parts as f64);
    }
    let mut plugin = LlmDialoguePlugin {
        model: None,
        remote: Some(config),
        ..default()
    };
    plugin.defaults.max_tokens = parts * 2;
    plugin.defaults.max_sentences = None;
    plugin.defaults.whole_sentences = false;
    let mut app = app_with(plugin);
    let persona: Handle<Persona> = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mut best_plugin = f64::MAX;
    for _ in 0..3 {
        let npc = app.world_mut().spawn(Npc::new(persona.clone())).id();
        app.world_mut()
            .write_message(RequestLine::new(npc).saying("Go.").max_tokens(parts * 2));
        let start = Instant::now();
        let mut deltas = 0;
        loop {
            app.update();
            let world = app.world_mut();
            deltas += world
                .resource_mut::<Messages<LineDelta>>()
                .drain()
                .filter(|d| d.npc == npc)
                .count();
            if world
                .resource_mut::<Messages<LineFinished>>()
                .drain()
                .any(|l| l.npc == npc)
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60));
        }
        assert!(deltas > 0);
        best_plugin = best_plugin.min(start.elapsed().as_secs_f64() * 1e6 / parts as f64);
    }
    (best_alone, best_plugin)
}

fn main() {
    let mut server = None;
    let mut threads = 1;
    let mut lines = 6;
    let mut max_tokens = 48;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match arg.as_str() {
            "--server" => server = Some(value()),
            "--threads" => threads = value().parse().expect("a number"),
            "--lines" => lines = value().parse().expect("a number"),
            "--max-tokens" => max_tokens = value().parse().expect("a number"),
            other => panic!("unknown argument {other}"),
        }
    }

    let (alone, through_plugin) = overhead(2000);
    println!(
        "streamed part: {alone:.1} us through RemoteClient alone, {through_plugin:.1} us through the plugin (+{:.1} us)",
        through_plugin - alone
    );
    let Some(url) = server else {
        println!("no --server: local and remote lines not compared");
        return;
    };

    let mut local = LlmDialoguePlugin {
        inference_threads: Some(threads),
        ..default()
    };
    local.defaults.max_sentences = None;
    local.defaults.whole_sentences = false;
    let mut remote = LlmDialoguePlugin {
        model: None,
        remote: Some(RemoteConfig::new(url.clone(), "smollm2")),
        ..local.clone()
    };
    remote.defaults = local.defaults.clone();
    let ours = measure(&mut app_with(local), lines, max_tokens);
    let theirs = measure(&mut app_with(remote), lines, max_tokens);
    println!("| backend | time to first token (median) | tokens/s |");
    println!("|---|---|---|");
    for (name, f) in [("local", &ours), (url.as_str(), &theirs)] {
        println!(
            "| {name} | {:.0} ms | {:.1} |",
            f.median_ttft_ms(),
            f.tokens_per_second()
        );
    }
    println!(
        "remote / local: time to first token {:.2}x, tokens/s {:.2}x ({lines} lines of up to {max_tokens} tokens, {threads} thread(s) each)",
        theirs.median_ttft_ms() / ours.median_ttft_ms(),
        theirs.tokens_per_second() / ours.tokens_per_second()
    );
}
