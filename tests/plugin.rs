//! The Bevy plugin in headless apps (`MinimalPlugins` + `AssetPlugin`) with the real model.
//!
//! Every test builds its own app over a scratch copy of `assets/`, so tests that rewrite
//! persona files do not disturb each other.

#![cfg(feature = "bevy")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::engine::{Role, SamplingParams};
use bevy_llm_dialogue::plugin::RequestId;
use bevy_llm_dialogue::prelude::*;

/// Everything the plugin sent, in order of arrival.
#[derive(Resource, Default)]
struct Log {
    started: Vec<LineStarted>,
    deltas: Vec<LineDelta>,
    finished: Vec<LineFinished>,
    failed: Vec<LineFailed>,
    loaded: usize,
    model_failed: Vec<String>,
    loading: Vec<f32>,
    /// Entity events seen by a global observer (`LineFinished` on the NPC).
    observed_finished: Vec<(Entity, RequestId)>,
    /// The slowest `app.update()`, to report.
    slowest_update: Duration,
    scene_deltas: Vec<SceneDelta>,
    scenes: Vec<SceneReady>,
    scene_failures: Vec<SceneFailed>,
    actions: Vec<NpcAction>,
}

impl Log {
    fn finished_for(&self, npc: Entity) -> Vec<&LineFinished> {
        self.finished.iter().filter(|l| l.npc == npc).collect()
    }
    fn results_for(&self, npc: Entity) -> usize {
        self.finished.iter().filter(|l| l.npc == npc).count()
            + self.failed.iter().filter(|l| l.npc == npc).count()
    }
}

#[expect(clippy::too_many_arguments, reason = "one reader per message type")]
fn record(
    mut log: ResMut<Log>,
    mut started: MessageReader<LineStarted>,
    mut deltas: MessageReader<LineDelta>,
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
    mut loaded: MessageReader<ModelLoaded>,
    mut model_failed: MessageReader<ModelFailed>,
    mut loading: MessageReader<ModelLoading>,
    mut story: (
        MessageReader<SceneDelta>,
        MessageReader<SceneReady>,
        MessageReader<SceneFailed>,
        MessageReader<NpcAction>,
    ),
) {
    log.scene_deltas.extend(story.0.read().cloned());
    log.scenes.extend(story.1.read().cloned());
    log.scene_failures.extend(story.2.read().cloned());
    log.actions.extend(story.3.read().cloned());
    log.started.extend(started.read().cloned());
    log.deltas.extend(deltas.read().cloned());
    log.finished.extend(finished.read().cloned());
    log.failed.extend(failed.read().cloned());
    log.loaded += loaded.read().count();
    log.model_failed
        .extend(model_failed.read().map(|m| m.error.clone()));
    log.loading.extend(loading.read().map(|m| m.fraction));
}

/// A scratch asset folder holding a copy of the crate's personas and prompts.
fn scratch_assets(test: &str) -> PathBuf {
    let dir = common::scratch_dir(&format!("plugin-assets-{test}"));
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

/// The plugin as tests use it: the real model, short lines, fixed seeds.
fn plugin() -> LlmDialoguePlugin {
    let mut plugin = LlmDialoguePlugin {
        model: Some(common::model_path()),
        ..default()
    };
    plugin.defaults.max_tokens = 24;
    plugin.defaults.sampling = SamplingParams::default().with_seed(7);
    plugin
}

fn app(assets: &Path, plugin: LlmDialoguePlugin) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: assets.display().to_string(),
            watch_for_changes_override: Some(false),
            ..default()
        },
        plugin,
    ))
    .init_resource::<Log>()
    .add_systems(Last, record)
    .add_observer(|line: On<LineFinished>, mut log: ResMut<Log>| {
        log.observed_finished
            .push((line.event_target(), line.request));
    });
    app.finish();
    app.cleanup();
    app
}

