//! The worker of the remote backend: the local worker's commands and reports, served by an
//! inference server. A dispatcher thread keeps the queue in priority order and sends up to
//! [`RemoteConfig::max_in_flight`] requests at once, each a blocking stream on a thread of its
//! own (the server batches them); an NPC's lines still go one at a time, in order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::request::{DialogueError, Priority};
use super::worker::{Command, Job, Output, Report, WorkerStatus, panic_message};
use crate::engine::{ChatMessage, GenerateParams, Generation, StopReason};
use crate::remote::{ChatRequest, RemoteClient, RemoteConfig, RemoteError};
use crate::{score, story};

/// Starts the dispatcher thread. It ends when the command channel closes; requests in flight
/// end at their next streamed part (their reports have nowhere to go).
pub(crate) fn spawn(
    config: RemoteConfig,
    commands: Receiver<Command>,
    reports: Sender<Report>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("llm-dialogue-remote".into())
        .spawn(move || {
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            Dispatcher {
                config,
                client: None,
                load_error: Some("the inference server has not been reached yet".into()),
                reports,
                queue: Vec::new(),
                clock: 0,
                busy: Vec::new(),
                done_tx,
                #[cfg(feature = "fault-injection")]
                panic_next: false,
            }
            .run(commands, done_rx);
        })
}

struct Dispatcher {
    config: RemoteConfig,
    client: Option<Arc<RemoteClient>>,
    load_error: Option<String>,
    reports: Sender<Report>,
    queue: Vec<(u64, Job)>,
    clock: u64,
    /// The conversations with a request at the server.
    busy: Vec<u64>,
    /// Request threads send their conversation here when they end.
    done_tx: Sender<u64>,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

impl Dispatcher {
    fn run(mut self, commands: Receiver<Command>, done: Receiver<u64>) {
        loop {
            crossbeam_channel::select! {
                recv(commands) -> cmd => match cmd {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                },
                recv(done) -> slot => {
                    if let Ok(slot) = slot
                        && let Some(i) = self.busy.iter().position(|&s| s == slot)
                    {
                        self.busy.swap_remove(i);
                    }
                }
            }
            self.send_ready();
            let _ = self.reports.send(Report::Status(WorkerStatus {
                queued: self.queue.len(),
                generating: self.busy.len(),
                ..WorkerStatus::default()
            }));
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.clock += 1;
        match cmd {
            // The server has its model: loading checks that it answers.
            Command::Load(_) => self.connect(),
            Command::Generate(job) => self.queue.push((self.clock, *job)),
            // No caches here, and the server's threads are not the game's.
            Command::ForgetSlot(_) | Command::Pace(_) => {}
            #[cfg(feature = "fault-injection")]
            Command::PanicNextJob => self.panic_next = true,
        }
    }

    fn connect(&mut self) {
        let _ = self.reports.send(Report::Loading(0.0));
        let result = RemoteClient::new(self.config.clone())
            .and_then(|client| client.connect().map(|info| (client, info)));
        match result {
            Ok((client, info)) => {
                self.client = Some(Arc::new(client));
                self.load_error = None;
                let _ = self.reports.send(Report::Loading(1.0));
                let _ = self.reports.send(Report::Loaded(info));
            }
            Err(e) => {
                tracing::error!("remote backend: {e}");
                self.client = None;
                self.load_error = Some(e.to_string());
                let _ = self.reports.send(Report::LoadFailed(e.to_string()));
            }
        }
    }

    /// Sends queued requests, best first, while fewer than `max_in_flight` are out (a
    /// [`Priority::Player`] line goes out even then: the player never waits for chatter);
    /// an NPC with a request out waits for it.
    fn send_ready(&mut self) {
        loop {
            let full = self.busy.len() >= self.config.max_in_flight.max(1);
            let Some(i) = self
                .queue
                .iter()
                .enumerate()
                .filter(|(_, (_, job))| !self.busy.contains(&job.slot))
                .filter(|(_, (_, job))| !full || job.priority == Priority::Player)
                .max_by(|(_, a), (_, b)| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i)
            else {
                return;
            };
            let job = self.queue.remove(i).1;
            if job.cancel.is_cancelled() {
                continue;
            }
            let Some(client) = self.client.clone() else {
                let reason = self.load_error.clone().unwrap_or_default();
                let _ = self.reports.send(Report::Failed {
                    id: job.id,
                    error: DialogueError::ModelUnavailable(reason),
                });
                continue;
            };
            self.busy.push(job.slot);
            let reports = self.reports.clone();
            let done = self.done_tx.clone();
            #[cfg(feature = "fault-injection")]
            let inject = std::mem::take(&mut self.panic_next);
            #[cfg(not(feature = "fault-injection"))]
            let inject = false;
            let (slot, id) = (job.slot, job.id);
            let spawned = std::thread::Builder::new()
                .name("llm-dialogue-request".into())
                .spawn(move || {
                    run_request(&client, job, &reports, inject);
                    let _ = done.send(slot);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a request thread: {e}");
                self.busy.retain(|&s| s != slot);
                let _ = self.reports.send(Report::Failed {
                    id,
                    error: DialogueError::Server(format!("cannot start a request thread: {e}")),
                });
            }
        }
    }
}

/// Serves one job and reports its result; a panic fails only this job.
fn run_request(client: &RemoteClient, job: Job, reports: &Sender<Report>, inject: bool) {
    let id = job.id;
    let cancel = job.cancel.clone();
    if cancel.is_cancelled() {
        return;
    }
    let _ = reports.send(Report::Started {
        id,
        prompt: shown_prompt(&job.messages).into(),
    });
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if inject {
            panic!("injected fault");
        }
        let send = |text: &str| {
            if !text.is_empty()
                && reports
                    .send(Report::Delta {
                        id,
                        text: text.to_owned(),
                    })
                    .is_err()
            {
                // The app is gone: stop at the next part.
                cancel.cancel();
            }
        };
        serve(client, &job, send)
    }));
    let report = match result {
        Ok(Ok(generations)) => {
            let cancelled = job.cancel.is_cancelled()
                || generations
                    .iter()
                    .any(|g| g.stop_reason == StopReason::Cancelled);
            if cancelled {
                return;
            }
            Report::Finished { id, generations }
        }
        Ok(Err(error)) => Report::Failed { id, error },
        Err(panic) => Report::Failed {
            id,
            error: DialogueError::WorkerCrashed(panic_message(panic.as_ref())),
        },
    };
    let _ = reports.send(report);
}

