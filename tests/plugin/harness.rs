//! The one harness of the plugin tests: headless apps over a scratch copy of `assets/`, a log
//! of everything the plugin sent, and bounded waits.
//!
//! Tests run in parallel threads of one binary. Each app holds a shared lock for its life;
//! a test that counts the process's worker threads takes it exclusively
//! ([`exclusive`]), so it sees only its own.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use std::time::{Duration, Instant};

pub use bevy::prelude::*;
pub use bevy_llm_dialogue::prelude::*;
#[cfg(feature = "remote")]
pub use bevy_llm_dialogue::remote::RemoteConfig;

pub use crate::common::{model_path, scratch_dir};

/// Everything the plugin sent, in order of arrival.
#[derive(Resource, Default)]
pub struct Log {
    pub started: Vec<LineStarted>,
    pub deltas: Vec<LineDelta>,
    pub finished: Vec<LineFinished>,
    pub failed: Vec<LineFailed>,
    pub loaded: usize,
    pub model_failed: Vec<String>,
    pub loading: Vec<f32>,
    /// Entity events seen by a global observer (`LineFinished` on the NPC).
    pub observed_finished: Vec<(Entity, RequestId)>,
    /// The slowest `app.update()`, to report.
    pub slowest_update: Duration,
    pub scene_deltas: Vec<SceneDelta>,
    pub scenes: Vec<SceneFinished>,
    pub scene_failures: Vec<SceneFailed>,
    pub actions: Vec<ActionFinished>,
    pub action_failures: Vec<ActionFailed>,
    pub filtered: Vec<LineFiltered>,
    /// Each `LineSentence`, with the frame it arrived in.
    pub sentences: Vec<(usize, LineSentence)>,
    /// The frame each `LineFinished` of `finished` arrived in.
    pub finished_frames: Vec<usize>,
    /// Frames recorded so far.
    pub frames: usize,
    /// What a Yarn dialogue view saw ([`yarn_app`]).
    #[cfg(feature = "yarn")]
    pub yarn: YarnView,
}

impl Log {
    pub fn finished_for(&self, npc: Entity) -> Vec<&LineFinished> {
        self.finished.iter().filter(|l| l.npc == npc).collect()
    }
    /// The text streamed for `request`, its deltas joined.
    pub fn streamed(&self, request: RequestId) -> String {
        self.deltas
            .iter()
            .filter(|d| d.request == request)
            .map(|d| d.text.as_str())
            .collect()
    }
    pub fn results_for(&self, npc: Entity) -> usize {
        self.finished.iter().filter(|l| l.npc == npc).count()
            + self.failed.iter().filter(|l| l.npc == npc).count()
    }
    /// What went wrong so far, for a timeout's message.
    pub fn problems(&self) -> String {
        let failed: Vec<String> = self.failed.iter().map(|f| f.error.to_string()).collect();
        #[cfg_attr(not(feature = "yarn"), expect(unused_mut, reason = "only Yarn adds"))]
        let mut problems = format!(
            "failed lines: {failed:?}; model errors: {:?}",
            self.model_failed
        );
        #[cfg(feature = "yarn")]
        {
            let yarn = &self.yarn;
            let failures: Vec<String> = yarn.failures.iter().map(|f| f.error.to_string()).collect();
            problems += &format!("; Yarn lines {:?}; Yarn failures {failures:?}", yarn.lines);
        }
        problems
    }
}

/// One reader per message the plugin sends.
#[derive(bevy::ecs::system::SystemParam)]
struct Readers<'w, 's> {
    started: MessageReader<'w, 's, LineStarted>,
    deltas: MessageReader<'w, 's, LineDelta>,
    finished: MessageReader<'w, 's, LineFinished>,
    failed: MessageReader<'w, 's, LineFailed>,
    loaded: MessageReader<'w, 's, ModelLoaded>,
    model_failed: MessageReader<'w, 's, ModelFailed>,
    loading: MessageReader<'w, 's, ModelLoading>,
    scene_deltas: MessageReader<'w, 's, SceneDelta>,
    scenes: MessageReader<'w, 's, SceneFinished>,
    scene_failures: MessageReader<'w, 's, SceneFailed>,
    actions: MessageReader<'w, 's, ActionFinished>,
    action_failures: MessageReader<'w, 's, ActionFailed>,
    filtered: MessageReader<'w, 's, LineFiltered>,
    sentences: MessageReader<'w, 's, LineSentence>,
}

