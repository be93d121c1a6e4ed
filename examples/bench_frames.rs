//! Frame pacing benchmark: a headless app with a fixed per-frame workload, measured idle and
//! then while NPCs (4 unless `--npcs N`) talk without pause. Reports frame-time p50/p99, their
//! ratios, frames over 16.7 ms and the model's throughput meanwhile.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --example bench_frames -- --npcs 8 --workload-ms 12 --priority idle
//! ```
//!
//! A frame is one `app.update()`, paced at 60 frames a second as a game would be. The
//! workload (arithmetic in an `Update` system: about 4.5 ms here unless `--workload-ms`, a
//! fixed amount of work calibrated before the model loads) stands in for a game's own
//! systems; the plugin runs with its default thread budget (all cores but one) at
//! `--priority` (`idle`, the plugin's default; `low`; `normal`).
//!
//! `BENCH_FRAMES_TRACE=1` prints every frame's time and the time of the plugin's receive
//! (`PreUpdate`) and dispatch (`PostUpdate`) sets in it.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;

const FRAME: Duration = Duration::from_micros(16_667);

#[derive(Resource, Default)]
struct Workload {
    data: Vec<f32>,
    /// Passes over `data` each frame.
    passes: usize,
    /// How long this frame's passes took.
    took: Duration,
}

impl Workload {
    fn new(passes: usize) -> Self {
        Self {
            data: (0..200_000).map(|i| i as f32 * 1e-6).collect(),
            passes,
            took: Duration::ZERO,
        }
    }

    fn run(&mut self) {
        for _ in 0..self.passes {
            for v in self.data.iter_mut() {
                *v = (*v * 1.000_001 + 1e-7).sin();
            }
        }
        std::hint::black_box(&self.data);
    }

    /// The passes that take `target` on this machine (the median of a few tries, after a
    /// warm-up).
    fn calibrated(target: Duration) -> Self {
        let mut one = Self::new(1);
        let mut passes: Vec<Duration> = (0..40)
            .map(|_| {
                let start = Instant::now();
                one.run();
                start.elapsed()
            })
            .skip(10)
            .collect();
        passes.sort();
        let pass = passes[passes.len() / 2];
        Self::new((target.as_secs_f64() / pass.as_secs_f64()).round().max(1.0) as usize)
    }
}

/// The longest pause the pacer asked of the worker.
#[derive(Resource, Default)]
struct PauseSeen(Duration);

fn watch_pause(model: Res<DialogueModel>, mut seen: ResMut<PauseSeen>) {
    seen.0 = seen.0.max(model.pause);
}

/// How long the plugin's own systems took this frame: `(receive, dispatch)` sets.
#[derive(Resource, Default)]
struct PluginTime {
    mark: Option<Instant>,
    receive: Duration,
    dispatch: Duration,
}

fn mark(mut t: ResMut<PluginTime>) {
    t.mark = Some(Instant::now());
}
fn receive_done(mut t: ResMut<PluginTime>) {
    t.receive = t.mark.map_or(Duration::ZERO, |m| m.elapsed());
}
fn dispatch_done(mut t: ResMut<PluginTime>) {
    t.dispatch = t.mark.map_or(Duration::ZERO, |m| m.elapsed());
}

/// The game's own work for the frame.
fn game_work(mut work: ResMut<Workload>) {
    let start = Instant::now();
    work.run();
    work.took = start.elapsed();
}

/// Keeps every NPC talking: a new line as soon as the last one ends.
fn keep_talking(
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
    mut sentences: MessageReader<LineSentence>,
    mut requests: MessageWriter<RequestLine>,
    mut lines: ResMut<LinesDone>,
    mut voice: ResMut<FirstSentence>,
) {
    for sentence in sentences.read().filter(|s| s.index == 0) {
        if let Some(asked) = voice.asked.remove(&sentence.npc) {
            voice.waits.push(asked.elapsed());
        }
    }
    for line in finished.read() {
        voice.asked.insert(line.npc, Instant::now());
        lines.0 += 1;
        lines.1 +=
            line.stats.generated_tokens + line.stats.prompt_tokens - line.stats.cached_tokens;
        requests.write(RequestLine::new(line.npc).saying("Tell me more."));
    }
    if let Some(line) = failed.read().next() {
        panic!("a line failed: {}", line.error);
    }
}

/// When each NPC's pending request was written (in the frame its last line finished), and
/// the time from a request to its line's first `LineSentence`.
#[derive(Resource, Default)]
struct FirstSentence {
    asked: std::collections::HashMap<Entity, Instant>,
    waits: Vec<Duration>,
}