/// The job's generations, as the local worker returns them.
fn serve(
    client: &RemoteClient,
    job: &Job,
    mut send: impl FnMut(&str),
) -> Result<Vec<Generation>, DialogueError> {
    let best_of = matches!(job.output, Output::Text { best_of, .. } if best_of > 1);
    let chat = |messages: &[ChatMessage],
                params: &GenerateParams,
                schema: Option<&serde_json::Value>,
                on_delta: &mut dyn FnMut(&str)| {
        client
            .chat(
                &ChatRequest {
                    messages,
                    params,
                    schema,
                    logprobs: best_of,
                },
                &job.cancel,
                on_delta,
            )
            .map_err(remote_error)
    };
    // Alternatives and best-of draws differ by seed, as in the engine.
    let seeded = |i: usize, params: &GenerateParams| {
        let mut p = params.clone();
        if i > 0 {
            p.sampling.seed = Some(
                p.sampling
                    .seed
                    .unwrap_or_else(rand::random)
                    .wrapping_add(i as u64),
            );
        }
        p
    };
    let params = &job.params;
    match &job.output {
        Output::Text { best_of: 1, .. } => Ok(vec![chat(&job.messages, params, None, &mut send)?]),
        Output::Text { best_of, speaker } => {
            let mut best: Option<(f64, Generation)> = None;
            for i in 0..*best_of {
                let g = chat(&job.messages, &seeded(i, params), None, &mut |_| {})?;
                if g.stop_reason == StopReason::Cancelled {
                    return Ok(vec![g]);
                }
                let score = score::line_score(&g, speaker);
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, g));
                }
            }
            let (_, g) = best.expect("best_of is at least 2 here");
            // Sent whole once chosen, as the local worker does.
            send(&g.text);
            Ok(vec![g])
        }
        Output::Structured {
            grammar,
            alternatives,
        } => {
            let schema = grammar
                .as_json_schema()
                .ok_or_else(|| remote_error(RemoteError::NotJsonSchema))?;
            (0..(*alternatives).max(1))
                .map(|i| {
                    let mut shown = |t: &str| {
                        if i == 0 {
                            send(t);
                        }
                    };
                    chat(&job.messages, &seeded(i, params), Some(schema), &mut shown)
                })
                .collect()
        }
        Output::Scene {
            choices,
            alternatives,
        } => {
            let prose = story::prose_params(params);
            let mut list = story::list_params(*choices, params);
            // Room for the JSON's brackets, quotes and commas.
            list.max_tokens += choices * 4 + 4;
            let schema = story::choice_list_schema(*choices);
            let mut generations = Vec::with_capacity(alternatives * 2);
            for i in 0..(*alternatives).max(1) {
                let mut shown = |t: &str| {
                    if i == 0 {
                        send(t);
                    }
                };
                let scene = chat(&job.messages, &seeded(i, &prose), None, &mut shown)?;
                if scene.stop_reason == StopReason::Cancelled {
                    return Ok(vec![scene]);
                }
                let mut turns = job.messages.clone();
                turns.push(ChatMessage::assistant(scene.text.clone()));
                turns.push(ChatMessage::user(story::choices_ask(*choices)));
                let mut list_gen = chat(&turns, &seeded(i, &list), Some(&schema), &mut |_| {})?;
                if list_gen.stop_reason != StopReason::Cancelled {
                    list_gen.text =
                        story::choice_list_from_json(&list_gen.text).ok_or_else(|| {
                            DialogueError::Structure(format!(
                                "the server's choices are not a JSON list of {choices} strings: {}",
                                list_gen.text.chars().take(120).collect::<String>()
                            ))
                        })?;
                }
                generations.extend([scene, list_gen]);
            }
            Ok(generations)
        }
    }
}

/// The messages as sent, for [`LineStarted::prompt`](super::LineStarted) (the server renders
/// its own template).
fn shown_prompt(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| format!("[{}]\n{}\n", m.role.as_str(), m.content))
        .collect()
}

pub(crate) fn remote_error(e: RemoteError) -> DialogueError {
    match e {
        RemoteError::Unconstrained { .. } | RemoteError::NotJsonSchema => {
            DialogueError::Structure(e.to_string())
        }
        other => DialogueError::Server(other.to_string()),
    }
}
