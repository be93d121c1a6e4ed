//! The remote backend's failures, against a fake server that produces them on demand (the
//! real llama.cpp server runs the rest of the plugin tests in `.ci/run`): the game keeps
//! running, the error names the URL, nothing reaches the history.

use std::sync::atomic::Ordering;

use crate::fake_server::{End, FakeServer, Reply, stream};
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

/// An app on `config` whose guard (one declared action) is asked to decide, run until the
/// decision or its failure arrives.
fn guard_decides(test: &str, config: RemoteConfig) -> App {
    let assets = scratch_assets(test);
    std::fs::write(
        assets.join("personas/guard.persona.ron"),
        r#"(name: "Tobin", description: "a guard", actions: [(name: "refuse", description: "keep the door shut")])"#,
    )
    .unwrap();
    let mut app = app(&assets, remote_plugin(config));
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    app.world_mut().write_message(RequestAction::new(guard));
    update_until(&mut app, LONG, "the decision", |log| {
        !log.actions.is_empty() || !log.action_failures.is_empty()
    });
    app
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
fn a_server_that_is_down_fails_the_model_and_lines_naming_its_url() {
    // Nothing listens on a port a listener just gave back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let (mut app, mira) = app_on("remote_down", config(&url));
    let failed = app.world().resource::<Log>().model_failed.clone();
    assert!(
        failed[0].contains(&format!("127.0.0.1:{port}")) && failed[0].contains("cannot be reached"),
        "{failed:?}"
    );
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the refusal", |log| !log.failed.is_empty());
    assert!(
        line_error(&app).contains(&format!("127.0.0.1:{port}")),
        "{}",
        line_error(&app)
    );
    assert_eq!(history_len(&app, mira), 0);
}

#[test]
fn a_refused_key_names_its_variable_and_a_missing_one_too() {
    let server = FakeServer::start(401, |_, _| {
        Reply::Status(401, vec![], r#"{"error":{"message":"bad key"}}"#.into())
    });
    // Cargo sets this variable for every test process: it stands in for a key.
    let (app, _) = app_on(
        "remote_401",
        config(&server.url).with_api_key_env("CARGO_PKG_NAME"),
    );
    let failed = app.world().resource::<Log>().model_failed.clone();
    assert!(
        failed[0].contains("$CARGO_PKG_NAME") && failed[0].contains("(401)"),
        "{failed:?}"
    );

    let (app, _) = app_on(
        "remote_no_key",
        config(&server.url).with_api_key_env("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET"),
    );
    let failed = app.world().resource::<Log>().model_failed.clone();
    assert!(
        failed[0].contains("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET is not set"),
        "{failed:?}"
    );
}

#[test]
fn the_key_is_sent_as_a_bearer_token() {
    let server = FakeServer::start(200, |_, _| stream(&["Yes."]));
    let (mut app, mira) = app_on(
        "remote_key",
        config(&server.url).with_api_key_env("CARGO_PKG_NAME"),
    );
    request(&mut app, RequestLine::new(mira).saying("Key?"));
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) > 0);
    assert_eq!(
        server.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {}", env!("CARGO_PKG_NAME")).as_str())
    );
}

#[test]
fn a_busy_server_is_retried_with_backoff_then_gives_up_with_an_error() {
    // Busy twice (once with Retry-After), then it answers.
    let server = FakeServer::start(200, |n, _| match n {
        0 => Reply::Status(429, vec![("Retry-After", "0".into())], "slow down".into()),
        1 => Reply::Status(503, vec![], "loading".into()),
        _ => stream(&["At last."]),
    });
    let (mut app, mira) = app_on("remote_busy", config(&server.url));
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) > 0);
    assert_eq!(app.world().resource::<Log>().finished[0].text, "At last.");
    assert_eq!(server.requests().len(), 3);

    // Always busy: 1 + retries tries, then the line fails.
    let server = FakeServer::start(200, |_, _| Reply::Status(429, vec![], "no".into()));
    let mut busy = config(&server.url);
    busy.retries = 2;
    let (mut app, mira) = app_on("remote_always_busy", busy);
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the failure", |log| !log.failed.is_empty());
    let error = line_error(&app);
    assert!(error.contains("busy (429) on all 3 tries"), "{error}");
    assert_eq!(server.requests().len(), 3);
    assert_eq!(history_len(&app, mira), 0);
}