fn record(mut log: ResMut<Log>, mut r: Readers) {
    log.started.extend(r.started.read().cloned());
    log.deltas.extend(r.deltas.read().cloned());
    log.frames += 1;
    let frame = log.frames;
    log.finished.extend(r.finished.read().cloned());
    let finished = log.finished.len() - log.finished_frames.len();
    log.finished_frames
        .extend(std::iter::repeat_n(frame, finished));
    log.sentences
        .extend(r.sentences.read().map(|s| (frame, s.clone())));
    log.failed.extend(r.failed.read().cloned());
    log.loaded += r.loaded.read().count();
    log.model_failed
        .extend(r.model_failed.read().map(|m| m.error.clone()));
    log.loading.extend(r.loading.read().map(|m| m.fraction));
    log.scene_deltas.extend(r.scene_deltas.read().cloned());
    log.scenes.extend(r.scenes.read().cloned());
    log.scene_failures.extend(r.scene_failures.read().cloned());
    log.actions.extend(r.actions.read().cloned());
    log.action_failures
        .extend(r.action_failures.read().cloned());
    log.filtered.extend(r.filtered.read().cloned());
}

/// A scratch asset folder holding a copy of the crate's personas and prompts.
pub fn scratch_assets(test: &str) -> PathBuf {
    let dir = scratch_dir(&format!("plugin-assets-{test}"));
    for sub in ["personas", "prompts", "stories"] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join(sub);
        let to = dir.join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// The plugin as tests use it: the real model, short lines, fixed seeds. With
/// `LLM_DIALOGUE_TEST_SERVER` set (a base URL such as `http://127.0.0.1:8088/v1`, as `.ci/run`
/// sets it), the model is the one that server serves: the remote backend runs the tests.
pub fn plugin() -> LlmDialoguePlugin {
    let mut plugin = LlmDialoguePlugin {
        model: Some(model_path()),
        ..default()
    };
    plugin.defaults.max_tokens = 24;
    plugin.defaults.sampling = SamplingParams::default().with_seed(7);
    #[cfg(feature = "remote")]
    if let Some(url) = test_server() {
        plugin.remote = Some(RemoteConfig::new(url, "smollm2"));
    }
    plugin
}

/// The server the plugin tests run against, if any (`LLM_DIALOGUE_TEST_SERVER`).
pub fn test_server() -> Option<String> {
    std::env::var("LLM_DIALOGUE_TEST_SERVER")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Whether this test checks something only the local backend has (prefix caches,
/// batching, the pacer, model files); such a test says so and passes on a server run.
pub fn local_only(what: &str) -> bool {
    let remote = test_server().is_some();
    if remote {
        eprintln!("not run against a server: {what} is the local backend's");
    }
    remote
}

/// The plugin served by `config`'s server, with [`plugin`]'s line settings.
#[cfg(feature = "remote")]
pub fn remote_plugin(config: RemoteConfig) -> LlmDialoguePlugin {
    LlmDialoguePlugin {
        model: None,
        remote: Some(config),
        ..plugin()
    }
}

/// A headless app with the plugin, not yet finished: add plugins, then [`ready`] it.
pub fn base_app(assets: &Path, plugin: LlmDialoguePlugin) -> App {
    // Taken before the plugin is added: adding it starts the worker thread.
    let shared = (!ALONE.get()).then(|| APPS.read().unwrap_or_else(|e| e.into_inner()));
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: assets.display().to_string(),
            watch_for_changes_override: Some(false),
            ..default()
        },
        plugin,
    ));
    if let Some(shared) = shared {
        app.insert_non_send(Shared(shared));
    }
    app
}

/// Finishes building an app, as `App::run` would.
pub fn ready(app: &mut App) {
    app.finish();
    app.cleanup();
}

/// Apps alive in this test binary hold it shared; [`exclusive`] holds it alone.
static APPS: RwLock<()> = RwLock::new(());

