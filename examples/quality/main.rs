//! The narrative-quality suite: what the player reads, measured. Six personas and six story
//! premises of its own (`tests/data/quality/`), several seeds each, through the plugin as a
//! game uses it; the metrics are defined in `metrics.rs` and in `QUALITY.md`.
//!
//! `scripts/fetch-model`, then
//! `cargo run --release --example quality -- "label of this run"`: prints the figures and
//! adds (or replaces) the row `label` in `QUALITY.md`, with a few sample lines and scenes.
//! `QUALITY_BEST_OF=3` runs it with [`DialogueSettings::best_of`] at 3.
//! A benchmark, not a test: nothing here fails on a threshold.

mod metrics;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use bevy_llm_dialogue::prompt::example_echoes;
use serde::Deserialize;

/// `tests/data/quality/suite.ron`.
#[derive(Deserialize)]
struct Suite {
    seeds: Vec<u64>,
    personas: Vec<PersonaProbe>,
    premises: Vec<Premise>,
}

#[derive(Deserialize)]
struct PersonaProbe {
    file: String,
    never_says: Vec<String>,
    probes: Vec<Probe>,
    small_talk: Vec<String>,
}

#[derive(Deserialize)]
struct Probe {
    ask: String,
    expect: Vec<String>,
}

#[derive(Deserialize)]
struct Premise {
    file: String,
    keywords: Vec<String>,
}

/// One line the suite got, with what it was asked.
pub(crate) struct LineSample {
    pub(crate) persona: String,
    pub(crate) asked: String,
    pub(crate) text: String,
    pub(crate) expect: Option<Vec<String>>,
    pub(crate) never_says: Vec<String>,
    pub(crate) seconds: f64,
    pub(crate) first_delta: Option<f64>,
    pub(crate) stop: StopReason,
}

/// One answer to an identity probe, asked of a new NPC.
pub(crate) struct IdentitySample {
    pub(crate) names: Vec<String>,
    pub(crate) text: String,
}

/// What a new NPC is asked about itself.
const IDENTITY_PROBES: &[&str] = &["Hello, who are you?", "Tell me about yourself."];

/// One line's answer: its text, the seconds it took and to its first delta, why it stopped.
struct Answer {
    text: String,
    seconds: f64,
    first_delta: Option<f64>,
    stop: StopReason,
}

/// One generated scene.
pub(crate) struct SceneSample {
    pub(crate) story: String,
    pub(crate) opening: bool,
    pub(crate) text: String,
    pub(crate) choices: Vec<String>,
    pub(crate) keywords: Vec<String>,
    pub(crate) n_choices: usize,
    pub(crate) seconds: f64,
    /// The built-in example's words this story must not echo.
    pub(crate) echoes: Vec<String>,
}

/// Requests that failed, by kind.
#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) lines: Vec<String>,
    pub(crate) scenes: Vec<String>,
}

const WAIT: Duration = Duration::from_secs(300);

fn main() {
    let label = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "unlabelled run".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("tests/data/quality");
    let suite: Suite = ron::from_str(
        &std::fs::read_to_string(data.join("suite.ron")).expect("tests/data/quality/suite.ron"),
    )
    .expect("suite.ron parses");
    let model = root.join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-model first");

    let mut app = headless_app(&data, model);
    if let Some(n) = std::env::var("QUALITY_BEST_OF")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        app.world_mut().resource_mut::<DialogueSettings>().best_of = n;
    }
    wait(&mut app, "the model", |w| {
        w.resource::<DialogueModel>().is_ready()
    });

    let started = Instant::now();
    let mut failures = Failures::default();
    let lines = run_lines(&mut app, &suite, &mut failures);
    let identity = run_identity(&mut app, &suite, &mut failures);
    let scenes = run_scenes(&mut app, &suite, &mut failures);
    eprintln!("suite ran in {:.0} s", started.elapsed().as_secs_f64());

    let row = report::Row::new(&label, &lines, &identity, &scenes, &failures);
    row.print();
    report::write(&root.join("QUALITY.md"), &row, &lines, &scenes);
}

