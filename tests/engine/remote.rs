//! The remote backend without Bevy, against a fake server on 127.0.0.1 that answers as told
//! and produces the faults a real server cannot on demand (`common::fake_server`): the
//! client's errors name the URL, and lines, best-of draws, scenes, structured outputs,
//! cancels and the in-flight limit go through the worker's job server as local jobs do. The
//! real llama.cpp server runs the worker's and the plugin's tests in `.ci/run`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bevy_llm_dialogue::action::{ActionSpec, action_schema};
use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, GenerateParams, Generation, Grammar, StopReason,
};
use bevy_llm_dialogue::remote::{ChatRequest, RemoteClient, RemoteConfig, RemoteError, ServerKind};
use bevy_llm_dialogue::story;
use bevy_llm_dialogue::worker::{
    Output, Priority, Report, RequestId, Worker, WorkerConfig, WorkerError,
};

use crate::common::fake_server::{End, FakeServer, Reply, stream};
use crate::worker::{job, line, mira, params, run};

/// A config for the server at `url` with short timeouts and quick retries.
pub(crate) fn config(url: &str) -> RemoteConfig {
    let mut config = RemoteConfig::new(url, "fake-model");
    config.retry_delay = Duration::from_millis(10);
    config.stall_timeout = Duration::from_millis(500);
    config.response_timeout = Duration::from_secs(2);
    config
}

/// One line from `config`'s server: the result and the text streamed meanwhile.
pub(crate) fn chat(config: RemoteConfig) -> (Result<Generation, RemoteError>, String) {
    let client = RemoteClient::new(config).expect("the config is valid");
    let mut shown = String::new();
    let result = client.chat(
        &ChatRequest {
            messages: &mira(),
            params: &GenerateParams::default(),
            schema: None,
            logprobs: false,
        },
        &CancelToken::new(),
        |t| shown.push_str(t),
    );
    (result, shown)
}

/// The error of a line that must fail.
pub(crate) fn chat_error(config: RemoteConfig) -> String {
    match chat(config) {
        (Err(e), _) => e.to_string(),
        (Ok(g), _) => panic!("the line should have failed, got {:?}", g.text),
    }
}

/// A worker serving every job from `config`'s server.
pub(crate) fn worker_on(config: RemoteConfig) -> Worker {
    let url = config.base_url.clone();
    let mut worker = Worker::spawn(WorkerConfig {
        remote: Some(config),
        ..Default::default()
    });
    worker.load(url);
    worker
}

/// The last message of each request the server received, in order of arrival.
fn last_messages(server: &FakeServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| {
            let messages = r.body["messages"].as_array().unwrap();
            messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Waits (bounded) until the server has received a chat request.
pub(crate) fn first_request(server: &FakeServer) {
    let begin = Instant::now();
    while server.requests().is_empty() {
        assert!(
            begin.elapsed() < Duration::from_secs(60),
            "no request reached the server"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reports until `done` holds, failing after `timeout`.
pub(crate) fn reports_until(
    worker: &Worker,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Report) -> bool,
) -> Vec<Report> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {seen:?}"
        );
        if let Some(report) = worker
            .recv_timeout(Duration::from_millis(50))
            .expect("the worker runs")
        {
            let end = done(&report);
            seen.push(report);
            if end {
                return seen;
            }
        }
    }
}

/// The id a report is about, if any.
pub(crate) fn about(report: &Report) -> Option<RequestId> {
    match report {
        Report::Started { id, .. }
        | Report::Delta { id, .. }
        | Report::Finished { id, .. }
        | Report::Failed { id, .. } => Some(*id),
        _ => None,
    }
}

// The client alone: what each fault becomes.

#[test]
fn a_refused_key_names_its_variable_and_a_missing_one_too() {
    // `GET /models` is refused; connecting asks nothing else.
    let server = FakeServer::start(401, |_, _| stream(&["Never asked."]));
    // Cargo sets this variable for every test process: it stands in for a key.
    let client = RemoteClient::new(config(&server.url).with_api_key_env("CARGO_PKG_NAME")).unwrap();
    let error = client.connect().unwrap_err().to_string();
    assert!(
        error.contains("$CARGO_PKG_NAME") && error.contains("(401)") && error.contains(&server.url),
        "{error}"
    );
    assert!(server.requests().is_empty());

    let missing = config(&server.url).with_api_key_env("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET");
    let error = RemoteClient::new(missing).unwrap_err().to_string();
    assert!(
        error.contains("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET is not set"),
        "{error}"
    );
}

#[test]
fn the_key_is_sent_as_a_bearer_token() {
    let server = FakeServer::start(200, |_, _| stream(&["Yes."]));
    let (line, _) = chat(config(&server.url).with_api_key_env("CARGO_PKG_NAME"));
    assert_eq!(line.unwrap().text, "Yes.");
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
    let (line, shown) = chat(config(&server.url));
    assert_eq!(line.unwrap().text, "At last.");
    assert_eq!(shown, "At last.");
    assert_eq!(server.requests().len(), 3);

    // Always busy: 1 + retries tries, then the line fails.
    let server = FakeServer::start(200, |_, _| Reply::Status(429, vec![], "no".into()));
    let mut busy = config(&server.url);
    busy.retries = 2;
    let error = chat_error(busy);
    assert!(error.contains("busy (429) on all 3 tries"), "{error}");
    assert!(error.contains(&server.url), "{error}");
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_stream_cut_mid_line_fails_the_line_naming_the_url() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["The forge ".into(), "is ".into()],
        delay: Duration::ZERO,
        end: End::Cut,
    });
    let error = chat_error(config(&server.url));
    assert!(
        error.contains("stopped in the middle of the line"),
        "{error}"
    );
    assert!(error.contains(&server.url), "{error}");
}

