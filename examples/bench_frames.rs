//! Frame pacing benchmark: a headless app with a fixed per-frame workload, measured idle and
//! then while NPCs (4 unless `--npcs N`) talk without pause. Reports frame-time p50/p99 and
//! their ratios.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --example bench_frames -- --npcs 8 --frame-budget-ms 6
//! ```
//!
//! A frame is one `app.update()`, paced at 60 frames a second as a game would be. The
//! workload (a few milliseconds of arithmetic in an `Update` system) stands in for a game's
//! own systems; the plugin runs with its default thread budget (all cores but one).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;

const FRAME: Duration = Duration::from_micros(16_667);

#[derive(Resource, Default)]
struct Workload(Vec<f32>);

/// The longest pause the pacer asked of the worker.
#[derive(Resource, Default)]
struct PauseSeen(Duration);

fn watch_pause(model: Res<DialogueModel>, mut seen: ResMut<PauseSeen>) {
    seen.0 = seen.0.max(model.pause);
}

/// About 2 ms of floating-point work per frame on this class of machine.
fn game_work(mut work: ResMut<Workload>) {
    if work.0.is_empty() {
        work.0 = (0..200_000).map(|i| i as f32 * 1e-6).collect();
    }
    for _ in 0..8 {
        for v in work.0.iter_mut() {
            *v = (*v * 1.000_001 + 1e-7).sin();
        }
    }
    std::hint::black_box(&work.0);
}

/// Keeps every NPC talking: a new line as soon as the last one ends.
fn keep_talking(
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
    mut requests: MessageWriter<RequestLine>,
    mut lines: ResMut<LinesDone>,
) {
    for line in finished.read() {
        lines.0 += 1;
        requests.write(RequestLine::new(line.npc).saying("Tell me more."));
    }
    if let Some(line) = failed.read().next() {
        panic!("a line failed: {}", line.error);
    }
}

#[derive(Resource, Default)]
struct LinesDone(usize);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run_frames(app: &mut App, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        app.update();
        let took = start.elapsed();
        times.push(took);
        if took < FRAME {
            std::thread::sleep(FRAME - took);
        }
    }
    times.sort();
    times
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n_npcs = 4;
    let mut frame_budget = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--npcs" => {
                n_npcs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--npcs needs a number")
            }
            "--frame-budget-ms" => {
                frame_budget = args
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .map(|ms| Duration::from_secs_f64(ms / 1e3));
                assert!(frame_budget.is_some(), "--frame-budget-ms needs a number");
            }
            "--bench" => {} // cargo bench passes this
            other => panic!("unknown argument {other}"),
        }
    }
    let mut app = App::new();
    let mut plugin = LlmDialoguePlugin::default();
    plugin.defaults.max_tokens = 48;
    app.add_plugins((MinimalPlugins, AssetPlugin::default(), plugin))
        .init_resource::<Workload>()
        .init_resource::<LinesDone>()
        .init_resource::<PauseSeen>()
        .add_systems(Update, (game_work, keep_talking, watch_pause));
    app.finish();
    app.cleanup();
    app.world_mut()
        .resource_mut::<DialogueSettings>()
        .frame_budget = frame_budget;

    // Wait for the model and the personas.
    let npcs: Vec<Entity> = (0..n_npcs)
        .map(|_| {
            let persona = app
                .world()
                .resource::<AssetServer>()
                .load("personas/mira.persona.ron");
            app.world_mut().spawn(Npc::new(persona)).id()
        })
        .collect();
    while !matches!(
        app.world().resource::<DialogueModel>().state,
        ModelState::Ready(_)
    ) {
        if let ModelState::Failed(e) = &app.world().resource::<DialogueModel>().state {
            panic!("{e}");
        }
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }

    let idle = run_frames(&mut app, 300);
    for &npc in &npcs {
        app.world_mut()
            .write_message(RequestLine::new(npc).saying("Hello! What news?"));
    }
    let busy = run_frames(&mut app, 600);
    let lines = app.world().resource::<LinesDone>().0;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (i50, i99) = (percentile(&idle, 0.5), percentile(&idle, 0.99));
    let (b50, b99) = (percentile(&busy, 0.5), percentile(&busy, 0.99));
    let pauses = app.world().resource::<PauseSeen>().0;
    println!(
        "frames: 300 idle, 600 with {n_npcs} NPCs talking ({lines} lines finished meanwhile); \
         frame budget {frame_budget:?}, longest pause {pauses:?}"
    );
    println!("| frame time | idle | {n_npcs} NPCs generating | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| p50 (ms) | {:.2} | {:.2} | {:.2}x |",
        ms(i50),
        ms(b50),
        ms(b50) / ms(i50)
    );
    println!(
        "| p99 (ms) | {:.2} | {:.2} | {:.2}x |",
        ms(i99),
        ms(b99),
        ms(b99) / ms(i99)
    );
    println!(
        "| max (ms) | {:.2} | {:.2} | |",
        ms(*idle.last().unwrap()),
        ms(*busy.last().unwrap())
    );
}
