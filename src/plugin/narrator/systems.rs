//! The systems behind the narrator: choices are taken and pinned scenes shown at once;
//! generated scenes go to the worker under the scene schema (`PostUpdate`); the worker's
//! reports become [`SceneDelta`]s and [`SceneFinished`] or [`SceneFailed`] (`PreUpdate`).

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::messages::{
    ChooseOption, Narrating, Narrator, RequestScene, SceneDelta, SceneFinished, SceneWriters,
};
use crate::engine::{CancelToken, Generation};
use crate::plugin::assets::{DialogueAssets, Ready};
use crate::plugin::content::LineFiltered;
use crate::plugin::env::RequestEnv;
use crate::plugin::in_flight::{ActiveKind, Dispatcher, InFlight, Inbox, PendingScene, Progress};
use crate::plugin::request::{DialogueError, Priority, RequestId};
use crate::prompt::PromptTemplate;
use crate::settings::LineSettings;
use crate::story::{FixedNode, Scene, Story, StoryAsset};
use crate::worker::{Job, Output};

/// Scene requests waiting for their story or prompt asset.
#[derive(Resource, Default)]
pub(crate) struct WaitingScenes(Vec<RequestScene>);

/// Scene requests: those still waiting, then the new ones.
#[derive(SystemParam)]
pub(crate) struct SceneRequests<'w, 's> {
    waiting: ResMut<'w, WaitingScenes>,
    requests: MessageReader<'w, 's, RequestScene>,
}

impl SceneRequests<'_, '_> {
    /// Every request to try this frame, oldest first.
    fn take(&mut self) -> Vec<RequestScene> {
        let mut todo = std::mem::take(&mut self.waiting.0);
        todo.extend(self.requests.read().cloned());
        todo
    }

    /// Tries `request` again next frame.
    fn wait(&mut self, request: RequestScene) {
        self.waiting.0.push(request);
    }
}

/// Draws before a scene whose choices repeat is given up.
const SCENE_ATTEMPTS: u32 = 3;

/// `PostUpdate`: [`ChooseOption`]s. A choice that leads to a pinned scene shows it at once;
/// any other waits for the narrator.
pub(crate) fn take_choices(
    mut commands: Commands,
    mut chooses: MessageReader<ChooseOption>,
    mut waiting: ResMut<WaitingScenes>,
    mut stories: Query<(&Narrator, &mut Story)>,
    assets: Res<Assets<StoryAsset>>,
    mut out: SceneWriters,
) {
    for choose in chooses.read() {
        let entity = choose.story;
        let Ok((narrator, mut story)) = stories.get_mut(entity) else {
            out.not_a_narrator(&mut commands, entity);
            continue;
        };
        if !out.valid(&mut commands, entity, &story) {
            continue;
        }
        let goto = match story.choose(choose.index) {
            Ok(choice) => choice.goto.clone(),
            Err(e) => {
                let error = DialogueError::Structure(e.to_string());
                out.fail(&mut commands, entity, None, error);
                continue;
            }
        };
        let Some(id) = goto else {
            waiting.0.push(RequestScene::new(entity));
            continue;
        };
        // A pinned scene: no model needed. Its asset is loaded (the story started).
        match assets.get(&narrator.story).and_then(|a| a.node(&id)) {
            Some(node) => pin(&mut commands, &mut story, entity, node, &mut out),
            None => {
                story.pending = None;
                let error =
                    DialogueError::Structure(format!("scene `{id}` is not in the story asset"));
                out.fail(&mut commands, entity, None, error);
            }
        }
    }
}

