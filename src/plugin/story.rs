//! The narrator and NPC actions in the app: scenes with choices and decisions among declared
//! actions, both generated under a JSON schema so that they always parse.

use bevy::prelude::*;

use super::components::{DialogueContext, DialogueHistory, Npc, NpcContext};
use super::messages::{DialogueError, LineFailed, Priority, RequestId};
use super::systems::{self, Active, ActiveKind, Lines, Ready, WorkerLink, asset_ready};
use super::worker::{Command, Job, Output};
use super::{DialogueModel, DialogueSettings, ModelState};
use crate::engine::{CancelToken, Generation, GenerationStats, Grammar, SamplingParams};
use crate::persona::Persona;
use crate::prompt::PromptTemplate;
use crate::story::{
    ActionSpec, Scene, SceneStream, Story, StoryAsset, action_schema, parse_action, scene_schema,
};

/// Makes an entity a story told by the narrator. Its [`Story`] (the playthrough) is added.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// fn start(mut commands: Commands, assets: Res<AssetServer>, mut scenes: MessageWriter<RequestScene>) {
///     let story = commands.spawn(Narrator::new(assets.load("stories/silver_key.story.ron"))).id();
///     scenes.write(RequestScene::new(story));
/// }
/// ```
#[derive(Component, Clone, Debug)]
#[require(Story)]
pub struct Narrator {
    /// What the author pinned down.
    pub story: Handle<StoryAsset>,
    /// The narrator's prompt; `None` uses the built-in `assets/prompts/narrator.jinja`.
    pub prompt: Option<Handle<PromptTemplate>>,
}

impl Narrator {
    /// A narrator with the built-in prompt.
    pub fn new(story: Handle<StoryAsset>) -> Self {
        Self {
            story,
            prompt: None,
        }
    }
}

/// Asks for the next scene: the opening (the story's pinned `start`, or a generated one),
/// or the scene after the choice taken with [`ChooseOption`].
#[derive(Message, Clone, Debug)]
pub struct RequestScene {
    /// The entity with the [`Narrator`].
    pub story: Entity,
    /// How many alternative scenes to write (1..=8), sharing the prompt's computation;
    /// the first becomes the story's scene, the rest arrive in
    /// [`SceneReady::alternatives`].
    pub alternatives: usize,
    /// Sampling for this scene only.
    pub sampling: Option<SamplingParams>,
}

impl RequestScene {
    /// The next scene of `story`.
    pub fn new(story: Entity) -> Self {
        Self {
            story,
            alternatives: 1,
            sampling: None,
        }
    }
    /// Writes `n` alternatives.
    pub fn alternatives(mut self, n: usize) -> Self {
        self.alternatives = n;
        self
    }
    /// Sampling for this scene.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = Some(sampling);
        self
    }
}

/// The player takes choice `index` of the current scene; the next scene follows (pinned
/// scenes at once, generated ones streamed). An index out of range is a [`SceneFailed`].
#[derive(Message, Clone, Copy, Debug)]
pub struct ChooseOption {
    /// The entity with the [`Narrator`].
    pub story: Entity,
    /// Which choice, from 0.
    pub index: usize,
}

/// More scene text as the narrator writes it.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct SceneDelta {
    /// The story entity.
    #[event_target]
    pub story: Entity,
    /// The request.
    pub request: RequestId,
    /// New scene text.
    pub text: String,
}

/// A scene is ready and is now the story's current scene.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct SceneReady {
    /// The story entity.
    #[event_target]
    pub story: Entity,
    /// The request, for generated scenes (`None` for pinned ones).
    pub request: Option<RequestId>,
    /// The scene text.
    pub text: String,
    /// The choices: non-empty, pairwise distinct, as many as the story asks.
    pub choices: Vec<String>,
    /// Further alternatives, when more than one was asked for.
    pub alternatives: Vec<Scene>,
    /// Generation figures, for generated scenes.
    pub stats: Option<GenerationStats>,
}

/// A scene could not be written or a choice was refused; the story is unchanged.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct SceneFailed {
    /// The story entity.
    #[event_target]
    pub story: Entity,
    /// What went wrong.
    pub error: DialogueError,
}