#[test]
fn a_stream_cut_mid_line_fails_the_line_and_adds_nothing_to_the_history() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["The forge ".into(), "is ".into()],
        delay: Duration::ZERO,
        end: End::Cut,
    });
    let (mut app, mira) = app_on("remote_cut", config(&server.url));
    request(&mut app, RequestLine::new(mira).saying("Tell me."));
    update_until(&mut app, LONG, "the failure", |log| !log.failed.is_empty());
    let error = line_error(&app);
    assert!(
        error.contains("stopped in the middle of the line"),
        "{error}"
    );
    assert!(error.contains(&server.url), "{error}");
    assert!(app.world().resource::<Log>().finished.is_empty());
    assert_eq!(history_len(&app, mira), 0);
    assert!(app.world().get::<Speaking>(mira).is_none());
}

#[test]
fn malformed_events_fail_the_line_clearly() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["Hm".into()],
        delay: Duration::ZERO,
        end: End::Garbage,
    });
    let (mut app, mira) = app_on("remote_garbage", config(&server.url));
    request(&mut app, RequestLine::new(mira).saying("Tell me."));
    update_until(&mut app, LONG, "the failure", |log| !log.failed.is_empty());
    let error = line_error(&app);
    assert!(error.contains("malformed event"), "{error}");
    assert_eq!(history_len(&app, mira), 0);
}

#[test]
fn errors_inside_the_stream_and_early_endings_fail_the_line_with_the_servers_words() {
    let server = FakeServer::start(200, |n, _| Reply::Stream {
        parts: vec!["Well ".into()],
        delay: Duration::ZERO,
        end: match n {
            0 => End::Error("the request exceeds the available context size"),
            _ => End::Finish("abort"),
        },
    });
    let (mut app, mira) = app_on("remote_stream_errors", config(&server.url));
    request(&mut app, RequestLine::new(mira).saying("Tell me."));
    update_until(&mut app, LONG, "the first failure", |log| {
        !log.failed.is_empty()
    });
    let error = line_error(&app);
    assert!(
        error.contains("exceeds the available context size"),
        "{error}"
    );
    request(&mut app, RequestLine::new(mira).saying("Again."));
    update_until(&mut app, LONG, "the second failure", |log| {
        log.failed.len() == 2
    });
    let error = app.world().resource::<Log>().failed[1].error.to_string();
    assert!(error.contains("ended the line early (`abort`)"), "{error}");
    assert_eq!(history_len(&app, mira), 0);
}

#[test]
fn a_cancel_while_the_server_is_silent_frees_the_npc_at_once() {
    // The first request gets no answer for 30 s; the NPC's next line must not wait for it.
    let server = FakeServer::start(200, |n, _| match n {
        0 => Reply::Silent(Duration::from_secs(30)),
        _ => stream(&["Here."]),
    });
    let mut patient = config(&server.url);
    patient.response_timeout = Duration::from_secs(60);
    let (mut app, mira) = app_on("remote_cancel_silent", patient);
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the request at the server", |_| {
        !server.requests().is_empty()
    });
    app.world_mut().write_message(CancelLine { npc: mira });
    app.update();
    request(&mut app, RequestLine::new(mira).saying("Hello again?"));
    update_until(&mut app, Duration::from_secs(20), "the next line", |log| {
        !log.finished.is_empty()
    });
    let log = app.world().resource::<Log>();
    assert_eq!(log.finished[0].text, "Here.");
    assert!(log.failed.is_empty(), "{:?}", log.failed);
}

#[test]
fn openai_strict_schemas_are_wrapped_and_the_answer_unwrapped() {
    let server = FakeServer::start(200, |_, body| {
        assert_eq!(
            body["response_format"]["json_schema"]["schema"]["type"], "object",
            "an object on top"
        );
        stream(&[r#"{"value": {"action": "refuse", "#, r#""args": {}}}"#])
    });
    let app = guard_decides(
        "remote_openai",
        config(&server.url).with_kind(ServerKind::OpenAi),
    );
    let log = app.world().resource::<Log>();
    assert!(log.action_failures.is_empty(), "{:?}", log.action_failures);
    assert_eq!(log.actions[0].name, "refuse");
}

#[test]
fn a_slow_server_times_out_before_answering_and_mid_stream() {
    let server = FakeServer::start(200, |n, _| match n {
        0 => Reply::Silent(Duration::from_secs(5)),
        _ => Reply::Stream {
            parts: vec!["Well".into()],
            delay: Duration::ZERO,
            end: End::Stall(Duration::from_secs(5)),
        },
    });
    let mut slow = config(&server.url);
    slow.response_timeout = Duration::from_millis(300);
    slow.stall_timeout = Duration::from_millis(300);
    let (mut app, mira) = app_on("remote_slow", slow);
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the first timeout", |log| {
        !log.failed.is_empty()
    });
    let error = line_error(&app);
    assert!(error.contains("timed out before answering"), "{error}");

    request(&mut app, RequestLine::new(mira).saying("Hello again?"));
    update_until(&mut app, LONG, "the second timeout", |log| {
        log.failed.len() == 2
    });
    let log = app.world().resource::<Log>();
    let error = log.failed[1].error.to_string();
    assert!(error.contains("timed out mid-stream"), "{error}");
    assert_eq!(history_len(&app, mira), 0);
    // The game never waited on the server.
    assert!(
        log.slowest_update < Duration::from_millis(500),
        "{:?}",
        log.slowest_update
    );
}