/// `PostUpdate`: [`RequestScene`]s become jobs once their assets are loaded; an opening that
/// the author pinned is shown at once.
pub(crate) fn dispatch_scenes(
    mut commands: Commands,
    mut dispatcher: Dispatcher,
    mut requests: SceneRequests,
    mut stories: Query<(&Narrator, &mut Story)>,
    assets: DialogueAssets,
    env: RequestEnv,
    mut out: SceneWriters,
) {
    for request in requests.take() {
        let entity = request.story;
        let Ok((narrator, mut story)) = stories.get_mut(entity) else {
            out.not_a_narrator(&mut commands, entity);
            continue;
        };
        if !out.valid(&mut commands, entity, &story) {
            continue;
        }
        // One scene at a time per story: a flood of requests must not render a prompt each.
        if dispatcher.in_flight.scene_of(entity).is_some() {
            let error = DialogueError::QueueFull(
                "the narrator is already writing a scene for this story".into(),
            );
            out.fail(&mut commands, entity, None, error);
            continue;
        }
        let asset = match assets.story(&narrator.story) {
            Ready::Yes(a) => a,
            Ready::NotYet => {
                requests.wait(request);
                continue;
            }
            Ready::Failed(e) => {
                let error = DialogueError::Structure(format!("story: {e}"));
                out.fail(&mut commands, entity, None, error);
                continue;
            }
        };
        let template = match assets.prompt(narrator.prompt.as_ref(), &assets.builtin.narrator) {
            Ready::Yes(t) => t,
            Ready::NotYet => {
                requests.wait(request);
                continue;
            }
            Ready::Failed(e) => {
                out.fail(&mut commands, entity, None, DialogueError::Template(e));
                continue;
            }
        };
        if story.nodes.is_empty()
            && let Some(node) = asset.start.as_deref().and_then(|id| asset.node(id))
        {
            pin(&mut commands, &mut story, entity, node, &mut out);
            continue;
        }
        let id = request.id.unwrap_or_else(|| dispatcher.in_flight.next_id());
        match scene_job(
            id,
            &request,
            &story,
            (narrator.story.id(), asset),
            template,
            &env,
        ) {
            Ok(job) => {
                let pending = PendingScene {
                    choices: request.choices.unwrap_or(asset.choices),
                    attempts: 1,
                    job: job.clone(),
                };
                dispatcher.send(job, entity, ActiveKind::Scene(Box::new(pending)));
                commands
                    .entity(entity)
                    .try_insert(Narrating { request: id });
            }
            Err(error) => out.fail(&mut commands, entity, None, error),
        }
    }
}

/// The job for the next generated scene of `story`.
fn scene_job(
    id: RequestId,
    request: &RequestScene,
    story: &Story,
    (asset_id, asset): (AssetId<StoryAsset>, &StoryAsset),
    template: &PromptTemplate,
    env: &RequestEnv,
) -> Result<Job, DialogueError> {
    if !story.nodes.is_empty() && story.pending.is_none() {
        return Err(DialogueError::Structure(
            "the story is at a scene: take a choice (ChooseOption) first".into(),
        ));
    }
    // Pinned scenes need no model; generated ones do.
    if let Some(error) = env.unavailable() {
        return Err(error);
    }
    if !(1..=8).contains(&request.alternatives) {
        return Err(DialogueError::InvalidRequest(format!(
            "{} alternatives is outside 1..=8",
            request.alternatives
        )));
    }
    let choices = request.choices.unwrap_or(asset.choices);
    if !crate::story::CHOICES.contains(&choices) {
        return Err(DialogueError::InvalidRequest(format!(
            "{choices} choices is outside {:?}",
            crate::story::CHOICES
        )));
    }
    let mut messages = template
        .narrator_messages(asset, story, &env.world.facts, &[&env.world.lore])
        .map_err(|e| DialogueError::Template(e.to_string()))?;
    if let Some(direction) = &request.direction {
        if direction.len() > crate::prompt::MAX_TURN_BYTES {
            return Err(DialogueError::InvalidRequest(format!(
                "the scene's direction is {} bytes; the limit is {}",
                direction.len(),
                crate::prompt::MAX_TURN_BYTES
            )));
        }
        // The newest ask is the narrator's last user turn.
        if let Some(ask) = messages.last_mut() {
            ask.content = format!("{} {direction}", ask.content);
        }
    }
    let story_layer = asset
        .sampling
        .as_ref()
        .map(LineSettings::from)
        .unwrap_or_default();
    let mut params =
        LineSettings::merge([&story_layer, &request.settings]).applied_to(&env.settings.defaults);
    // The prose's budget: about four characters a token. It ends at a sentence end.
    params.max_tokens = (asset.max_scene_chars / 4).max(16);
    params.guard = env
        .policies
        .story(asset_id, &env.content, asset)
        .guard
        .clone();
    Ok(Job {
        recall: None,
        id,
        slot: request.story.to_bits(),
        messages,
        params,
        priority: Priority::Player,
        cancel: CancelToken::new(),
        output: Output::Scene {
            choices,
            alternatives: request.alternatives,
        },
    })
}

/// Shows a pinned scene: it becomes the story's current scene at once.
fn pin(
    commands: &mut Commands,
    story: &mut Story,
    entity: Entity,
    node: &FixedNode,
    out: &mut SceneWriters,
) {
    let choices = node
        .choices
        .iter()
        .map(|c| (c.text.clone(), c.goto.clone()))
        .collect();
    story.push_scene(node.text.clone(), choices, Some(node.id.clone()));
    let ev = SceneFinished {
        story: entity,
        request: None,
        text: node.text.clone(),
        choices: node.choices.iter().map(|c| c.text.clone()).collect(),
        alternatives: Vec::new(),
        stats: None,
    };
    out.finish(commands, ev);
}