/// Asks an NPC to decide what to do among its persona's `actions` (or the request's).
#[derive(Message, Clone, Debug)]
pub struct RequestAction {
    /// The NPC.
    pub npc: Entity,
    /// What just happened, for the model; `None` uses the player's last line.
    pub situation: Option<String>,
    /// Actions to choose from instead of the persona's.
    pub actions: Option<Vec<ActionSpec>>,
    /// Sampling for this decision.
    pub sampling: Option<SamplingParams>,
}

impl RequestAction {
    /// A decision by `npc` among its persona's actions.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            situation: None,
            actions: None,
            sampling: None,
        }
    }
    /// What just happened.
    pub fn situation(mut self, text: impl Into<String>) -> Self {
        self.situation = Some(text.into());
        self
    }
    /// Actions to choose from.
    pub fn actions(mut self, actions: Vec<ActionSpec>) -> Self {
        self.actions = Some(actions);
        self
    }
    /// Sampling for this decision.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = Some(sampling);
        self
    }
}

/// An NPC decided to act: always a declared action with valid arguments. Failures arrive as
/// [`LineFailed`].
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct NpcAction {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The action's name.
    pub name: String,
    /// Its arguments, by name.
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// A scene being written.
pub(crate) struct PendingScene {
    choices: usize,
    stream: SceneStream,
    attempts: u32,
    job: Job,
}

/// Results for scenes and actions, handed over by `receive_reports`.
#[derive(Resource, Default)]
pub(crate) struct Structured {
    pub(crate) deltas: Vec<(RequestId, String)>,
    pub(crate) done: Vec<(RequestId, Active, Vec<Generation>)>,
    pub(crate) failed: Vec<(RequestId, Active, DialogueError)>,
}

/// The built-in narrator and action templates.
#[derive(Resource)]
pub(crate) struct BuiltinStoryPrompts {
    narrator: PromptTemplate,
    action: PromptTemplate,
}

impl Default for BuiltinStoryPrompts {
    fn default() -> Self {
        Self {
            narrator: PromptTemplate::default_narrator(),
            action: PromptTemplate::default_action(),
        }
    }
}

/// Requests waiting for their assets.
#[derive(Resource, Default)]
pub(crate) struct WaitingStory {
    scenes: Vec<RequestScene>,
    actions: Vec<(RequestId, RequestAction)>,
}

/// Tries before a scene whose choices repeat is given up.
const SCENE_ATTEMPTS: u32 = 3;

/// `PostUpdate`: choices, scene requests and action requests become jobs.
#[expect(
    clippy::too_many_arguments,
    reason = "scenes need the story, its assets and the worker"
)]
pub(crate) fn request_scenes(
    mut link: ResMut<WorkerLink>,
    mut lines: ResMut<Lines>,
    mut waiting: ResMut<WaitingStory>,
    mut scene_requests: MessageReader<RequestScene>,
    mut chooses: MessageReader<ChooseOption>,
    mut stories: Query<(&Narrator, &mut Story)>,
    assets: Res<Assets<StoryAsset>>,
    prompts: Res<Assets<PromptTemplate>>,
    builtin: Res<BuiltinStoryPrompts>,
    server: Res<AssetServer>,
    world: Res<DialogueContext>,
    settings: Res<DialogueSettings>,
    model: Res<DialogueModel>,
    mut out: (MessageWriter<SceneReady>, MessageWriter<SceneFailed>),
) {
    let mut todo = std::mem::take(&mut waiting.scenes);
    todo.extend(scene_requests.read().cloned());
    for choose in chooses.read() {
        let Ok((narrator, mut story)) = stories.get_mut(choose.story) else {
            out.1.write(SceneFailed {
                story: choose.story,
                error: DialogueError::NpcNotFound(choose.story),
            });
            continue;
        };
        let goto = match story.choose(choose.index) {
            Ok(choice) => choice.goto.clone(),
            Err(e) => {
                out.1.write(SceneFailed {
                    story: choose.story,
                    error: DialogueError::Structure(e.to_string()),
                });
                continue;
            }
        };
        match goto {
            // A pinned scene: no model needed. Its asset is loaded (the story started).
            Some(id) => match assets.get(&narrator.story).and_then(|a| a.node(&id)) {
                Some(node) => {
                    let node = node.clone();
                    pin(&mut story, choose.story, &node, &mut out.0);
                }
                None => {
                    story.pending = None;
                    out.1.write(SceneFailed {
                        story: choose.story,
                        error: DialogueError::Structure(format!(
                            "scene `{id}` is not in the story asset"
                        )),
                    });
                }
            },
            None => todo.push(RequestScene::new(choose.story)),
        }
    }

    for request in todo {
        let fail = |out: &mut MessageWriter<SceneFailed>, error| {
            out.write(SceneFailed {
                story: request.story,
                error,
            });
        };
        let Ok((narrator, mut story)) = stories.get_mut(request.story) else {
            fail(&mut out.1, DialogueError::NpcNotFound(request.story));
            continue;
        };
        let asset = match asset_ready(&server, &assets, &narrator.story) {
            Ready::Yes(a) => a,
            Ready::NotYet => {
                waiting.scenes.push(request);
                continue;
            }
            Ready::Failed(e) => {
                fail(&mut out.1, DialogueError::Structure(format!("story: {e}")));
                continue;
            }
        };
        let template = match &narrator.prompt {
            None => &builtin.narrator,
            Some(handle) => match asset_ready(&server, &prompts, handle) {
                Ready::Yes(t) => t,
                Ready::NotYet => {
                    waiting.scenes.push(request);
                    continue;
                }
                Ready::Failed(e) => {
                    fail(&mut out.1, DialogueError::Template(e));
                    continue;
                }
            },
        };
        if story.nodes.is_empty()
            && let Some(node) = asset.start.as_deref().and_then(|id| asset.node(id))
        {
            let node = node.clone();
            pin(&mut story, request.story, &node, &mut out.0);
            continue;
        }
        if !story.nodes.is_empty() && story.pending.is_none() {
            fail(
                &mut out.1,
                DialogueError::Structure(
                    "the story is at a scene: take a choice (ChooseOption) first".into(),
                ),
            );
            continue;
        }
        // Pinned scenes need no model; generated ones do.
        if let ModelState::Failed(reason) = &model.state {
            fail(&mut out.1, DialogueError::ModelUnavailable(reason.clone()));
            continue;
        }
        if !(1..=8).contains(&request.alternatives) {
            fail(
                &mut out.1,
                DialogueError::InvalidRequest(format!(
                    "{} alternatives is outside 1..=8",
                    request.alternatives
                )),
            );
            continue;
        }
        let messages = match template.narrator_messages(asset, &story, &world.facts) {
            Ok(m) => m,
            Err(e) => {
                fail(&mut out.1, DialogueError::Template(e.to_string()));
                continue;
            }
        };
        let mut params = settings.defaults.clone();
        if let Some(s) = request.sampling.clone().or_else(|| asset.sampling.clone()) {
            params.sampling = s;
        }
        // Room for the longest scene (about 3 characters a token at worst) and the choices.
        params.max_tokens = asset.max_scene_chars / 3 + asset.choices * 24 + 32;
        let grammar = Grammar::json_schema(scene_schema(asset.choices, asset.max_scene_chars));
        let id = lines.next_id();
        let cancel = CancelToken::new();
        let job = Job {
            id,
            slot: request.story.to_bits(),
            messages,
            params,
            priority: Priority::Player,
            cancel: cancel.clone(),
            output: Output::Structured {
                grammar,
                alternatives: request.alternatives,
            },
        };
        lines.active.insert(
            id,
            Active {
                npc: request.story,
                cancel,
                kind: ActiveKind::Scene(Box::new(PendingScene {
                    choices: asset.choices,
                    stream: SceneStream::default(),
                    attempts: 1,
                    job: job.clone(),
                })),
            },
        );
        link.send(Command::Generate(job));
    }
}