#[test]
fn malformed_events_fail_the_line_clearly() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["Hm".into()],
        delay: Duration::ZERO,
        end: End::Garbage,
    });
    let error = chat_error(config(&server.url));
    assert!(error.contains("malformed event"), "{error}");
    assert!(error.contains(&server.url), "{error}");
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
    let error = chat_error(config(&server.url));
    assert!(
        error.contains("exceeds the available context size"),
        "{error}"
    );
    let error = chat_error(config(&server.url));
    assert!(error.contains("ended the line early (`abort`)"), "{error}");
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
    // The caller waits for its timeout, not for the server.
    let begin = Instant::now();
    let error = chat_error(slow.clone());
    assert!(error.contains("timed out before answering"), "{error}");
    let error = chat_error(slow);
    assert!(error.contains("timed out mid-stream"), "{error}");
    assert!(
        begin.elapsed() < Duration::from_secs(4),
        "{:?}: the caller waited for the server",
        begin.elapsed()
    );
}

// Through the worker's job server, as the plugin's jobs go.

#[test]
fn a_server_that_is_down_fails_the_load_and_jobs_naming_its_url() {
    // Nothing listens on a port a listener just gave back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut worker = worker_on(config(&format!("http://127.0.0.1:{port}/v1")));
    worker.submit(job(1, 1, mira(), params(16, 1), line(1)));
    let mut load_failed = None;
    let seen = reports_until(&worker, Duration::from_secs(60), "the job", |r| {
        if let Report::LoadFailed(why) = r {
            load_failed = Some(why.clone());
        }
        about(r) == Some(RequestId(1)) && matches!(r, Report::Failed { .. })
    });
    let why = load_failed.expect("the load failed first");
    assert!(
        why.contains(&format!("127.0.0.1:{port}")) && why.contains("cannot be reached"),
        "{why}"
    );
    match seen.last() {
        Some(Report::Failed {
            error: WorkerError::ModelUnavailable(reason),
            ..
        }) => assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_streams_exactly_its_final_text() {
    let server = FakeServer::start(200, |_, _| stream(&["Steel ", "needs ", "fire."]));
    let mut worker = worker_on(config(&server.url));
    worker.submit(job(1, 1, mira(), params(24, 11), line(1)));
    let outcome = run(&worker, &[1]).remove(&1).unwrap();
    let generations = outcome.result.unwrap().unwrap();
    let [line] = generations.as_slice() else {
        panic!("one line, got {generations:?}")
    };
    assert!(outcome.started);
    assert_eq!(line.text, "Steel needs fire.");
    assert_eq!(outcome.streamed, line.text, "the deltas add up to the line");
    assert!(outcome.deltas > 1, "streamed as it arrives, not sent whole");
    assert_eq!(line.stop_reason, StopReason::Eos);

    let [sent] = server.requests().try_into().unwrap();
    let body = sent.body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["seed"], 11, "the job's seed passes through");
    assert_eq!(body["max_tokens"], 24);
    assert!(body.get("logprobs").is_none(), "one draw ranks nothing");
    assert!(body.get("response_format").is_none());
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], mira()[1].content);
    assert!(sent.authorization.is_none(), "no key configured, none sent");
}

