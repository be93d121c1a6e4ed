//! An inference server as the job server's backend: up to
//! [`RemoteConfig::max_in_flight`] jobs at the server at once, each a blocking stream on a
//! thread of its own (the server batches them); a conversation's jobs still go one at a
//! time, in order. The recipes are the local model's; only drawing text differs.
//!
//! Nothing that waits on the network runs on the job server's thread: the check that the
//! server answers (`GET /models`, up to the connect and response timeouts) runs on a thread
//! of its own too, and while it runs again (a `LoadModel`) the client it replaces goes on
//! serving, so one slow server never holds up the other jobs, their ends or their cancels.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::protocol::{Job, Priority, Report, WorkerError, WorkerStatus, panic_message};
use super::recipe::{self, Constraint, Generate, Outbox, alternative_params};
use super::server::{Admit, Backend, Woken};
use crate::engine::{CancelToken, ChatMessage, GenerateParams, Generation, ModelInfo, StopReason};
use crate::remote::{ChatRequest, RemoteClient, RemoteConfig, RemoteError};
use crate::story;

/// The server's client and the conversations with a job out.
pub(crate) struct Remote {
    config: RemoteConfig,
    client: Option<Arc<RemoteClient>>,
    /// The client being checked, with its load's number, while the check runs.
    checking: Option<(u64, Arc<RemoteClient>)>,
    /// Loads started.
    loads: u64,
    /// The conversations with a job at the server.
    busy: Vec<u64>,
    /// Request threads send their conversation here when they end, check threads their
    /// result.
    wake_tx: Sender<Woken>,
    wake_rx: Receiver<Woken>,
}

impl Remote {
    pub(crate) fn new(config: RemoteConfig) -> Self {
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
        Self {
            config,
            client: None,
            checking: None,
            loads: 0,
            busy: Vec::new(),
            wake_tx,
            wake_rx,
        }
    }
}

impl Backend for Remote {
    /// The server has its model: loading checks that it answers, on a thread of its own.
    fn load(&mut self, _: &Path, _: &Outbox) -> Result<Option<ModelInfo>, String> {
        self.loads += 1;
        self.checking = None;
        let client = match RemoteClient::new(self.config.clone()) {
            Ok(client) => Arc::new(client),
            Err(e) => {
                self.client = None;
                return Err(e.to_string());
            }
        };
        let (attempt, wake) = (self.loads, self.wake_tx.clone());
        let checked = client.clone();
        std::thread::Builder::new()
            .name("llm-dialogue-connect".into())
            .spawn(move || {
                let result = checked.connect().map_err(|e| {
                    tracing::error!("remote backend: {e}");
                    e.to_string()
                });
                let _ = wake.send(Woken::Loaded { attempt, result });
            })
            .map_err(|e| format!("cannot start a connection thread: {e}"))?;
        self.checking = Some((attempt, client));
        Ok(None)
    }

    /// The check's client serves from now on; a failed check leaves no client.
    fn loaded(
        &mut self,
        attempt: u64,
        result: Result<ModelInfo, String>,
    ) -> Option<Result<ModelInfo, String>> {
        let (_, client) = self.checking.take_if(|(a, _)| *a == attempt)?;
        self.client = result.is_ok().then_some(client);
        Some(result)
    }

    fn unload(&mut self) {
        self.client = None;
        self.checking = None;
    }

    fn is_loaded(&self) -> bool {
        self.client.is_some()
    }

    /// A [`Priority::Player`] line goes out even when `max_in_flight` are out: the player
    /// never waits for chatter.
    fn admits(&self, job: &Job) -> Admit {
        if self.busy.len() >= self.config.max_in_flight.max(1) && job.priority != Priority::Player {
            Admit::Full
        } else {
            Admit::Now
        }
    }

    fn busy(&self, slot: u64) -> bool {
        self.busy.contains(&slot)
    }

    fn running(&self) -> usize {
        self.busy.len()
    }