fn pin(
    story: &mut Story,
    entity: Entity,
    node: &crate::story::FixedNode,
    ready: &mut MessageWriter<SceneReady>,
) {
    let choices = node
        .choices
        .iter()
        .map(|c| (c.text.clone(), c.goto.clone()))
        .collect();
    story.push_scene(node.text.clone(), choices, Some(node.id.clone()));
    ready.write(SceneReady {
        story: entity,
        request: None,
        text: node.text.clone(),
        choices: node.choices.iter().map(|c| c.text.clone()).collect(),
        alternatives: Vec::new(),
        stats: None,
    });
}

/// `PostUpdate`: [`RequestAction`]s become jobs.
#[expect(
    clippy::too_many_arguments,
    reason = "a decision needs the NPC, its assets and the worker"
)]
pub(crate) fn request_actions(
    mut link: ResMut<WorkerLink>,
    mut lines: ResMut<Lines>,
    mut waiting: ResMut<WaitingStory>,
    mut requests: MessageReader<RequestAction>,
    npcs: Query<(&Npc, &DialogueHistory, &NpcContext)>,
    personas: Res<Assets<Persona>>,
    builtin: Res<BuiltinStoryPrompts>,
    server: Res<AssetServer>,
    world: Res<DialogueContext>,
    settings: Res<DialogueSettings>,
    mut failed: MessageWriter<LineFailed>,
) {
    let mut todo = std::mem::take(&mut waiting.actions);
    for request in requests.read() {
        let id = lines.next_id();
        todo.push((id, request.clone()));
    }
    for (id, request) in todo {
        let fail = |failed: &mut MessageWriter<LineFailed>, error| {
            failed.write(LineFailed {
                npc: request.npc,
                request: id,
                error,
            });
        };
        let Ok((npc, history, facts)) = npcs.get(request.npc) else {
            fail(&mut failed, DialogueError::NpcNotFound(request.npc));
            continue;
        };
        let persona = match asset_ready(&server, &personas, &npc.persona) {
            Ready::Yes(p) => p,
            Ready::NotYet => {
                waiting.actions.push((id, request));
                continue;
            }
            Ready::Failed(e) => {
                fail(&mut failed, DialogueError::Persona(e));
                continue;
            }
        };
        let actions = request
            .actions
            .clone()
            .unwrap_or_else(|| persona.actions.clone());
        if actions.is_empty() {
            fail(
                &mut failed,
                DialogueError::InvalidRequest(format!(
                    "{} has no actions to choose from",
                    persona.name
                )),
            );
            continue;
        }
        let situation = request.situation.clone().unwrap_or_else(|| {
            history
                .turns
                .iter()
                .rev()
                .find(|t| t.role == crate::engine::Role::User)
                .map_or_else(|| "The player is here.".to_owned(), |t| t.content.clone())
        });
        let messages = match builtin.action.action_messages(
            persona,
            &world.facts,
            &facts.facts,
            &actions,
            &situation,
        ) {
            Ok(m) => m,
            Err(e) => {
                fail(&mut failed, DialogueError::Template(e.to_string()));
                continue;
            }
        };
        let mut params = settings.defaults.clone();
        if let Some(s) = request
            .sampling
            .clone()
            .or_else(|| persona.sampling.clone())
        {
            params.sampling = s;
        }
        params.max_tokens = 96;
        let cancel = CancelToken::new();
        let job = Job {
            id,
            // Decisions have their own cache slot, next to the NPC's conversation.
            slot: request.npc.to_bits() ^ (1 << 63),
            messages,
            params,
            priority: Priority::Player,
            cancel: cancel.clone(),
            output: Output::Structured {
                grammar: Grammar::json_schema(action_schema(&actions)),
                alternatives: 1,
            },
        };
        lines.active.insert(
            id,
            Active {
                npc: request.npc,
                cancel,
                kind: ActiveKind::Action(actions),
            },
        );
        link.send(Command::Generate(job));
    }
}