#[test]
fn best_of_three_asks_three_times_and_sends_the_chosen_line_whole() {
    // Answers by the draw's seed (20, 21, 22), whatever order the requests arrive in: only
    // the second draw has no flaw (the others leak AI talk, or trail off and rename Mira).
    let server = FakeServer::start(200, |_, body| match body["seed"].as_u64() {
        Some(20) => stream(&["As an AI ", "language model, ", "I forge."]),
        Some(21) => stream(&["Steel ", "needs ", "fire."]),
        _ => stream(&["My name is ", "Zephyre and"]),
    });
    let mut worker = worker_on(config(&server.url));
    worker.submit(job(1, 1, mira(), params(24, 20), line(3)));
    let outcome = run(&worker, &[1]).remove(&1).unwrap();
    let generations = outcome.result.unwrap().unwrap();
    let [best] = generations.as_slice() else {
        panic!("the chosen line alone, got {generations:?}")
    };
    assert_eq!(best.text, "Steel needs fire.");
    assert_eq!(
        (outcome.deltas, outcome.streamed.as_str()),
        (1, best.text.as_str()),
        "sent whole, once chosen"
    );

    let requests = server.requests();
    let mut seeds: Vec<u64> = requests
        .iter()
        .map(|r| r.body["seed"].as_u64().unwrap())
        .collect();
    seeds.sort_unstable();
    assert_eq!(seeds, [20, 21, 22], "three draws, consecutive seeds");
    for r in &requests {
        assert_eq!(
            r.body["logprobs"], true,
            "draws are ranked by log-probability"
        );
        assert_eq!(r.body["messages"], requests[0].body["messages"]);
    }
}