/// Held by every app of the harness for its life.
struct Shared(#[expect(dead_code, reason = "held, never read")] RwLockReadGuard<'static, ()>);

thread_local! {
    /// Whether this test thread holds [`APPS`] alone (its own apps then take no share).
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This test alone has apps, until dropped.
pub struct Alone(#[expect(dead_code, reason = "held, never read")] RwLockWriteGuard<'static, ()>);

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(false);
    }
}

/// Waits until no other test has an app, and keeps it so until dropped. It polls rather
/// than queueing as a writer: a queued writer would block a test that opens a second app
/// while its first is alive.
///
/// It gives up after four times [`LONG`]: an app that a failed test leaked would otherwise
/// hang the run instead of failing it (and on two cores a test with twenty NPCs keeps its
/// app for minutes while the others run).
pub fn exclusive() -> Alone {
    let start = Instant::now();
    let guard = loop {
        match APPS.try_write() {
            Ok(guard) => break guard,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                assert!(
                    start.elapsed() < LONG * 4,
                    "another test's app is still alive after {:?} (did a test fail and leak it?)",
                    LONG * 4
                );
                std::thread::sleep(Duration::from_millis(1))
            }
        }
    };
    ALONE.set(true);
    Alone(guard)
}

/// A headless app with the plugin that logs everything it sends.
pub fn app(assets: &Path, plugin: LlmDialoguePlugin) -> App {
    app_with(assets, plugin, |_| {})
}

/// [`app`], with more plugins added by `extra` before it is finished.
pub fn app_with(assets: &Path, plugin: LlmDialoguePlugin, extra: impl FnOnce(&mut App)) -> App {
    let mut app = base_app(assets, plugin);
    extra(&mut app);
    app.init_resource::<Log>()
        .add_systems(Last, record)
        .add_observer(|line: On<LineFinished>, mut log: ResMut<Log>| {
            log.observed_finished
                .push((line.event_target(), line.request));
        });
    ready(&mut app);
    app
}