/// `PreUpdate`, after the reports: scene text, finished scenes and decisions.
/// The writers [`receive_structured`] needs.
type StoryWriters<'w> = (
    MessageWriter<'w, SceneDelta>,
    MessageWriter<'w, SceneReady>,
    MessageWriter<'w, SceneFailed>,
    MessageWriter<'w, NpcAction>,
    MessageWriter<'w, LineFailed>,
);

pub(crate) fn receive_structured(
    mut commands: Commands,
    mut structured: ResMut<Structured>,
    mut lines: ResMut<Lines>,
    mut link: ResMut<WorkerLink>,
    mut stories: Query<&mut Story>,
    mut out: StoryWriters,
) {
    for (id, text) in std::mem::take(&mut structured.deltas) {
        let Some(Active {
            npc,
            kind: ActiveKind::Scene(pending),
            ..
        }) = lines.active.get_mut(&id)
        else {
            continue;
        };
        let text = pending.stream.push(&text);
        if !text.is_empty() {
            let ev = SceneDelta {
                story: *npc,
                request: id,
                text,
            };
            out.0.write(ev.clone());
            commands.trigger(ev);
        }
    }

    for (id, active, generations) in std::mem::take(&mut structured.done) {
        let entity = active.npc;
        match active.kind {
            ActiveKind::Scene(mut pending) => {
                let mut scenes = generations
                    .iter()
                    .map(|g| Scene::parse(&g.text, pending.choices));
                let first = scenes.next().expect("at least one alternative");
                let alternatives: Vec<Scene> = scenes.filter_map(Result::ok).collect();
                match first {
                    Ok(scene) => {
                        let Ok(mut story) = stories.get_mut(entity) else {
                            continue;
                        };
                        let choices = scene.choices.iter().map(|c| (c.clone(), None)).collect();
                        story.push_scene(scene.scene.clone(), choices, None);
                        let ev = SceneReady {
                            story: entity,
                            request: Some(id),
                            text: scene.scene,
                            choices: scene.choices,
                            alternatives,
                            stats: Some(generations[0].stats.clone()),
                        };
                        out.1.write(ev.clone());
                        commands.trigger(ev);
                    }
                    Err(e) if pending.attempts < SCENE_ATTEMPTS => {
                        // Parsed, but two choices are the same: draw again.
                        tracing::debug!("scene rejected ({e}); drawing again");
                        pending.attempts += 1;
                        let seed = pending.job.params.sampling.seed.unwrap_or(0);
                        pending.job.params.sampling.seed = Some(seed.wrapping_add(1_000_003));
                        pending.stream = SceneStream::default();
                        let job = pending.job.clone();
                        lines.active.insert(
                            id,
                            Active {
                                npc: entity,
                                cancel: active.cancel,
                                kind: ActiveKind::Scene(pending),
                            },
                        );
                        link.send(Command::Generate(job));
                    }
                    Err(e) => {
                        out.2.write(SceneFailed {
                            story: entity,
                            error: DialogueError::Structure(e.to_string()),
                        });
                    }
                }
            }
            ActiveKind::Action(actions) => match parse_action(&generations[0].text, &actions) {
                Ok((name, args)) => {
                    let ev = NpcAction {
                        npc: entity,
                        request: id,
                        name,
                        args,
                    };
                    out.3.write(ev.clone());
                    if commands.get_entity(entity).is_ok() {
                        commands.trigger(ev);
                    }
                }
                Err(e) => {
                    systems::fail(
                        &mut commands,
                        &mut out.4,
                        entity,
                        id,
                        DialogueError::Structure(e.to_string()),
                    );
                }
            },
            ActiveKind::Line { .. } => {}
        }
    }

    for (id, active, error) in std::mem::take(&mut structured.failed) {
        match active.kind {
            ActiveKind::Scene(_) => {
                if let Ok(mut story) = stories.get_mut(active.npc) {
                    // The choice stays taken; asking again retries the scene.
                    story.set_changed();
                }
                out.2.write(SceneFailed {
                    story: active.npc,
                    error,
                });
            }
            _ => systems::fail(&mut commands, &mut out.4, active.npc, id, error),
        }
    }
}
