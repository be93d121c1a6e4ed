//! The plugin on the remote backend, against a fake server (`common::fake_server`): a line
//! carries its persona's and request's settings to the server, and a line the server fails
//! leaves no trace while the game keeps running. The client's faults and the worker's jobs
//! on a server are tested without Bevy (`tests/engine/remote.rs`); the real llama.cpp server
//! runs the rest of the plugin tests in `.ci/run`.

use crate::common::fake_server::{End, FakeServer, Reply, stream};
use crate::harness::*;

/// A config for `server` with short timeouts and quick retries.
fn config(url: &str) -> RemoteConfig {
    let mut config = RemoteConfig::new(url, "fake-model");
    config.retry_delay = Duration::from_millis(10);
    config.stall_timeout = Duration::from_millis(500);
    config.response_timeout = Duration::from_secs(2);
    config
}

/// An app on `config` with one NPC, the server reached (or refused).
fn app_on(test: &str, config: RemoteConfig) -> (App, Entity) {
    let mut app = app(&scratch_assets(test), remote_plugin(config));
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    update_until(&mut app, LONG, "the server's answer", |log| {
        log.loaded + log.model_failed.len() > 0
    });
    (app, mira)
}

fn line_error(app: &App) -> String {
    let log = app.world().resource::<Log>();
    log.failed
        .first()
        .map(|f| f.error.to_string())
        .unwrap_or_default()
}

fn history_len(app: &App, npc: Entity) -> usize {
    app.world().get::<DialogueHistory>(npc).unwrap().turns.len()
}

#[test]
fn a_line_streams_from_the_server_with_the_requests_settings() {
    let server = FakeServer::start(200, |_, _| stream(&["Steel ", "needs ", "fire."]));
    let (mut app, mira) = app_on("remote_line", config(&server.url));
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Can you fix my sword?")
            .sampling(SamplingParams::default().with_seed(11)),
    );
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) > 0);

    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let line = log.finished_for(mira)[0];
    assert_eq!(line.text, "Steel needs fire.");
    assert_eq!(log.streamed(line.request), line.text);
    assert_eq!(history_len(&app, mira), 2);
    let state = &app.world().resource::<DialogueModel>().state;
    assert!(matches!(state, ModelState::Ready(info) if info.architecture == "remote"));

    let [sent] = server.requests().try_into().unwrap();
    let body = sent.body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["seed"], 11, "the line's seed passes through");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Mira")
    );
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"], "Can you fix my sword?");
    // Mira's persona caps her lines at 60 tokens.
    assert!(body["max_tokens"].as_u64().unwrap() <= 60);
    assert!(sent.authorization.is_none(), "no key configured, none sent");
}

#[test]
fn a_line_the_server_fails_leaves_no_trace_and_the_game_never_waits() {
    // Silent past the response timeout, then a stream cut mid-line.
    let server = FakeServer::start(200, |n, _| match n {
        0 => Reply::Silent(Duration::from_secs(5)),
        _ => Reply::Stream {
            parts: vec!["The forge ".into(), "is ".into()],
            delay: Duration::ZERO,
            end: End::Cut,
        },
    });
    let mut slow = config(&server.url);
    slow.response_timeout = Duration::from_millis(300);
    let (mut app, mira) = app_on("remote_failures", slow);
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the first failure", |log| {
        !log.failed.is_empty()
    });
    let error = line_error(&app);
    assert!(error.contains("timed out before answering"), "{error}");
    request(&mut app, RequestLine::new(mira).saying("Tell me."));
    update_until(&mut app, LONG, "the second failure", |log| {
        log.failed.len() == 2
    });

    let log = app.world().resource::<Log>();
    let error = log.failed[1].error.to_string();
    assert!(
        error.contains("stopped in the middle of the line") && error.contains(&server.url),
        "{error}"
    );
    assert!(log.failed.iter().all(|f| f.npc == mira));
    assert!(log.finished.is_empty());
    assert_eq!(history_len(&app, mira), 0);
    assert!(app.world().get::<Speaking>(mira).is_none());
    // The game never waited on the server.
    assert!(
        log.slowest_update < Duration::from_millis(500),
        "{:?}",
        log.slowest_update
    );
}