/// Runs frames until `done` holds, failing the test after `timeout`.
pub fn update_until(app: &mut App, timeout: Duration, what: &str, done: impl Fn(&Log) -> bool) {
    let start = Instant::now();
    loop {
        let frame = Instant::now();
        app.update();
        let took = frame.elapsed();
        let mut log = app.world_mut().resource_mut::<Log>();
        log.slowest_update = log.slowest_update.max(took);
        if done(&log) {
            return;
        }
        let log = app.world().resource::<Log>();
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; {}",
            log.problems()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs frames for a while, whatever happens.
pub fn update_for(app: &mut App, time: Duration) {
    let start = Instant::now();
    while start.elapsed() < time {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn spawn_npc(app: &mut App, persona: &str) -> Entity {
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load(persona.to_owned());
    app.world_mut().spawn(Npc::new(handle)).id()
}

pub fn request(app: &mut App, request: RequestLine) {
    app.world_mut().write_message(request);
}

pub const LONG: Duration = Duration::from_secs(120);

/// After a failed load: `LoadModel` with the real file, then `npc` answers.
pub fn recover_with_the_real_model(app: &mut App, npc: Entity) {
    let (loaded, finished) = {
        let log = app.world().resource::<Log>();
        (log.loaded, log.finished.len())
    };
    app.world_mut()
        .write_message(LoadModel { path: model_path() });
    update_until(app, LONG, "ModelLoaded", |log| log.loaded == loaded + 1);
    request(app, RequestLine::new(npc).saying("Hello now?"));
    update_until(app, LONG, "a line", |log| {
        log.finished.len() == finished + 1
    });
}

#[cfg(feature = "yarn")]
pub use yarn_view::*;

/// Yarn Spinner with the bridge (feature `yarn`): a headless dialogue view that records what
/// it is shown in [`Log::yarn`], continues every line and takes the options it is told to.
#[cfg(feature = "yarn")]
mod yarn_view {
    use bevy::ecs::system::RunSystemOnce;
    use bevy_llm_dialogue::yarn::{
        ChooseGenerated, GeneratedLineDelta, GeneratedLineFinished, GeneratedOptions, YarnBridge,
        YarnBridgeFailed, YarnBridgePlugin,
    };
    use bevy_yarnspinner::events::{DialogueCompleted, PresentLine, PresentOptions};
    use bevy_yarnspinner::prelude::{DialogueRunner, YarnFile, YarnProject, YarnSpinnerPlugin};

    use super::*;

    /// What the dialogue view saw, in order.
    #[derive(Default)]
    pub struct YarnView {
        /// Presented lines: (character, text).
        pub lines: Vec<(Option<String>, String)>,
        pub deltas: String,
        pub finished: Vec<GeneratedLineFinished>,
        pub options: Vec<GeneratedOptions>,
        /// Authored option lists the runner presented, as texts.
        pub authored_options: Vec<Vec<String>>,
        pub failures: Vec<YarnBridgeFailed>,
        pub completed: bool,
    }

    /// Which generated option the view takes (index 0 unless a test inserts another).
    #[derive(Resource)]
    pub struct TakeOption(pub usize);

    /// A headless app with the plugin, Yarn Spinner over `script`, the bridge and a view that
    /// continues every line and takes option [`TakeOption`] of generated options; what it
    /// sees goes to [`Log::yarn`].
    pub fn yarn_app(assets: &Path, plugin: LlmDialoguePlugin, script: &str) -> App {
        let file = YarnFile::new("test.yarn", script);
        let mut app = app_with(assets, plugin, |app| {
            app.add_plugins(YarnSpinnerPlugin::with_yarn_source(file))
                .add_plugins(YarnBridgePlugin);
        });
        app.insert_resource(TakeOption(0))
            .add_observer(
                |line: On<PresentLine>,
                 mut log: ResMut<Log>,
                 mut runners: Query<&mut DialogueRunner>| {
                    let name = line.line.character_name().map(str::to_owned);
                    log.yarn
                        .lines
                        .push((name, line.line.text_without_character_name()));
                    runners
                        .get_mut(line.entity)
                        .unwrap()
                        .continue_in_next_update();
                },
            )
            .add_observer(
                |ev: On<GeneratedOptions>,
                 mut log: ResMut<Log>,
                 take: Res<TakeOption>,
                 mut choose: MessageWriter<ChooseGenerated>| {
                    log.yarn.options.push(ev.clone());
                    if ev.beside {
                        return;
                    }
                    choose.write(ChooseGenerated {
                        runner: ev.runner,
                        index: take.0,
                    });
                },
            )
            .add_observer(
                |ev: On<PresentOptions>,
                 mut log: ResMut<Log>,
                 mut runners: Query<&mut DialogueRunner>| {
                    let texts = ev.options.iter().map(|o| o.line.text.clone()).collect();
                    log.yarn.authored_options.push(texts);
                    // The first option the player may take, as a view would offer it.
                    let first = ev.options.iter().find(|o| o.is_available).unwrap();
                    let mut runner = runners.get_mut(ev.entity).unwrap();
                    runner.select_option(first.id).unwrap();
                },
            )
            .add_observer(|ev: On<GeneratedLineDelta>, mut log: ResMut<Log>| {
                log.yarn.deltas.push_str(&ev.text);
            })
            .add_observer(|ev: On<GeneratedLineFinished>, mut log: ResMut<Log>| {
                log.yarn.finished.push(ev.clone());
            })
            .add_observer(|ev: On<YarnBridgeFailed>, mut log: ResMut<Log>| {
                log.yarn.failures.push(ev.clone());
            })
            .add_observer(|_: On<DialogueCompleted>, mut log: ResMut<Log>| {
                log.yarn.completed = true;
            });
        app
    }

    /// Waits (bounded) for the Yarn project to compile, then spawns a runner with `bridge`
    /// at `node`.
    pub fn start_yarn(app: &mut App, bridge: YarnBridge, node: &str) -> Entity {
        let begin = Instant::now();
        while !app.world().contains_resource::<YarnProject>() {
            assert!(begin.elapsed() < LONG, "the Yarn project did not compile");
            app.update();
        }
        let node = node.to_owned();
        app.world_mut()
            .run_system_once(move |mut commands: Commands, project: Res<YarnProject>| {
                let mut runner = project.create_dialogue_runner(&mut commands);
                runner.start_node(&node);
                commands.spawn((runner, bridge.clone())).id()
            })
            .unwrap()
    }

    /// Writes Tobin, the night guard at the gate (two actions, a disposition), to
    /// `personas/guard.persona.ron`.
    pub fn guard_persona(assets: &Path) {
        std::fs::write(
            assets.join("personas/guard.persona.ron"),
            r#"(
    name: "Tobin",
    description: "the night guard at the gate of Elmsbrook, gruff but fair",
    actions: [
        (name: "open_gate", description: "let the traveller in"),
        (name: "refuse", description: "keep the gate shut"),
    ],
    disposition: Some((moods: ["wary", "friendly", "angry"], affinity: (-5, 5))),
)"#,
        )
        .unwrap();
    }
}