/// `PreUpdate`, after the reports: scene text as it streams, finished scenes, failures.
pub(crate) fn deliver_scenes(
    mut commands: Commands,
    mut inbox: ResMut<Inbox>,
    mut dispatcher: Dispatcher,
    mut stories: Query<&mut Story>,
    mut out: SceneWriters,
    mut filtered: MessageWriter<LineFiltered>,
) {
    for (request, entity, progress) in std::mem::take(&mut inbox.scenes) {
        match progress {
            Progress::Started(_) => {}
            Progress::Delta(text) => {
                let ev = SceneDelta {
                    story: entity,
                    request,
                    text,
                };
                crate::plugin::notify::notify(&mut commands, &mut out.delta, ev);
            }
            Progress::Done(active, mut generations) => {
                let ActiveKind::Scene(pending) = active.kind else {
                    continue;
                };
                // A scene's prose ends at its last sentence end when the policy cuts it;
                // there is no fallback line for a narrator.
                for generation in &mut generations {
                    let (actions, _) = crate::plugin::content::settle(generation, None);
                    for (rule, action) in actions {
                        let ev = LineFiltered {
                            npc: entity,
                            request,
                            rule,
                            action,
                        };
                        crate::plugin::content::report(&mut commands, &mut filtered, ev);
                    }
                }
                let Ok(mut story) = stories.get_mut(entity) else {
                    continue;
                };
                let outcome = finish_scene(request, entity, *pending, &generations, &mut story);
                match outcome {
                    SceneOutcome::Finished(ev) => {
                        still_narrating(&mut commands, &dispatcher.in_flight, entity);
                        out.finish(&mut commands, *ev);
                    }
                    SceneOutcome::Again(pending) => {
                        let job = pending.job.clone();
                        dispatcher.send(job, entity, ActiveKind::Scene(pending));
                    }
                    SceneOutcome::Failed(error) => {
                        still_narrating(&mut commands, &dispatcher.in_flight, entity);
                        out.fail(&mut commands, entity, Some(request), error);
                    }
                }
            }
            Progress::Failed(error) => {
                if let Ok(mut story) = stories.get_mut(entity) {
                    // The choice stays taken; asking again retries the scene.
                    story.set_changed();
                }
                still_narrating(&mut commands, &dispatcher.in_flight, entity);
                out.fail(&mut commands, entity, Some(request), error);
            }
        }
    }
}

/// After a scene ends: [`Narrating`] names the story's next scene at the worker, or goes.
fn still_narrating(commands: &mut Commands, in_flight: &InFlight, story: Entity) {
    let Ok(mut entity) = commands.get_entity(story) else {
        return;
    };
    match in_flight.scene_of(story) {
        Some(request) => entity.try_insert(Narrating { request }),
        None => entity.try_remove::<Narrating>(),
    };
}

/// What a finished generation means for the story.
enum SceneOutcome {
    Finished(Box<SceneFinished>),
    /// Two choices were the same: draw again.
    Again(Box<PendingScene>),
    Failed(DialogueError),
}

fn finish_scene(
    request: RequestId,
    entity: Entity,
    mut pending: PendingScene,
    generations: &[Generation],
    story: &mut Story,
) -> SceneOutcome {
    let mut scenes = generations.chunks(2).map(|pair| match pair {
        [scene, list] => Scene::from_prose(&scene.text, &list.text, pending.choices),
        _ => Err(crate::story::StoryError::Malformed(
            "a scene without choices".into(),
        )),
    });
    let Some(first) = scenes.next() else {
        return SceneOutcome::Failed(DialogueError::Structure("no scene came back".into()));
    };
    let alternatives: Vec<Scene> = scenes.filter_map(Result::ok).collect();
    match first {
        Ok(scene) => {
            let choices = scene.choices.iter().map(|c| (c.clone(), None)).collect();
            story.push_scene(scene.scene.clone(), choices, None);
            SceneOutcome::Finished(Box::new(SceneFinished {
                story: entity,
                request: Some(request),
                text: scene.scene,
                choices: scene.choices,
                alternatives,
                stats: Some(generations[0].stats.clone()),
            }))
        }
        Err(e) if pending.attempts < SCENE_ATTEMPTS => {
            // Not prose (a title, markup) or two choices the same: draw again.
            tracing::debug!("scene rejected ({e}); drawing again");
            pending.attempts += 1;
            // A fixed seed moves on (the same seed would draw the same scene); no seed stays
            // a fresh draw.
            if let Some(seed) = &mut pending.job.params.sampling.seed {
                *seed = seed.wrapping_add(1_000_003);
            }
            SceneOutcome::Again(Box::new(pending))
        }
        Err(e) => SceneOutcome::Failed(DialogueError::Structure(e.to_string())),
    }
}
