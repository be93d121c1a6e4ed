//! The model and the worker: missing and broken files, a worker that panics, huge input.

use crate::harness::*;

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

#[cfg(feature = "fault-injection")]
#[test]
fn a_worker_that_panics_mid_line_fails_that_line_restarts_and_serves_the_next() {
    use bevy_llm_dialogue::plugin::InjectWorkerPanic;
    let assets = scratch_assets("panic");
    // Three tokens in, the text streamed so far is what this test counts; a content policy
    // would hold the newest word back, and the identity guard a line's first capitalized
    // words.
    let mira_file = assets.join("personas/mira.persona.ron");
    let unguarded = std::fs::read_to_string(&mira_file).unwrap().replacen(
        "(",
        "(\n    identity_guard: false,",
        1,
    );
    std::fs::write(&mira_file, unguarded).unwrap();
    let mut app = app(&assets, plugin());
    app.insert_resource(bevy_llm_dialogue::content::ContentPolicy::off());
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

#[cfg(feature = "fault-injection")]
#[test]
fn a_worker_that_panics_three_times_in_a_row_gives_up_on_the_model() {
    use bevy_llm_dialogue::plugin::InjectWorkerPanic;
    let mut app = app(&scratch_assets("panic-budget"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "the model", |log| log.loaded == 1);
    for i in 1..=3 {
        app.world_mut().write_message(InjectWorkerPanic);
        request(
            &mut app,
            RequestLine::new(mira).saying("Hello?").max_tokens(40),
        );
        update_until(&mut app, LONG, "the failed line", |log| {
            log.results_for(mira) == i
        });
    }
    update_until(&mut app, LONG, "ModelFailed", |log| {
        !log.model_failed.is_empty()
    });
    let log = app.world().resource::<Log>();
    assert!(
        log.model_failed[0].contains("3 times in a row"),
        "{:?}",
        log.model_failed
    );
    assert_eq!(log.loaded, 3, "reloaded after the first two crashes only");
    // A new LoadModel starts over.
    recover_with_the_real_model(&mut app, mira);
}

#[test]
fn broken_model_files_fail_to_load_with_their_names_and_the_game_goes_on() {
    let assets = scratch_assets("bad-files");
    let good = std::fs::read(model_path()).unwrap();
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
fn a_hundred_kilobytes_of_player_text_is_refused_without_stalling_frames() {
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
        matches!(&log.failed[0].error, DialogueError::InvalidRequest(m) if m.contains("2048")),
        "{:?}",
        log.failed[0].error
    );
    // Refused by its length before any rendering or tokenizing.
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
fn model_ready_gates_systems_and_public_state_is_reflected() {
    #[derive(Resource, Default)]
    struct Greeted(u32);
    let mut app = base_app(&scratch_assets("ready"), plugin());
    app.init_resource::<Greeted>().add_systems(
        Update,
        (|mut greeted: ResMut<Greeted>| greeted.0 += 1).run_if(model_ready),
    );
    ready(&mut app);
    app.update();
    assert_eq!(
        app.world().resource::<Greeted>().0,
        0,
        "not before the model"
    );
    let start = Instant::now();
    while !app.world().resource::<DialogueModel>().is_ready() {
        assert!(start.elapsed() < LONG, "the model did not load");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    app.update();
    assert!(app.world().resource::<Greeted>().0 >= 1, "once it is ready");

    // Inspectors and scenes see the plugin's components and resources.
    let registry = app.world().resource::<AppTypeRegistry>().read();
    let types = [
        ("Npc", std::any::TypeId::of::<Npc>()),
        ("DialogueHistory", std::any::TypeId::of::<DialogueHistory>()),
        ("NpcContext", std::any::TypeId::of::<NpcContext>()),
        ("LineSettings", std::any::TypeId::of::<LineSettings>()),
        ("Speaking", std::any::TypeId::of::<Speaking>()),
        ("Narrator", std::any::TypeId::of::<Narrator>()),
        ("Narrating", std::any::TypeId::of::<Narrating>()),
        ("Story", std::any::TypeId::of::<Story>()),
        ("DialogueContext", std::any::TypeId::of::<DialogueContext>()),
        (
            "DialogueSettings",
            std::any::TypeId::of::<DialogueSettings>(),
        ),
        ("DialogueModel", std::any::TypeId::of::<DialogueModel>()),
    ];
    for (name, id) in types {
        let registration = registry
            .get(id)
            .unwrap_or_else(|| panic!("{name} is not registered"));
        let reflects = registration.data::<ReflectComponent>().is_some()
            || registration.data::<ReflectResource>().is_some();
        assert!(reflects, "{name} reflects as a component or resource");
    }
    // Result messages are registered too (debug tools and replays see them).
    let messages = [
        ("LineStarted", std::any::TypeId::of::<LineStarted>()),
        ("LineFinished", std::any::TypeId::of::<LineFinished>()),
        ("SceneFinished", std::any::TypeId::of::<SceneFinished>()),
        ("ActionFinished", std::any::TypeId::of::<ActionFinished>()),
        ("ModelLoaded", std::any::TypeId::of::<ModelLoaded>()),
    ];
    for (name, id) in messages {
        assert!(registry.get(id).is_some(), "{name} is not registered");
    }
}

#[test]
fn a_model_file_that_makes_the_loader_panic_fails_once_and_does_not_restart_forever() {
    // `general.alignment = 0` made candle divide by zero: the worker thread died, restarted
    // and loaded the same file again, forever.
    let assets = scratch_assets("loader-panic");
    let hostile = assets.join("alignment_zero.gguf");
    std::fs::write(&hostile, crate::common::gguf_writer::alignment_zero()).unwrap();
    let mut app = app(
        &assets,
        LlmDialoguePlugin {
            model: None,
            ..plugin()
        },
    );
    app.world_mut().write_message(LoadModel { path: hostile });
    update_until(&mut app, LONG, "ModelFailed", |log| {
        !log.model_failed.is_empty()
    });
    update_for(&mut app, Duration::from_millis(300));
    let log = app.world().resource::<Log>();
    assert_eq!(log.model_failed.len(), 1, "{:?}", log.model_failed);
    assert!(
        log.model_failed[0].contains("not a valid GGUF"),
        "{:?}",
        log.model_failed
    );
    assert!(matches!(
        app.world().resource::<DialogueModel>().state,
        ModelState::Failed(_)
    ));
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    recover_with_the_real_model(&mut app, mira);
}

#[test]
fn more_than_eight_lines_for_one_npc_fail_with_queue_full_and_the_rest_are_answered() {
    let mut app = app(&scratch_assets("flood"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "the model", |log| log.loaded == 1);
    for i in 0..12 {
        request(
            &mut app,
            RequestLine::new(mira)
                .saying(format!("Question {i}?"))
                .max_tokens(4),
        );
    }
    update_until(&mut app, LONG, "twelve results", |log| {
        log.results_for(mira) == 12
    });
    let log = app.world().resource::<Log>();
    let full: Vec<_> = log
        .failed
        .iter()
        .filter(|f| matches!(f.error, DialogueError::QueueFull(_)))
        .collect();
    assert_eq!(
        full.len(),
        12 - bevy_llm_dialogue::plugin::MAX_PENDING_PER_ENTITY,
        "{:?}",
        log.failed
    );
    assert_eq!(
        log.finished.len(),
        bevy_llm_dialogue::plugin::MAX_PENDING_PER_ENTITY,
        "{:?}",
        log.failed
    );
    assert!(
        full[0].error.to_string().contains("limit"),
        "{}",
        full[0].error
    );
}

/// The scheduling policy (`/proc/.../sched`) of every thread of this process whose name
/// starts with one of `names`.
#[cfg(target_os = "linux")]
fn policies_of(names: &[&str]) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !names.iter().any(|n| comm.starts_with(n)) {
            continue;
        }
        let sched = std::fs::read_to_string(task.path().join("sched")).unwrap_or_default();
        let policy = sched
            .lines()
            .find(|l| l.starts_with("policy"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|p| p.trim().parse().ok());
        if let Some(policy) = policy {
            found.push((comm.to_owned(), policy));
        }
    }
    found
}

#[cfg(target_os = "linux")]
#[test]
fn the_inference_threads_run_at_the_idle_priority_by_default_and_normal_when_asked() {
    const SCHED_IDLE: u32 = 5;
    let names = ["llm-inference", "llm-dialogue-wo"];
    // The plugin's default: every inference and worker thread of this test binary (the
    // other tests' apps use it too) runs at SCHED_IDLE once it has started.
    let app = app(&scratch_assets("priority-idle"), plugin());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = policies_of(&names);
        let inference = seen
            .iter()
            .filter(|(n, _)| n.starts_with("llm-inference"))
            .count();
        if inference > 0 && seen.iter().all(|&(_, p)| p == SCHED_IDLE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads not at SCHED_IDLE: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(app);
    // The worker alone, asked for Normal: its threads keep the normal policy (0).
    let mut config = bevy_llm_dialogue::worker::WorkerConfig::default();
    config.local.engine.priority = InferencePriority::Normal;
    config.local.engine.threads = Some(1);
    let mut worker = bevy_llm_dialogue::worker::Worker::spawn(config);
    worker.load(model_path());
    let loaded = Instant::now() + Duration::from_secs(60);
    loop {
        match worker.recv_timeout(Duration::from_secs(1)).unwrap() {
            Some(bevy_llm_dialogue::worker::Report::Loaded(_)) => break,
            Some(bevy_llm_dialogue::worker::Report::LoadFailed(e)) => panic!("{e}"),
            _ => assert!(Instant::now() < loaded, "the model did not load"),
        }
    }
    // Its pool thread exists now; at least one inference thread is at the normal policy.
    let seen = policies_of(&["llm-inference"]);
    assert!(
        seen.iter().any(|&(_, p)| p == 0),
        "no inference thread at the normal policy: {seen:?}"
    );
}