/// Lines finished, and the tokens they computed (prompt and generated).
#[derive(Resource, Default)]
struct LinesDone(usize, usize);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Frame times, sorted; and the same frames' time outside the workload, sorted.
fn run_frames(app: &mut App, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut times = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        app.update();
        let took = start.elapsed();
        times.push(took);
        rest.push(took.saturating_sub(app.world().resource::<Workload>().took));
        let t = app.world().resource::<PluginTime>();
        if std::env::var_os("BENCH_FRAMES_TRACE").is_some() {
            println!(
                "frame {:.2} ms: workload {:.2}, receive {:.2}, dispatch {:.2}",
                took.as_secs_f64() * 1e3,
                app.world().resource::<Workload>().took.as_secs_f64() * 1e3,
                t.receive.as_secs_f64() * 1e3,
                t.dispatch.as_secs_f64() * 1e3
            );
        }
        if took < FRAME {
            std::thread::sleep(FRAME - took);
        }
    }
    times.sort();
    rest.sort();
    (times, rest)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n_npcs = 4;
    let mut frame_budget = None;
    let mut workload = None;
    let mut priority = InferencePriority::Idle;
    let mut busy_frames = 600;
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
            "--workload-ms" => {
                workload = args
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .map(|ms| Duration::from_secs_f64(ms / 1e3));
                assert!(workload.is_some(), "--workload-ms needs a number");
            }
            "--frames" => {
                busy_frames = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--frames needs a number")
            }
            "--priority" => {
                priority = match args.next().as_deref() {
                    Some("idle") => InferencePriority::Idle,
                    Some("low") => InferencePriority::Low,
                    Some("normal") => InferencePriority::Normal,
                    other => panic!("--priority takes idle, low or normal, not {other:?}"),
                }
            }
            "--bench" => {} // cargo bench passes this
            other => panic!("unknown argument {other}"),
        }
    }
    let work = workload.map_or_else(|| Workload::new(8), Workload::calibrated);
    let mut app = App::new();
    let mut plugin = LlmDialoguePlugin::default();
    plugin.defaults.max_tokens = 48;
    plugin.inference_priority = priority;
    app.add_plugins((MinimalPlugins, AssetPlugin::default(), plugin))
        .insert_resource(work)
        .init_resource::<LinesDone>()
        .init_resource::<FirstSentence>()
        .init_resource::<PauseSeen>()
        .init_resource::<PluginTime>()
        .add_systems(
            PreUpdate,
            (
                mark.before(DialogueSystems::Receive),
                receive_done.after(DialogueSystems::Receive),
            ),
        )
        .add_systems(
            PostUpdate,
            (
                mark.before(DialogueSystems::Dispatch),
                dispatch_done.after(DialogueSystems::Dispatch),
            ),
        )
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

    // Two seconds for what starts with the app (the content filter's warm-up, asset loads).
    run_frames(&mut app, 120);
    let (idle, idle_rest) = run_frames(&mut app, busy_frames);
    for &npc in &npcs {
        app.world_mut()
            .write_message(RequestLine::new(npc).saying("Hello! What news?"));
        let now = Instant::now();
        app.world_mut()
            .resource_mut::<FirstSentence>()
            .asked
            .insert(npc, now);
    }
    let busy_start = Instant::now();
    let (busy, busy_rest) = run_frames(&mut app, busy_frames);
    let busy_time = busy_start.elapsed().as_secs_f64();
    let LinesDone(lines, tokens) = *app.world().resource::<LinesDone>();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (i50, i99) = (percentile(&idle, 0.5), percentile(&idle, 0.99));
    let (b50, b99) = (percentile(&busy, 0.5), percentile(&busy, 0.99));
    let pauses = app.world().resource::<PauseSeen>().0;
    let over = |times: &[Duration]| times.iter().filter(|&&t| t > FRAME).count();
    println!(
        "frames: {busy_frames} idle, {busy_frames} with {n_npcs} NPCs talking ({lines} lines finished \
         meanwhile, {:.1} tokens/s computed); priority {priority:?}, workload {} passes, \
         frame budget {frame_budget:?}, longest pause {pauses:?}",
        tokens as f64 / busy_time,
        app.world().resource::<Workload>().passes,
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
    println!(
        "| p99 outside the workload (ms) | {:.2} | {:.2} | {:.2}x |",
        ms(percentile(&idle_rest, 0.99)),
        ms(percentile(&busy_rest, 0.99)),
        ms(percentile(&busy_rest, 0.99)) / ms(percentile(&idle_rest, 0.99))
    );
    println!(
        "| frames over 16.7 ms | {} of {} | {} of {} | |",
        over(&idle),
        idle.len(),
        over(&busy),
        busy.len()
    );
    let mut waits = app.world().resource::<FirstSentence>().waits.clone();
    waits.sort();
    if !waits.is_empty() {
        println!(
            "request to first sentence: median {:.0} ms, p90 {:.0} ms over {} lines",
            ms(percentile(&waits, 0.5)),
            ms(percentile(&waits, 0.9)),
            waits.len()
        );
    }
}