    fn start(&mut self, job: Job, inject: bool, out: &Outbox) -> Result<(), String> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let (slot, id) = (job.slot, job.id);
        let done = self.wake_tx.clone();
        let reports = out.clone();
        let spawned = std::thread::Builder::new()
            .name("llm-dialogue-request".into())
            .spawn(move || {
                // A panic fails only this job.
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    recipe::serve(
                        &mut RemoteGenerator { client: &client },
                        &job,
                        &reports,
                        inject,
                    )
                }))
                .unwrap_or_else(|panic| Err(WorkerError::Crashed(panic_message(panic.as_ref()))));
                reports.finished(&job, result);
                let _ = done.send(Woken::Ended(slot));
            });
        match spawned {
            Ok(_) => self.busy.push(slot),
            Err(e) => {
                tracing::error!("cannot start a request thread: {e}");
                out.send(Report::Failed {
                    id,
                    error: WorkerError::Server(format!("cannot start a request thread: {e}")),
                });
            }
        }
        Ok(())
    }

    fn wake(&self) -> Option<Receiver<Woken>> {
        Some(self.wake_rx.clone())
    }

    fn ended(&mut self, slot: u64) {
        if let Some(i) = self.busy.iter().position(|&s| s == slot) {
            self.busy.swap_remove(i);
        }
    }

    /// No caches here, and the server's threads are not the game's.
    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            generating: self.busy.len(),
            ..WorkerStatus::default()
        }
    }
}

/// The server's client, as the recipes see it.
struct RemoteGenerator<'a> {
    client: &'a RemoteClient,
}

impl Generate for RemoteGenerator<'_> {
    /// The server renders its own template: the messages as they are.
    type Prompt = Vec<ChatMessage>;

    fn prepare(
        &mut self,
        messages: Vec<ChatMessage>,
        _: usize,
    ) -> Result<Self::Prompt, WorkerError> {
        Ok(messages)
    }

    /// The messages as sent, for [`Report::Started`].
    fn shown(&self, messages: &Self::Prompt) -> String {
        messages
            .iter()
            .map(|m| format!("[{}]\n{}\n", m.role.as_str(), m.content))
            .collect()
    }

    fn messages<'p>(&self, prompt: &'p Self::Prompt) -> &'p [ChatMessage] {
        prompt
    }

    fn alternatives(
        &mut self,
        messages: &Self::Prompt,
        params: &GenerateParams,
        constraint: Option<Constraint<'_>>,
        n: usize,
        cancel: &CancelToken,
        on_delta: &mut (dyn FnMut(usize, &str) + Send),
    ) -> Result<Vec<Generation>, WorkerError> {
        let mut generations = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let mut params = alternative_params(params, i);
            let (schema, list) = match constraint {
                None => (None, None),
                // Servers constrain output by JSON schema.
                Some(Constraint::Grammar(grammar)) => {
                    let schema = grammar.as_json_schema().ok_or(RemoteError::NotJsonSchema)?;
                    (Some(schema.clone()), None)
                }
                Some(Constraint::ChoiceList(choices)) => {
                    // Room for the JSON's brackets, quotes and commas.
                    params.max_tokens += choices * 4 + 4;
                    (Some(story::choice_list_schema(choices)), Some(choices))
                }
            };
            let request = ChatRequest {
                messages,
                params: &params,
                schema: schema.as_ref(),
                // Best-of ranks its draws by their log-probabilities.
                logprobs: n > 1 && constraint.is_none(),
            };
            let mut generation = self.client.chat(&request, cancel, |t| on_delta(i, t))?;
            let cancelled = generation.stop_reason == StopReason::Cancelled;
            if let Some(choices) = list
                && !cancelled
            {
                generation.text =
                    story::choice_list_from_json(&generation.text).ok_or_else(|| {
                        WorkerError::Structure(format!(
                            "the server's choices are not a JSON list of {choices} strings: {}",
                            generation.text.chars().take(120).collect::<String>()
                        ))
                    })?;
            }
            generations.push(generation);
            if cancelled {
                break;
            }
        }
        Ok(generations)
    }
}