#[test]
fn a_scene_is_prose_then_a_choice_list_asked_by_json_schema() {
    let server = FakeServer::start(200, |n, _| match n {
        0 => stream(&["The ferry waits ", "in the fog. ", "A bell rings once."]),
        _ => stream(&[
            r#"["Open the door", "#,
            r#""Ask the ferryman", "Walk away"]"#,
        ]),
    });
    let mut worker = worker_on(config(&server.url));
    let scene = Output::Scene {
        choices: 3,
        alternatives: 1,
    };
    let messages = vec![
        ChatMessage::system("You narrate a story at a river crossing."),
        ChatMessage::user("Begin the story."),
    ];
    worker.submit(job(1, 1, messages.clone(), params(60, 3), scene));
    let outcome = run(&worker, &[1]).remove(&1).unwrap();
    let generations = outcome.result.unwrap().unwrap();
    let [prose, list] = generations.as_slice() else {
        panic!("a scene and its list, got {generations:?}")
    };
    assert_eq!(prose.text, "The ferry waits in the fog. A bell rings once.");
    assert_eq!(
        list.text,
        "- Open the door\n- Ask the ferryman\n- Walk away"
    );
    assert_eq!(outcome.streamed, prose.text, "only the prose streams");

    let [asked_prose, asked_list] = server.requests().try_into().unwrap();
    assert!(asked_prose.body.get("response_format").is_none());
    assert_eq!(asked_prose.body["messages"].as_array().unwrap().len(), 2);
    // The list: the scene as the assistant's turn, then the ask, under the list's schema.
    let format = &asked_list.body["response_format"];
    assert_eq!(format["type"], "json_object");
    assert_eq!(format["schema"], story::choice_list_schema(3));
    let turns = asked_list.body["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 4, "{turns:?}");
    assert_eq!(turns[2]["role"], "assistant");
    assert_eq!(turns[2]["content"], prose.text.as_str());
    assert_eq!(turns[3]["role"], "user");
    assert_eq!(turns[3]["content"], story::choices_ask(3).as_str());
}

#[test]
fn openai_strict_schemas_are_wrapped_and_the_answer_unwrapped() {
    let server = FakeServer::start(200, |_, _| {
        stream(&[r#"{"value": {"action": "refuse", "#, r#""args": {}}}"#])
    });
    let mut worker = worker_on(config(&server.url).with_kind(ServerKind::OpenAi));
    let decision = Output::Structured {
        grammar: Grammar::json_schema(action_schema(&[ActionSpec::new("refuse")])),
        alternatives: 1,
    };
    worker.submit(job(1, 1, mira(), params(40, 1), decision));
    let outcome = run(&worker, &[1]).remove(&1).unwrap();
    let answer = &outcome.result.unwrap().unwrap()[0];
    let value: serde_json::Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(value, serde_json::json!({"action": "refuse", "args": {}}));
    assert_eq!(outcome.streamed, answer.text, "shown once unwrapped");

    let schema = &server.requests()[0].body["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["type"], "object", "an object on top");
    assert!(
        schema["properties"]["value"]["anyOf"].is_array(),
        "{schema}"
    );
}

#[test]
fn a_server_that_cannot_constrain_refuses_structured_jobs_instead_of_guessing() {
    let server = FakeServer::start(200, |_, _| stream(&["{\"action\":\"refuse\"}"]));
    let mut worker = worker_on(config(&server.url).with_kind(ServerKind::TextOnly));
    let decision = Output::Structured {
        grammar: Grammar::json_schema(action_schema(&[ActionSpec::new("refuse")])),
        alternatives: 1,
    };
    worker.submit(job(1, 1, mira(), params(40, 1), decision));
    let outcome = run(&worker, &[1]).remove(&1).unwrap();
    match outcome.result.unwrap() {
        Err(WorkerError::Structure(why)) => {
            assert!(why.contains("cannot constrain output"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        server.requests().is_empty(),
        "nothing unconstrained was asked"
    );
}

#[test]
fn a_cancelled_job_reports_nothing_and_its_stream_closes() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: (0..300).map(|i| format!("word{i} ")).collect(),
        delay: Duration::from_millis(10),
        end: End::Done,
    });
    let mut worker = worker_on(config(&server.url));
    let talk = job(1, 1, mira(), params(400, 1), line(1));
    let cancel = talk.cancel.clone();
    worker.submit(talk);
    reports_until(&worker, Duration::from_secs(60), "the first delta", |r| {
        matches!(r, Report::Delta { .. })
    });
    cancel.cancel();
    // Deltas already on their way may arrive, but no result; once the stream is closed,
    // nothing at all.
    let begin = Instant::now();
    let mut late = Vec::new();
    while server.hung_up.load(Ordering::SeqCst) == 0 {
        assert!(
            begin.elapsed() < Duration::from_secs(60),
            "the stream was never closed"
        );
        if let Some(r) = worker.recv_timeout(Duration::from_millis(5)).unwrap() {
            late.push(r);
        }
    }
    let closed = Instant::now() + Duration::from_millis(300);
    let mut after = Vec::new();
    while Instant::now() < closed {
        if let Some(r) = worker.recv_timeout(Duration::from_millis(20)).unwrap()
            && about(&r).is_some()
        {
            after.push(r);
        }
    }
    assert!(
        late.iter()
            .all(|r| !matches!(r, Report::Finished { .. } | Report::Failed { .. })),
        "{late:?}"
    );
    assert!(
        after.is_empty(),
        "reports after the stream closed: {after:?}"
    );
}

#[test]
fn a_job_cancelled_while_queued_never_reaches_the_server() {
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["One. ".into(), "Two.".into()],
        delay: Duration::from_millis(150),
        end: End::Done,
    });
    let mut one = config(&server.url);
    one.max_in_flight = 1;
    let mut worker = worker_on(one);
    let said = |what: &str| vec![ChatMessage::user(what)];
    worker.submit(job(1, 1, said("first"), params(16, 1), line(1)));
    reports_until(&worker, Duration::from_secs(60), "the first job", |r| {
        matches!(r, Report::Started { .. })
    });
    // The first holds the one request allowed: the second waits in the queue.
    let queued = job(2, 2, said("cancelled"), params(16, 2), line(1));
    let cancel = queued.cancel.clone();
    worker.submit(queued);
    cancel.cancel();
    worker.submit(job(3, 3, said("third"), params(16, 3), line(1)));
    let mut ended = Vec::new();
    let seen = reports_until(&worker, Duration::from_secs(60), "the third job", |r| {
        if let Report::Finished { id, .. } | Report::Failed { id, .. } = r {
            ended.push(*id);
        }
        ended.contains(&RequestId(1)) && ended.contains(&RequestId(3))
    });
    assert!(
        seen.iter().all(|r| about(r) != Some(RequestId(2))),
        "{seen:?}"
    );
    assert_eq!(last_messages(&server), ["first", "third"]);
}

#[test]
fn a_cancel_while_the_server_is_silent_frees_the_conversation_at_once() {
    // The first request gets no answer for 30 s; the conversation's next job must not wait.
    let server = FakeServer::start(200, |n, _| match n {
        0 => Reply::Silent(Duration::from_secs(30)),
        _ => stream(&["Here."]),
    });
    let mut patient = config(&server.url);
    patient.response_timeout = Duration::from_secs(60);
    let mut worker = worker_on(patient);
    let first = job(1, 1, mira(), params(16, 1), line(1));
    let cancel = first.cancel.clone();
    worker.submit(first);
    first_request(&server);
    cancel.cancel();
    worker.submit(job(2, 1, mira(), params(16, 2), line(1)));
    // Well before the silent request's 30 s.
    let seen = reports_until(&worker, Duration::from_secs(20), "the next job", |r| {
        matches!(
            r,
            Report::Finished {
                id: RequestId(2),
                ..
            } | Report::Failed {
                id: RequestId(2),
                ..
            }
        )
    });
    match seen.last() {
        Some(Report::Finished { generations, .. }) => assert_eq!(generations[0].text, "Here."),
        other => panic!("{other:?}"),
    }
    assert!(
        seen.iter().all(|r| !matches!(
            r,
            Report::Finished {
                id: RequestId(1),
                ..
            } | Report::Failed {
                id: RequestId(1),
                ..
            }
        )),
        "the cancelled job reported: {seen:?}"
    );
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
    let mut worker = worker_on(two);
    let ids: Vec<u64> = (1..=4).collect();
    for &id in &ids {
        let chatter = vec![ChatMessage::user(format!("Chatter {id}"))];
        worker.submit(job(id, id, chatter, params(16, id), line(1)));
    }
    let outcomes = run(&worker, &ids);
    assert!(outcomes.values().all(|o| matches!(o.result, Some(Ok(_)))));
    assert_eq!(server.most_at_once.load(Ordering::SeqCst), 2);

    // One at a time, but the player's line, sent last, goes out even so.
    let server = FakeServer::start(200, |_, _| Reply::Stream {
        parts: vec!["Fine.".into()],
        delay: Duration::from_millis(300),
        end: End::Done,
    });
    let mut one = config(&server.url);
    one.max_in_flight = 1;
    let mut worker = worker_on(one);
    for id in 1..=3 {
        let chatter = vec![ChatMessage::user(format!("Chatter {id}"))];
        worker.submit(job(id, id, chatter, params(16, id), line(1)));
    }
    // The first chatter is out before the player speaks.
    first_request(&server);
    let mut player = job(
        4,
        4,
        vec![ChatMessage::user("Player here")],
        params(16, 4),
        line(1),
    );
    player.priority = Priority::Player;
    worker.submit(player);
    run(&worker, &ids);
    let order = last_messages(&server);
    // The player's line went out at once, beside the chatter already out, before the
    // queued chatter.
    assert_eq!(order[1], "Player here", "{order:?}");
    assert_eq!(server.most_at_once.load(Ordering::SeqCst), 2, "{order:?}");
}
