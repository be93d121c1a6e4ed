//! The plugin's systems: moving requests to the worker and its reports back into the world.

use std::collections::HashMap;
use std::path::PathBuf;

use bevy::asset::LoadState;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::components::{
    DialogueContext, DialogueHistory, DialogueOverrides, Npc, NpcContext, Speaking,
};
use super::messages::*;
use super::worker::{self, Command, Job, Report, WorkerConfig};
use super::{DialogueModel, DialogueSettings, ModelState};
use crate::engine::{CancelToken, ChatMessage, EngineConfig};
use crate::persona::Persona;
use crate::prompt::PromptTemplate;

/// The built-in NPC prompt template.
#[derive(Resource)]
pub(crate) struct BuiltinPrompt(pub(crate) PromptTemplate);

pub(crate) struct WorkerSpec {
    pub(crate) engine: EngineConfig,
    pub(crate) slots: usize,
    pub(crate) asset_base: PathBuf,
    pub(crate) model: Option<PathBuf>,
}

/// The channels to the worker thread, and what is needed to start it again.
#[derive(Resource)]
pub(crate) struct WorkerLink {
    spec: WorkerSpec,
    commands: Sender<Command>,
    reports: Receiver<Report>,
    /// The model last asked for, reloaded if the worker has to be restarted.
    model: Option<PathBuf>,
    /// Whether a load was asked for that has not been announced yet.
    announce_load: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WorkerLink {
    /// The app is closing: hang up, and give the worker a moment to stop. It notices at the
    /// next token (its reports have nowhere to go) and drops its queue.
    fn drop(&mut self) {
        let (dead_tx, _) = crossbeam_channel::unbounded();
        let (_, dead_rx) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.commands, dead_tx));
        drop(std::mem::replace(&mut self.reports, dead_rx));
        if let Some(thread) = self.thread.take() {
            let start = std::time::Instant::now();
            while !thread.is_finished() && start.elapsed() < std::time::Duration::from_secs(2) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("the inference worker is still busy at exit; leaving it");
            }
        }
    }
}

impl WorkerLink {
    pub(crate) fn new(spec: WorkerSpec) -> Self {
        let model = spec.model.clone().map(|p| resolve(&spec.asset_base, p));
        let (commands, reports, thread) = start(&spec);
        let mut link = Self {
            spec,
            commands,
            reports,
            model: None,
            announce_load: false,
            thread,
        };
        if let Some(path) = model {
            link.load(path);
        }
        link
    }

    fn load(&mut self, path: PathBuf) {
        self.model = Some(path.clone());
        self.announce_load = true;
        self.send(Command::Load(path));
    }

    pub(crate) fn send(&mut self, cmd: Command) {
        if let Err(crossbeam_channel::SendError(cmd)) = self.commands.send(cmd) {
            // The worker is gone (it only stops when its channel closes or it crashed).
            self.restart();
            let _ = self.commands.send(cmd);
        }
    }

    fn restart(&mut self) {
        tracing::warn!("restarting the inference worker");
        let (commands, reports, thread) = start(&self.spec);
        self.commands = commands;
        self.reports = reports;
        self.thread = thread;
        if let Some(path) = self.model.clone() {
            self.announce_load = true;
            let _ = self.commands.send(Command::Load(path));
        }
    }

    /// Test hook: the worker panics on its next line.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_panic(&mut self) {
        self.send(Command::PanicNextJob);
    }
}