fn headless_app(assets: &Path, model: PathBuf) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: assets.display().to_string(),
            watch_for_changes_override: Some(false),
            ..default()
        },
        LlmDialoguePlugin {
            model: Some(model),
            ..default()
        },
    ));
    app.finish();
    app.cleanup();
    app
}

/// Runs frames until `done`, panicking after [`WAIT`].
fn wait(app: &mut App, what: &str, done: impl Fn(&mut World) -> bool) {
    let start = Instant::now();
    while !done(app.world_mut()) {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        app.update();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sets the seed every request starts from.
fn seed(app: &mut App, seed: u64) {
    app.world_mut()
        .resource_mut::<DialogueSettings>()
        .defaults
        .sampling
        .seed = Some(seed);
}

/// One conversation per persona and seed: small talk, the probes, more small talk.
fn run_lines(app: &mut App, suite: &Suite, failures: &mut Failures) -> Vec<LineSample> {
    let mut samples = Vec::new();
    for persona in &suite.personas {
        let handle: Handle<Persona> = app
            .world()
            .resource::<AssetServer>()
            .load(persona.file.clone());
        for &s in &suite.seeds {
            seed(app, s);
            let npc = app.world_mut().spawn(Npc::new(handle.clone())).id();
            let (first, rest) = persona.small_talk.split_first().expect("small talk");
            let mut turns: Vec<(String, Option<Vec<String>>)> = vec![(first.clone(), None)];
            turns.extend(
                persona
                    .probes
                    .iter()
                    .map(|p| (p.ask.clone(), Some(p.expect.clone()))),
            );
            turns.extend(rest.iter().map(|t| (t.clone(), None)));
            for (asked, expect) in turns {
                let line = match ask(app, npc, &asked) {
                    Ok(line) => line,
                    Err(e) => {
                        failures.lines.push(e);
                        continue;
                    }
                };
                let name = app
                    .world()
                    .resource::<Assets<Persona>>()
                    .get(&handle)
                    .map_or_else(String::new, |p| p.name.clone());
                samples.push(LineSample {
                    persona: name,
                    asked,
                    text: line.text,
                    expect,
                    never_says: persona.never_says.clone(),
                    seconds: line.seconds,
                    first_delta: line.first_delta,
                    stop: line.stop,
                });
            }
            app.world_mut().despawn(npc);
        }
    }
    samples
}

/// Runs frames until a `D` that `done` accepts or an `F` that `failed` accepts arrives;
/// returns it with the seconds it took.
fn first_of<D: Message + Clone, F: Message + Clone>(
    app: &mut App,
    done: impl Fn(&D) -> bool,
    failed: impl Fn(&F) -> bool,
    mut each_frame: impl FnMut(&World),
) -> (Result<D, F>, f64) {
    let start = Instant::now();
    let mut dones = app.world().resource::<Messages<D>>().get_cursor_current();
    let mut fails = app.world().resource::<Messages<F>>().get_cursor_current();
    loop {
        assert!(start.elapsed() < WAIT, "no result");
        app.update();
        let world = app.world();
        each_frame(world);
        let seconds = start.elapsed().as_secs_f64();
        if let Some(f) = fails
            .read(world.resource::<Messages<F>>())
            .find(|f| failed(f))
        {
            return (Err(f.clone()), seconds);
        }
        if let Some(d) = dones
            .read(world.resource::<Messages<D>>())
            .find(|d| done(d))
        {
            return (Ok(d.clone()), seconds);
        }
    }
}

/// One line from `npc`.
fn ask(app: &mut App, npc: Entity, said: &str) -> Result<Answer, String> {
    let start = Instant::now();
    let mut deltas = app
        .world()
        .resource::<Messages<LineDelta>>()
        .get_cursor_current();
    app.world_mut()
        .write_message(RequestLine::new(npc).saying(said));
    let first_delta = std::cell::Cell::new(None);
    let (line, seconds) = first_of::<LineFinished, LineFailed>(
        app,
        |l| l.npc == npc,
        |f| f.npc == npc,
        |world| {
            if first_delta.get().is_none()
                && deltas
                    .read(world.resource::<Messages<LineDelta>>())
                    .any(|d| d.npc == npc)
            {
                first_delta.set(Some(start.elapsed().as_secs_f64()));
            }
        },
    );
    line.map(|l| Answer {
        text: l.text,
        seconds,
        first_delta: first_delta.get(),
        stop: l.stop_reason,
    })
    .map_err(|f| f.error.to_string())
}

/// Each identity probe asked of a new NPC of each persona, once per seed.
fn run_identity(app: &mut App, suite: &Suite, failures: &mut Failures) -> Vec<IdentitySample> {
    let mut samples = Vec::new();
    for persona in &suite.personas {
        let handle: Handle<Persona> = app
            .world()
            .resource::<AssetServer>()
            .load(persona.file.clone());
        for &s in &suite.seeds {
            for probe in IDENTITY_PROBES {
                seed(app, s);
                let npc = app.world_mut().spawn(Npc::new(handle.clone())).id();
                match ask(app, npc, probe) {
                    Ok(answer) => {
                        let names = app
                            .world()
                            .resource::<Assets<Persona>>()
                            .get(&handle)
                            .map(|p| p.names().map(str::to_owned).collect())
                            .unwrap_or_default();
                        samples.push(IdentitySample {
                            names,
                            text: answer.text,
                        });
                    }
                    Err(e) => failures.lines.push(e),
                }
                app.world_mut().despawn(npc);
            }
        }
    }
    samples
}

/// Two generated scenes per premise and seed: the opening (or, after a pinned opening, the
/// scene after its first choice) and the scene after that one's first choice.
fn run_scenes(app: &mut App, suite: &Suite, failures: &mut Failures) -> Vec<SceneSample> {
    let mut samples = Vec::new();
    for premise in &suite.premises {
        let handle: Handle<StoryAsset> = app
            .world()
            .resource::<AssetServer>()
            .load(premise.file.clone());
        for &s in &suite.seeds {
            seed(app, s);
            let story = app.world_mut().spawn(Narrator::new(handle.clone())).id();
            app.world_mut().write_message(RequestScene::new(story));
            let mut generated = 0;
            let mut failed = 0;
            while generated < 2 && failed < 3 {
                let scene = match next_scene(app, story) {
                    Ok(scene) => scene,
                    Err(e) => {
                        // The choice stays taken: asking again retries the scene.
                        failures.scenes.push(e);
                        failed += 1;
                        app.world_mut().write_message(RequestScene::new(story));
                        continue;
                    }
                };
                let asset = app.world().resource::<Assets<StoryAsset>>().get(&handle);
                let n_choices = asset.map_or(3, |a| a.choices);
                let echoes = asset.map(example_echoes).unwrap_or_default();
                if let Some(seconds) = scene.1 {
                    samples.push(SceneSample {
                        story: premise.file.clone(),
                        opening: app
                            .world()
                            .get::<Story>(story)
                            .is_some_and(|s| s.nodes.len() == 1),
                        text: scene.0.text.clone(),
                        choices: scene.0.choices.clone(),
                        keywords: premise.keywords.clone(),
                        n_choices,
                        seconds,
                        echoes,
                    });
                    generated += 1;
                }
                app.world_mut()
                    .write_message(ChooseOption { story, index: 0 });
            }
            app.world_mut().despawn(story);
        }
    }
    samples
}

/// The next scene of `story`, and the seconds it took if it was generated.
fn next_scene(app: &mut App, story: Entity) -> Result<(SceneFinished, Option<f64>), String> {
    let (scene, seconds) = first_of::<SceneFinished, SceneFailed>(
        app,
        |s| s.story == story,
        |f| f.story == story,
        |_| {},
    );
    scene
        .map(|s| {
            let generated = s.request.map(|_| seconds);
            (s, generated)
        })
        .map_err(|f| f.error.to_string())
}