#[test]
fn cancel_closes_the_stream_and_nothing_arrives_afterwards() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: (0..300).map(|i| format!("word{i} ")).collect(),
        delay: Duration::from_millis(10),
        end: End::Done,
    });
    let (mut app, mira) = app_on("remote_cancel", config(&server.url));
    request(
        &mut app,
        RequestLine::new(mira).saying("Talk.").max_tokens(400),
    );
    update_until(&mut app, LONG, "the first delta", |log| {
        !log.deltas.is_empty()
    });
    app.world_mut().write_message(CancelLine { npc: mira });
    app.update();
    let deltas = app.world().resource::<Log>().deltas.len();
    let start = Instant::now();
    while server.hung_up.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < LONG, "the stream was never closed");
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    update_for(&mut app, Duration::from_millis(200));
    let log = app.world().resource::<Log>();
    assert_eq!(log.results_for(mira), 0);
    assert_eq!(log.deltas.len(), deltas, "no delta after the cancel");
    assert_eq!(history_len(&app, mira), 0);
}

#[test]
fn requests_go_out_max_in_flight_at_a_time_and_the_player_goes_out_even_then() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["One. ".into(), "Two. ".into(), "Three.".into()],
        delay: Duration::from_millis(40),
        end: End::Done,
    });
    let mut two = config(&server.url);
    two.max_in_flight = 2;
    let (mut app, first) = app_on("remote_in_flight", two);
    let mut npcs = vec![first];
    npcs.extend((0..3).map(|_| spawn_npc(&mut app, "personas/mira.persona.ron")));
    for (i, &npc) in npcs.iter().enumerate() {
        request(
            &mut app,
            RequestLine::new(npc).saying(format!("Chatter {i}")),
        );
    }
    update_until(&mut app, LONG, "four lines", |log| log.finished.len() == 4);
    assert_eq!(server.most_at_once.load(Ordering::SeqCst), 2);

    // One at a time, but the player's line, sent last, goes out even so.
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["Fine.".into()],
        delay: Duration::from_millis(100),
        end: End::Done,
    });
    let mut one = config(&server.url);
    one.max_in_flight = 1;
    let (mut app, first) = app_on("remote_priority", one);
    let mut npcs = vec![first];
    npcs.extend((0..3).map(|_| spawn_npc(&mut app, "personas/mira.persona.ron")));
    for (i, &npc) in npcs[..3].iter().enumerate() {
        request(
            &mut app,
            RequestLine::new(npc).saying(format!("Chatter {i}")),
        );
    }
    app.update();
    request(
        &mut app,
        RequestLine::new(npcs[3])
            .saying("Player here")
            .priority(Priority::Player),
    );
    update_until(&mut app, LONG, "four lines", |log| log.finished.len() == 4);
    let order: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            let messages = r.body["messages"].as_array().unwrap();
            messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The player's line went out at once, beside the chatter already out, before the
    // queued chatter.
    let player = order.iter().position(|m| m == "Player here").unwrap();
    assert!(player <= 1, "{order:?}");
    assert_eq!(server.most_at_once.load(Ordering::SeqCst), 2, "{order:?}");
}

#[test]
fn a_server_that_cannot_constrain_refuses_actions_instead_of_guessing() {
    let server = FakeServer::start(200, |_, _| stream(&["{\"action\":\"refuse\"}"]));
    let app = guard_decides(
        "remote_text_only",
        config(&server.url).with_kind(ServerKind::TextOnly),
    );
    let failure = &app.world().resource::<Log>().action_failures[0];
    assert!(
        failure
            .error
            .to_string()
            .contains("cannot constrain output"),
        "{failure:?}"
    );
    assert!(
        server.requests().is_empty(),
        "nothing unconstrained was asked"
    );
}