pub(crate) fn resolve(base: &std::path::Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

type Started = (
    Sender<Command>,
    Receiver<Report>,
    Option<std::thread::JoinHandle<()>>,
);

fn start(spec: &WorkerSpec) -> Started {
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (rep_tx, rep_rx) = crossbeam_channel::unbounded();
    let config = WorkerConfig {
        engine: spec.engine.clone(),
        slots: spec.slots,
    };
    let thread = worker::spawn(config, cmd_rx, rep_tx)
        .inspect_err(|e| tracing::error!("cannot start the inference worker thread: {e}"))
        .ok();
    (cmd_tx, rep_rx, thread)
}

/// A request between its sending and its result.
pub(crate) struct Active {
    /// The NPC, or the story entity for scenes.
    pub(crate) npc: Entity,
    pub(crate) cancel: CancelToken,
    pub(crate) kind: ActiveKind,
}

/// What the result of a request turns into.
pub(crate) enum ActiveKind {
    /// A line; the player's line it answers goes into the history with it.
    Line { player_line: Option<String> },
    /// A narrator scene.
    Scene(Box<super::story::PendingScene>),
    /// An NPC's decision among actions.
    Action(Vec<crate::story::ActionSpec>),
}

/// Requests waiting for their assets, and requests at the worker.
#[derive(Resource, Default)]
pub(crate) struct Lines {
    next_id: u64,
    waiting: Vec<(RequestId, RequestLine)>,
    pub(crate) active: HashMap<RequestId, Active>,
}

impl Lines {
    pub(crate) fn next_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn cancel_npc(&mut self, npc: Entity) {
        self.waiting.retain(|(_, r)| r.npc != npc);
        self.active.retain(|_, a| {
            if a.npc == npc {
                a.cancel.cancel();
                false
            } else {
                true
            }
        });
    }
}

/// `PreUpdate`: turns the worker's reports into messages, entity events and history.
#[expect(clippy::too_many_arguments, reason = "one writer per message type")]
pub(crate) fn receive_reports(
    mut commands: Commands,
    mut link: ResMut<WorkerLink>,
    mut lines: ResMut<Lines>,
    mut model: ResMut<DialogueModel>,
    mut structured: ResMut<super::story::Structured>,
    mut histories: Query<&mut DialogueHistory>,
    mut loading: MessageWriter<ModelLoading>,
    mut loaded: MessageWriter<ModelLoaded>,
    mut load_failed: MessageWriter<ModelFailed>,
    mut results: (
        MessageWriter<LineStarted>,
        MessageWriter<LineDelta>,
        MessageWriter<LineFinished>,
        MessageWriter<LineFailed>,
    ),
) {
    if std::mem::take(&mut link.announce_load) {
        model.state = ModelState::Loading(0.0);
    }
    loop {
        let report = match link.reports.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                // The worker died outside a line (lines catch their own panics). Fail what it
                // held and start a new one.
                for (request, a) in lines.active.drain() {
                    let error = DialogueError::WorkerCrashed("the worker thread stopped".into());
                    match a.kind {
                        ActiveKind::Line { .. } => {
                            fail(&mut commands, &mut results.3, a.npc, request, error)
                        }
                        _ => structured.failed.push((request, a, error)),
                    }
                }
                link.restart();
                model.state = ModelState::Loading(0.0);
                break;
            }
        };
        match report {
            Report::Loading(fraction) => {
                model.state = ModelState::Loading(fraction);
                loading.write(ModelLoading { fraction });
            }
            Report::Loaded(info) => {
                model.loads += 1;
                model.state = ModelState::Ready(info.clone());
                loaded.write(ModelLoaded { info });
            }
            Report::LoadFailed(error) => {
                model.state = ModelState::Failed(error.clone());
                load_failed.write(ModelFailed { error });
            }
            Report::Status(status) => model.status = status,
            Report::Started { id, prompt } => {
                let Some(a) = lines.active.get(&id) else {
                    continue;
                };
                if !matches!(a.kind, ActiveKind::Line { .. }) {
                    continue;
                }
                let npc = a.npc;
                commands.entity(npc).insert(Speaking { request: id });
                let ev = LineStarted {
                    npc,
                    request: id,
                    prompt,
                };
                results.0.write(ev.clone());
                commands.trigger(ev);
            }
            Report::Delta { id, text } => {
                let Some(a) = lines.active.get(&id) else {
                    continue;
                };
                if !matches!(a.kind, ActiveKind::Line { .. }) {
                    structured.deltas.push((id, text));
                    continue;
                }
                let ev = LineDelta {
                    npc: a.npc,
                    request: id,
                    text,
                };
                results.1.write(ev.clone());
                commands.trigger(ev);
            }
            Report::Finished { id, generation } => {
                let Some(a) = lines.active.remove(&id) else {
                    continue;
                };
                let ActiveKind::Line { player_line } = a.kind else {
                    continue;
                };
                if let Ok(mut history) = histories.get_mut(a.npc) {
                    if let Some(line) = player_line {
                        history.turns.push(ChatMessage::user(line));
                    }
                    if !generation.text.is_empty() {
                        history
                            .turns
                            .push(ChatMessage::assistant(generation.text.clone()));
                    }
                }
                commands.entity(a.npc).try_remove::<Speaking>();
                let ev = LineFinished {
                    npc: a.npc,
                    request: id,
                    text: generation.text,
                    stop_reason: generation.stop_reason,
                    stats: generation.stats,
                };
                results.2.write(ev.clone());
                commands.trigger(ev);
            }
            Report::FinishedAll { id, generations } => {
                let Some(a) = lines.active.remove(&id) else {
                    continue;
                };
                structured.done.push((id, a, generations));
            }
            Report::Failed { id, error } => {
                let Some(a) = lines.active.remove(&id) else {
                    continue;
                };
                if !matches!(a.kind, ActiveKind::Line { .. }) {
                    structured.failed.push((id, a, error));
                    continue;
                }
                commands.entity(a.npc).try_remove::<Speaking>();
                fail(&mut commands, &mut results.3, a.npc, id, error);
            }
        }
    }
}