/// Runs frames until `done` holds, failing the test after `timeout`.
fn update_until(app: &mut App, timeout: Duration, what: &str, done: impl Fn(&Log) -> bool) {
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
            "timed out waiting for {what}; failed lines: {:?}; model errors: {:?}",
            log.failed
                .iter()
                .map(|f| f.error.to_string())
                .collect::<Vec<_>>(),
            log.model_failed
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs frames for a while, whatever happens.
fn update_for(app: &mut App, time: Duration) {
    let start = Instant::now();
    while start.elapsed() < time {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_npc(app: &mut App, persona: &str) -> Entity {
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load(persona.to_owned());
    app.world_mut().spawn(Npc::new(handle)).id()
}

fn request(app: &mut App, request: RequestLine) {
    app.world_mut().write_message(request);
}

const LONG: Duration = Duration::from_secs(120);

/// After a failed load: `LoadModel` with the real file, then `npc` answers.
fn recover_with_the_real_model(app: &mut App, npc: Entity) {
    app.world_mut().write_message(LoadModel {
        path: common::model_path(),
    });
    update_until(app, LONG, "ModelLoaded", |log| log.loaded == 1);
    request(app, RequestLine::new(npc).saying("Hello now?"));
    update_until(app, LONG, "a line", |log| log.finished.len() == 1);
}

#[test]
fn an_npc_answers_and_its_deltas_concatenate_to_the_finished_line() {
    let mut app = app(&scratch_assets("answers"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira).saying("Hello! Can you fix my sword?"),
    );
    update_until(&mut app, LONG, "Mira's line", |log| {
        log.results_for(mira) > 0
    });

    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let line = log.finished_for(mira)[0];
    assert!(!line.text.is_empty());
    let streamed: String = log
        .deltas
        .iter()
        .filter(|d| d.request == line.request)
        .map(|d| d.text.as_str())
        .collect();
    assert_eq!(streamed, line.text);
    // Mira's persona caps her lines at 60 tokens, over the plugin's default of 24.
    assert!(line.stats.generated_tokens <= 60, "{:?}", line.stats);
    assert_eq!(log.started.len(), 1);
    assert!(log.started[0].prompt.contains("Mira"));
    assert!(log.started[0].prompt.contains("Can you fix my sword?"));
    // The finished line is also an entity event on the NPC.
    assert_eq!(log.observed_finished, vec![(mira, line.request)]);
    // Loading reported progress, ending at 1.
    assert_eq!(log.loading.last(), Some(&1.0));
    assert!(log.loading.windows(2).all(|w| w[0] <= w[1]));
    eprintln!(
        "slowest frame while generating: {:?}; {:.1} tokens/s",
        log.slowest_update,
        line.stats.decode_tokens_per_second()
    );
    // The main thread never waits on inference: even a debug build on a busy 2-core machine
    // updates in milliseconds while the line generates (generously bounded; the real figure
    // is in BENCHMARKS.md).
    assert!(
        log.slowest_update < Duration::from_millis(500),
        "an update took {:?}",
        log.slowest_update
    );

    let text = line.text.clone();
    let world = app.world_mut();
    let history = world.get::<DialogueHistory>(mira).unwrap();
    assert_eq!(history.turns.len(), 2);
    assert_eq!(history.turns[0].role, Role::User);
    assert_eq!(history.turns[1].role, Role::Assistant);
    assert_eq!(history.turns[1].content, text);
    assert!(
        world.get::<Speaking>(mira).is_none(),
        "Speaking is removed at the end"
    );
}

#[test]
fn two_npcs_share_one_model_and_the_second_line_reuses_the_persona_prefix() {
    let mut app = app(&scratch_assets("share"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let other = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(&mut app, RequestLine::new(mira).saying("Good morning."));
    request(&mut app, RequestLine::new(other).saying("Who are you?"));
    update_until(&mut app, LONG, "both lines", |log| log.finished.len() == 2);
    request(
        &mut app,
        RequestLine::new(mira).saying("And what do you sell?"),
    );
    update_until(&mut app, LONG, "Mira's second line", |log| {
        log.finished.len() == 3
    });

    let model = app.world().resource::<DialogueModel>();
    assert_eq!(model.loads, 1, "one model serves every NPC");
    assert!(matches!(model.state, ModelState::Ready(_)));
    assert_eq!(model.status.slots_used, 2);

    let log = app.world().resource::<Log>();
    let lines = log.finished_for(mira);
    let (first, second) = (&lines[0].stats, &lines[1].stats);
    assert_eq!(first.cached_tokens, 0);
    assert!(second.prompt_tokens > first.prompt_tokens);
    // The persona and the first exchange come from the cache; only the new turn is computed.
    assert!(
        second.prefilled_tokens() * 4 < first.prefilled_tokens(),
        "first prefilled {}, second prefilled {} of {}",
        first.prefilled_tokens(),
        second.prefilled_tokens(),
        second.prompt_tokens
    );
}

#[test]
fn cancel_stops_a_line_and_no_result_arrives_afterwards() {
    let mut app = app(&scratch_assets("cancel"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me everything about your life.")
            .max_tokens(200),
    );
    update_until(&mut app, LONG, "the first delta", |log| {
        !log.deltas.is_empty()
    });
    assert!(app.world().get::<Speaking>(mira).is_some());
    app.world_mut().write_message(CancelLine { npc: mira });
    app.update();
    let deltas_at_cancel = app.world().resource::<Log>().deltas.len();
    update_for(&mut app, Duration::from_secs(3));

    let log = app.world().resource::<Log>();
    assert_eq!(log.results_for(mira), 0, "no result for a cancelled line");
    assert_eq!(
        log.deltas.len(),
        deltas_at_cancel,
        "no delta after the cancel"
    );
    assert!(app.world().get::<Speaking>(mira).is_none());
    assert!(
        app.world()
            .get::<DialogueHistory>(mira)
            .unwrap()
            .turns
            .is_empty()
    );

    // The NPC can talk again.
    request(&mut app, RequestLine::new(mira).saying("Sorry. Hello?"));
    update_until(&mut app, LONG, "the next line", |log| {
        log.results_for(mira) == 1
    });
    assert_eq!(app.world().resource::<Log>().finished.len(), 1);
}

#[test]
fn despawning_an_npc_stops_its_line_and_frees_its_slot() {
    let mut app = app(&scratch_assets("despawn"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let other = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(&mut app, RequestLine::new(other).saying("Hi."));
    update_until(&mut app, LONG, "the other NPC's line", |log| {
        log.results_for(other) == 1
    });
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me a long story.")
            .max_tokens(200),
    );
    update_until(&mut app, LONG, "Mira's first delta", |log| {
        log.deltas.iter().any(|d| d.npc == mira)
    });
    app.world_mut().despawn(mira);
    app.update();
    let deltas_at_despawn = app.world().resource::<Log>().deltas.len();
    // A request for the despawned NPC fails at once, naming it.
    request(&mut app, RequestLine::new(mira).saying("Are you there?"));
    update_for(&mut app, Duration::from_secs(3));

    let log = app.world().resource::<Log>();
    assert_eq!(log.finished_for(mira).len(), 0);
    assert_eq!(log.deltas.len(), deltas_at_despawn);
    assert_eq!(log.failed.len(), 1, "{:?}", log.failed);
    assert!(log.failed[0].error.to_string().contains("not an NPC"));
    // Only the other NPC's conversation keeps a cache.
    let status = app.world().resource::<DialogueModel>().status;
    assert_eq!(status.slots_used, 1, "{status:?}");
}

#[test]
fn a_hot_reloaded_persona_changes_the_next_prompt() {
    let assets = scratch_assets("hot-reload");
    let mut app = app(&assets, plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira).saying("What is your name?"),
    );
    update_until(&mut app, LONG, "the first line", |log| {
        log.results_for(mira) == 1
    });
    assert!(
        !app.world().resource::<Log>().started[0]
            .prompt
            .contains("Brannoc")
    );

    let file = assets.join("personas/mira.persona.ron");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"Mira\"", "\"Brannoc\"")).unwrap();
    app.world()
        .resource::<AssetServer>()
        .reload("personas/mira.persona.ron");
    // Wait until the asset holds the new name.
    let start = Instant::now();
    loop {
        app.update();
        let handle = app.world().get::<Npc>(mira).unwrap().persona.clone();
        let personas = app.world().resource::<Assets<Persona>>();
        if personas.get(&handle).is_some_and(|p| p.name == "Brannoc") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the persona did not reload"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    request(
        &mut app,
        RequestLine::new(mira).saying("What is your name again?"),
    );
    update_until(&mut app, LONG, "the second line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert!(
        log.started[1].prompt.contains("You are Brannoc"),
        "{}",
        log.started[1].prompt
    );
}

#[test]
fn a_malformed_persona_fails_its_line_with_the_file_and_the_game_keeps_going() {
    let assets = scratch_assets("malformed");
    std::fs::write(
        assets.join("personas/broken.persona.ron"),
        "(\n    name: \"Broken\",\n    description: \"a typo\",\n    personality: [\"odd\"\n)\n",
    )
    .unwrap();
    std::fs::write(
        assets.join("personas/hot.persona.ron"),
        "(\n    name: \"Hot\",\n    description: \"too hot\",\n    sampling: Some((temperature: -3.0)),\n)\n",
    )
    .unwrap();
    let more = [
        ("nameless", "(\n    description: \"no name\",\n)\n", "name"),
        (
            "typed",
            "(\n    name: \"T\",\n    description: 42,\n)\n",
            "typed.persona.ron:3",
        ),
        (
            "long",
            "(\n    name: \"L\",\n    description: \"d\",\n    max_tokens: Some(1000000000),\n)\n",
            "max_tokens",
        ),
    ];
    for (name, text, _) in &more {
        std::fs::write(assets.join(format!("personas/{name}.persona.ron")), text).unwrap();
    }
    let mut app = app(&assets, plugin());
    let extra: Vec<(Entity, &str)> = more
        .iter()
        .map(|(name, _, needle)| {
            (
                spawn_npc(&mut app, &format!("personas/{name}.persona.ron")),
                *needle,
            )
        })
        .collect();
    for (npc, _) in &extra {
        request(&mut app, RequestLine::new(*npc).saying("Hello?"));
    }
    let broken = spawn_npc(&mut app, "personas/broken.persona.ron");
    let hot = spawn_npc(&mut app, "personas/hot.persona.ron");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(&mut app, RequestLine::new(broken).saying("Hello?"));
    request(&mut app, RequestLine::new(hot).saying("Hello?"));
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "all three results", |log| {
        log.results_for(broken) + log.results_for(hot) + log.results_for(mira) == 3
    });

    let log = app.world().resource::<Log>();
    let error_of = |npc| {
        let failed = log
            .failed
            .iter()
            .find(|f| f.npc == npc)
            .expect("a LineFailed");
        failed.error.to_string()
    };
    let broken_error = error_of(broken);
    assert!(
        broken_error.contains("broken.persona.ron:5"),
        "{broken_error}"
    );
    let hot_error = error_of(hot);
    assert!(hot_error.contains("hot.persona.ron"), "{hot_error}");
    assert!(hot_error.contains("temperature"), "{hot_error}");
    assert_eq!(log.finished_for(mira).len(), 1, "other NPCs are unaffected");
    for (npc, needle) in extra {
        let error = error_of(npc);
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

#[test]
fn a_missing_model_fails_requests_with_how_to_fetch_it_and_does_not_panic() {
    let assets = scratch_assets("missing-model");
    let mut app = app(
        &assets,
        LlmDialoguePlugin {
            model: Some(assets.join("models/nope.gguf")),
            ..plugin()
        },
    );
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "ModelFailed", |log| {
        !log.model_failed.is_empty()
    });
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });

    let log = app.world().resource::<Log>();
    assert!(
        log.model_failed[0].contains("nope.gguf"),
        "{}",
        log.model_failed[0]
    );
    assert!(log.model_failed[0].contains("scripts/fetch-model"));
    assert!(matches!(
        log.failed[0].error,
        DialogueError::ModelUnavailable(_)
    ));
    assert!(
        log.failed[0]
            .error
            .to_string()
            .contains("scripts/fetch-model")
    );
    assert!(matches!(
        app.world().resource::<DialogueModel>().state,
        ModelState::Failed(_)
    ));

    // Loading the right file later recovers.
    recover_with_the_real_model(&mut app, mira);
}

#[test]
fn a_template_error_fails_the_line_and_names_the_variable() {
    let assets = scratch_assets("template-error");
    std::fs::write(
        assets.join("prompts/bad.jinja"),
        "You are {{ persona.name }} and you feel {{ npc.mood }}.",
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let (persona, prompt) = {
        let server = app.world().resource::<AssetServer>();
        (
            server.load("personas/mira.persona.ron"),
            server.load("prompts/bad.jinja"),
        )
    };
    let mira = app
        .world_mut()
        .spawn(Npc::new(persona).with_prompt(prompt))
        .id();
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });
    let error = app.world().resource::<Log>().failed[0].error.to_string();
    assert!(error.contains("bad.jinja"), "{error}");
    assert!(error.contains("mood"), "{error}");

    // With the fact set, the same template works and the prompt carries it.
    app.world_mut()
        .get_mut::<NpcContext>(mira)
        .unwrap()
        .set("mood", "grumpy");
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) == 2);
    let log = app.world().resource::<Log>();
    assert_eq!(log.finished.len(), 1, "{:?}", log.failed);
    assert!(log.started[0].prompt.contains("you feel grumpy"));
}