pub(crate) fn fail(
    commands: &mut Commands,
    failed: &mut MessageWriter<LineFailed>,
    npc: Entity,
    request: RequestId,
    error: DialogueError,
) {
    tracing::warn!(?npc, ?request, "line failed: {error}");
    let ev = LineFailed {
        npc,
        request,
        error,
    };
    failed.write(ev.clone());
    if commands.get_entity(npc).is_ok() {
        commands.trigger(ev);
    }
}

/// `PostUpdate`: [`LoadModel`] messages.
pub(crate) fn load_models(mut link: ResMut<WorkerLink>, mut requests: MessageReader<LoadModel>) {
    for request in requests.read() {
        let path = resolve(&link.spec.asset_base, request.path.clone());
        link.load(path);
    }
}

/// `PostUpdate`: the fault-injection hook.
#[cfg(feature = "fault-injection")]
pub(crate) fn inject_faults(
    mut link: ResMut<WorkerLink>,
    mut faults: MessageReader<super::InjectWorkerPanic>,
) {
    for _ in faults.read() {
        link.inject_panic();
    }
}

/// `PostUpdate`: [`CancelLine`] messages.
pub(crate) fn cancel_lines(
    mut commands: Commands,
    mut lines: ResMut<Lines>,
    mut cancels: MessageReader<CancelLine>,
) {
    for cancel in cancels.read() {
        lines.cancel_npc(cancel.npc);
        if let Ok(mut e) = commands.get_entity(cancel.npc) {
            e.try_remove::<Speaking>();
        }
    }
}

/// `PostUpdate`: new [`RequestLine`]s join the waiting list.
pub(crate) fn queue_requests(mut lines: ResMut<Lines>, mut requests: MessageReader<RequestLine>) {
    for request in requests.read() {
        let id = lines.next_id();
        lines.waiting.push((id, request.clone()));
    }
}

/// `PostUpdate`: requests whose persona and template are loaded become prompts and go to the
/// worker; requests that cannot be served fail at once.
#[expect(clippy::too_many_arguments, reason = "the prompt needs all of these")]
pub(crate) fn dispatch_requests(
    mut commands: Commands,
    mut link: ResMut<WorkerLink>,
    mut lines: ResMut<Lines>,
    mut failed: MessageWriter<LineFailed>,
    npcs: Query<(
        &Npc,
        &DialogueHistory,
        &NpcContext,
        Option<&DialogueOverrides>,
    )>,
    personas: Res<Assets<Persona>>,
    prompts: Res<Assets<PromptTemplate>>,
    builtin: Res<BuiltinPrompt>,
    asset_server: Res<AssetServer>,
    world: Res<DialogueContext>,
    settings: Res<DialogueSettings>,
    model: Res<DialogueModel>,
) {
    let waiting = std::mem::take(&mut lines.waiting);
    for (id, request) in waiting {
        let fail_now = |commands: &mut Commands, failed: &mut MessageWriter<LineFailed>, error| {
            fail(commands, failed, request.npc, id, error)
        };
        if let ModelState::Failed(reason) = &model.state {
            fail_now(
                &mut commands,
                &mut failed,
                DialogueError::ModelUnavailable(reason.clone()),
            );
            continue;
        }
        let Ok((npc, history, npc_facts, overrides)) = npcs.get(request.npc) else {
            fail_now(
                &mut commands,
                &mut failed,
                DialogueError::NpcNotFound(request.npc),
            );
            continue;
        };
        let persona = match asset_ready(&asset_server, &personas, &npc.persona) {
            Ready::Yes(p) => p,
            Ready::NotYet => {
                lines.waiting.push((id, request));
                continue;
            }
            Ready::Failed(e) => {
                fail_now(&mut commands, &mut failed, DialogueError::Persona(e));
                continue;
            }
        };
        let template = match &npc.prompt {
            None => &builtin.0,
            Some(handle) => match asset_ready(&asset_server, &prompts, handle) {
                Ready::Yes(t) => t,
                Ready::NotYet => {
                    lines.waiting.push((id, request));
                    continue;
                }
                Ready::Failed(e) => {
                    fail_now(&mut commands, &mut failed, DialogueError::Template(e));
                    continue;
                }
            },
        };
        let messages = match template.npc_messages(
            persona,
            &world.facts,
            &npc_facts.facts,
            &history.turns,
            request.player_line.as_deref(),
        ) {
            Ok(m) => m,
            Err(e) => {
                fail_now(
                    &mut commands,
                    &mut failed,
                    DialogueError::Template(e.to_string()),
                );
                continue;
            }
        };

        let mut params = settings.defaults.clone();
        let layers = [
            (persona.sampling.clone(), persona.max_tokens),
            overrides.map_or((None, None), |o| (o.sampling.clone(), o.max_tokens)),
            (request.sampling.clone(), request.max_tokens),
        ];
        for (sampling, max_tokens) in layers {
            if let Some(s) = sampling {
                params.sampling = s;
            }
            if let Some(m) = max_tokens {
                params.max_tokens = m;
            }
        }
        params.stop.extend(persona.stop.iter().cloned());
        if let Err(e) = params.validate() {
            fail_now(
                &mut commands,
                &mut failed,
                DialogueError::InvalidRequest(e.to_string()),
            );
            continue;
        }

        let cancel = CancelToken::new();
        lines.active.insert(
            id,
            Active {
                npc: request.npc,
                cancel: cancel.clone(),
                kind: ActiveKind::Line {
                    player_line: request.player_line.clone(),
                },
            },
        );
        link.send(Command::Generate(Job {
            id,
            slot: request.npc.to_bits(),
            messages,
            params,
            priority: request.priority,
            cancel,
            output: worker::Output::Text,
        }));
    }
}

pub(crate) enum Ready<'a, T> {
    Yes(&'a T),
    NotYet,
    Failed(String),
}

pub(crate) fn asset_ready<'a, T: Asset>(
    server: &AssetServer,
    assets: &'a Assets<T>,
    handle: &Handle<T>,
) -> Ready<'a, T> {
    if let Some(asset) = assets.get(handle) {
        return Ready::Yes(asset);
    }
    match server.get_load_state(handle) {
        Some(LoadState::Failed(e)) => Ready::Failed(e.to_string()),
        // Neither loaded nor known to the server: a handle made by hand that was removed.
        None => Ready::Failed(format!("asset {:?} does not exist", handle.id())),
        _ => Ready::NotYet,
    }
}

/// An NPC lost its [`Npc`] component (or was despawned): stop its lines, free its cache.
pub(crate) fn on_npc_removed(
    removed: On<Remove, Npc>,
    mut lines: ResMut<Lines>,
    mut link: ResMut<WorkerLink>,
) {
    lines.cancel_npc(removed.entity);
    link.send(Command::ForgetSlot(removed.entity.to_bits()));
}