#[test]
fn a_saved_history_continues_the_conversation_in_a_new_app() {
    let assets = scratch_assets("save-load");
    let saved = {
        let mut app = app(&assets, plugin());
        let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
        app.world_mut()
            .resource_mut::<DialogueContext>()
            .set("player_name", "Ada");
        request(
            &mut app,
            RequestLine::new(mira).saying("My name is Ada. Remember it."),
        );
        update_until(&mut app, LONG, "the first line", |log| {
            log.results_for(mira) == 1
        });
        let history = app.world().get::<DialogueHistory>(mira).unwrap();
        let context = app.world().resource::<DialogueContext>();
        ron::to_string(&(history, context)).unwrap()
    };

    let (history, context): (DialogueHistory, DialogueContext) = ron::from_str(&saved).unwrap();
    assert_eq!(history.turns.len(), 2);
    let mut app = app(&assets, plugin());
    app.insert_resource(context);
    let persona = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mira = app
        .world_mut()
        .spawn((Npc::new(persona), history.clone()))
        .id();
    request(&mut app, RequestLine::new(mira).saying("What is my name?"));
    update_until(&mut app, LONG, "the resumed line", |log| {
        log.results_for(mira) == 1
    });

    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let prompt = &log.started[0].prompt;
    assert!(prompt.contains("My name is Ada. Remember it."));
    assert!(prompt.contains(&history.turns[1].content));
    assert!(prompt.contains("player name: Ada"));
    assert_eq!(
        app.world()
            .get::<DialogueHistory>(mira)
            .unwrap()
            .turns
            .len(),
        4
    );
}

#[test]
fn old_turns_give_way_to_the_context_budget_but_the_persona_stays() {
    let assets = scratch_assets("budget");
    let mut app = app(
        &assets,
        LlmDialoguePlugin {
            n_ctx: Some(512),
            ..plugin()
        },
    );
    let persona = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mut turns = Vec::new();
    for i in 0..20 {
        turns.push(ChatMessage::user(format!(
            "Question number {i}: tell me about the weather today."
        )));
        turns.push(ChatMessage::assistant(format!(
            "Answer number {i}: it is grey and cold, friend."
        )));
    }
    let mira = app
        .world_mut()
        .spawn((Npc::new(persona), DialogueHistory { turns }))
        .id();
    request(&mut app, RequestLine::new(mira).saying("And tomorrow?"));
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) == 1);
    {
        let log = app.world().resource::<Log>();
        assert_eq!(log.finished.len(), 1, "{:?}", log.failed);
        let prompt = &log.started[0].prompt;
        assert!(prompt.contains("You are Mira"), "the persona is pinned");
        assert!(
            prompt.contains("Question number 19"),
            "the newest turns stay"
        );
        assert!(
            !prompt.contains("Question number 0:"),
            "the oldest turns go"
        );
        assert!(log.finished[0].stats.prompt_tokens + 24 <= 512);
    }

    // A player line that cannot fit even alone fails with a clear error.
    let huge = "word ".repeat(1000);
    request(&mut app, RequestLine::new(mira).saying(huge));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert!(
        matches!(
            log.failed[0].error,
            DialogueError::ContextOverflow { n_ctx: 512, .. }
        ),
        "{:?}",
        log.failed[0].error
    );
}

#[test]
fn the_player_conversation_goes_before_background_chatter() {
    let mut app = app(&scratch_assets("priority"), plugin());
    let busy = spawn_npc(&mut app, "personas/mira.persona.ron");
    let background = spawn_npc(&mut app, "personas/mira.persona.ron");
    let player = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(busy)
            .saying("Talk to yourself.")
            .max_tokens(16),
    );
    update_until(&mut app, LONG, "the busy line to start", |log| {
        !log.started.is_empty()
    });
    // Both wait while the worker is busy; the player's goes first although it came second.
    request(
        &mut app,
        RequestLine::new(background)
            .saying("Mutter something.")
            .priority(Priority::Background),
    );
    app.update();
    request(
        &mut app,
        RequestLine::new(player)
            .saying("Hello, I need help!")
            .priority(Priority::Player),
    );
    update_until(&mut app, LONG, "all lines", |log| log.finished.len() == 3);
    let order: Vec<Entity> = app
        .world()
        .resource::<Log>()
        .started
        .iter()
        .map(|s| s.npc)
        .collect();
    assert_eq!(order, vec![busy, player, background]);
}

#[test]
fn a_story_opens_pinned_streams_generated_scenes_refuses_bad_choices_and_resumes_from_a_save() {
    let assets = scratch_assets("story");
    let mut app = app(&assets, plugin());
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load("stories/silver_key.story.ron");
    let story = app.world_mut().spawn(Narrator::new(handle.clone())).id();
    app.world_mut().write_message(RequestScene::new(story));
    update_until(&mut app, LONG, "the opening", |log| log.scenes.len() == 1);
    {
        let log = app.world().resource::<Log>();
        assert!(
            log.scenes[0].request.is_none(),
            "the pinned opening needs no model"
        );
        assert_eq!(log.scenes[0].choices.len(), 3);
    }

    // A choice without a pinned target: the narrator writes the scene, streamed.
    app.world_mut()
        .write_message(ChooseOption { story, index: 0 });
    update_until(&mut app, LONG, "a generated scene", |log| {
        log.scenes.len() == 2 || !log.scene_failures.is_empty()
    });
    {
        let log = app.world().resource::<Log>();
        assert!(log.scene_failures.is_empty(), "{:?}", log.scene_failures);
        let scene = &log.scenes[1];
        assert_eq!(scene.choices.len(), 3);
        assert!(scene.choices.iter().all(|c| !c.is_empty()));
        let streamed: String = log.scene_deltas.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(streamed.trim(), scene.text);
    }

    // An index out of range is refused and changes nothing.
    app.world_mut()
        .write_message(ChooseOption { story, index: 7 });
    update_until(&mut app, LONG, "the refusal", |log| {
        !log.scene_failures.is_empty()
    });
    let error = app.world().resource::<Log>().scene_failures[0]
        .error
        .to_string();
    assert!(error.contains("choice 7 does not exist"), "{error}");

    // Save, and resume in a new app with the same graph.
    let saved = ron::to_string(app.world().get::<Story>(story).unwrap()).unwrap();
    let graph: Story = ron::from_str(&saved).unwrap();
    assert_eq!(graph.nodes.len(), 2);
    assert_eq!(graph.nodes[0].choices[0].next, Some(1));
    drop(app);
    let mut app = self::app(&assets, plugin());
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load("stories/silver_key.story.ron");
    let story = app
        .world_mut()
        .spawn((Narrator::new(handle), graph.clone()))
        .id();
    assert_eq!(app.world().get::<Story>(story).unwrap(), &graph);
    // The resumed story goes on from where it was: the generated scene's second choice.
    app.world_mut()
        .write_message(ChooseOption { story, index: 1 });
    update_until(&mut app, LONG, "the next scene", |log| {
        !log.scenes.is_empty() || !log.scene_failures.is_empty()
    });
    let resumed = app.world().get::<Story>(story).unwrap();
    assert!(app.world().resource::<Log>().scene_failures.is_empty());
    assert_eq!(resumed.nodes.len(), 3);
    // The saved scenes are unchanged except for the link to the new one.
    let mut expected = graph.nodes.clone();
    expected[1].choices[1].next = Some(2);
    assert_eq!(resumed.nodes[..2], expected[..]);
    assert_eq!(resumed.nodes[2].from, Some((1, 1)));
}

#[test]
fn an_npc_acts_only_through_its_declared_actions() {
    let assets = scratch_assets("actions");
    std::fs::write(
        assets.join("personas/guard.persona.ron"),
        r#"(
    name: "Tobin",
    description: "the guard at the ruin's door",
    actions: [
        (name: "open_door", description: "let the player in", args: {"door": OneOf(["north", "cellar"])}),
        (name: "refuse", description: "keep the door shut"),
    ],
)"#,
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    for seed in 0..3 {
        app.world_mut().write_message(
            RequestAction::new(guard)
                .situation("The player shows the silver key and asks to enter.")
                .sampling(SamplingParams::default().with_seed(seed)),
        );
    }
    update_until(&mut app, LONG, "three decisions", |log| {
        log.actions.len() + log.failed.len() == 3
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    for action in &log.actions {
        match action.name.as_str() {
            "open_door" => {
                let door = action.args["door"].as_str().unwrap();
                assert!(door == "north" || door == "cellar", "{door}");
            }
            "refuse" => assert!(action.args.is_empty()),
            other => panic!("undeclared action {other}"),
        }
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_worker_that_panics_mid_line_fails_that_line_restarts_and_serves_the_next() {
    use bevy_llm_dialogue::plugin::InjectWorkerPanic;
    let mut app = app(&scratch_assets("panic"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "the model", |log| log.loaded == 1);
    app.world_mut().write_message(InjectWorkerPanic);
    request(
        &mut app,
        RequestLine::new(mira).saying("Hello?").max_tokens(40),
    );
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });
    {
        let log = app.world().resource::<Log>();
        assert!(
            matches!(log.failed[0].error, DialogueError::WorkerCrashed(_)),
            "{:?}",
            log.failed[0].error
        );
        assert!(
            log.deltas.len() >= 2,
            "it failed mid-line, after some deltas"
        );
    }
    request(&mut app, RequestLine::new(mira).saying("Hello again?"));
    update_until(&mut app, LONG, "the next line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert_eq!(log.finished.len(), 1, "{:?}", log.failed);
    assert_eq!(
        log.loaded, 2,
        "the worker reloaded the model after the crash"
    );
    assert!(app.world().get::<Speaking>(mira).is_none());
}

#[test]
fn broken_model_files_fail_to_load_with_their_names_and_the_game_goes_on() {
    let assets = scratch_assets("bad-files");
    let good = std::fs::read(common::model_path()).unwrap();
    let truncated = assets.join("truncated.gguf");
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    let not_gguf = assets.join("notes.gguf");
    std::fs::write(&not_gguf, "these are my notes, not a model").unwrap();
    let mut app = app(
        &assets,
        LlmDialoguePlugin {
            model: None,
            ..plugin()
        },
    );
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    for (i, path) in [&truncated, &not_gguf].into_iter().enumerate() {
        app.world_mut()
            .write_message(LoadModel { path: path.clone() });
        update_until(&mut app, LONG, "ModelFailed", |log| {
            log.model_failed.len() == i + 1
        });
        let error = app.world().resource::<Log>().model_failed[i].clone();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(error.contains(name), "{error}");
        assert!(error.contains("not a valid GGUF"), "{error}");
    }
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });
    assert!(matches!(
        app.world().resource::<Log>().failed[0].error,
        DialogueError::ModelUnavailable(_)
    ));
    // The game kept running; the real model loads and serves.
    recover_with_the_real_model(&mut app, mira);
}

#[test]
fn a_hundred_kilobytes_of_player_text_fails_cleanly_without_stalling_frames() {
    let mut app = app(&scratch_assets("huge-text"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "the model", |log| log.loaded == 1);
    app.world_mut().resource_mut::<Log>().slowest_update = Duration::ZERO;
    let huge = "The wolves came at night and the village hid. ".repeat(2200);
    assert!(huge.len() > 100_000);
    request(&mut app, RequestLine::new(mira).saying(huge));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });
    let log = app.world().resource::<Log>();
    assert!(
        matches!(log.failed[0].error, DialogueError::ContextOverflow { .. }),
        "{:?}",
        log.failed[0].error
    );
    // Tokenizing 100 KB happens on the worker, not in a frame.
    assert!(
        log.slowest_update < Duration::from_millis(500),
        "{:?}",
        log.slowest_update
    );
    request(&mut app, RequestLine::new(mira).saying("Sorry. Hello?"));
    update_until(&mut app, LONG, "the next line", |log| {
        log.finished.len() == 1
    });
}

#[test]
fn a_persona_reloaded_mid_line_lets_that_line_finish_and_changes_the_next() {
    let assets = scratch_assets("reload-mid-line");
    let mut app = app(&assets, plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me about your forge.")
            .max_tokens(60),
    );
    update_until(&mut app, LONG, "the first delta", |log| {
        !log.deltas.is_empty()
    });
    let file = assets.join("personas/mira.persona.ron");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"Mira\"", "\"Brannoc\"")).unwrap();
    app.world()
        .resource::<AssetServer>()
        .reload("personas/mira.persona.ron");
    update_until(&mut app, LONG, "the first line", |log| {
        log.results_for(mira) == 1
    });
    assert_eq!(
        app.world().resource::<Log>().finished.len(),
        1,
        "the line in flight finishes"
    );
    let start = Instant::now();
    loop {
        app.update();
        let handle = app.world().get::<Npc>(mira).unwrap().persona.clone();
        if app
            .world()
            .resource::<Assets<Persona>>()
            .get(&handle)
            .is_some_and(|p| p.name == "Brannoc")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the persona did not reload"
        );
    }
    request(&mut app, RequestLine::new(mira).saying("Who are you?"));
    update_until(&mut app, LONG, "the second line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert!(log.started[0].prompt.contains("You are Mira"));
    assert!(log.started[1].prompt.contains("You are Brannoc"));
}
