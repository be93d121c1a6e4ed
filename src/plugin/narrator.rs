//! The narrator: an entity whose [`Story`] it tells, scene by scene, with choices.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::request::{DialogueError, RequestId};
use crate::engine::{GenerationStats, SamplingParams};
use crate::prompt::PromptTemplate;
use crate::story::{Scene, Story, StoryAsset};

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
#[derive(Component, Clone, Debug, Reflect)]
#[reflect(Component, Clone, Debug)]
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
    /// [`SceneFinished::alternatives`].
    pub alternatives: usize,
    /// Sampling for this scene only.
    pub sampling: Option<SamplingParams>,
    /// How many choices this scene offers (within [`CHOICES`](crate::story::CHOICES));
    /// `None` takes the story's `choices`.
    pub choices: Option<usize>,
    /// What this scene should do ("the guard blocks the gate"), added to the narrator's ask
    /// for this scene only.
    pub direction: Option<String>,
}

impl RequestScene {
    /// The next scene of `story`.
    pub fn new(story: Entity) -> Self {
        Self {
            story,
            alternatives: 1,
            sampling: None,
            choices: None,
            direction: None,
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
    /// Offers `n` choices in this scene instead of the story's number.
    pub fn choices(mut self, n: usize) -> Self {
        self.choices = Some(n);
        self
    }
    /// A direction for this scene only, added to the narrator's ask.
    pub fn direction(mut self, direction: impl Into<String>) -> Self {
        self.direction = Some(direction.into());
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

/// A scene is finished and is now the story's current scene.
#[derive(Message, EntityEvent, Clone, Debug)]
pub struct SceneFinished {
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
    /// The request, once the scene was sent to the model (`None` for a refused choice or a
    /// request refused before it was sent).
    pub request: Option<RequestId>,
    /// What went wrong.
    pub error: DialogueError,
}

/// The old name of [`SceneFinished`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `SceneFinished` (results are `*Finished`)"
)]
pub type SceneReady = SceneFinished;

/// Present on a story entity while the narrator writes its next scene: from the request
/// reaching the model to [`SceneFinished`] or [`SceneFailed`] (or a [`CancelLine`](super::CancelLine)).
/// A game disables its choice buttons while it is there.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
#[reflect(Component, Clone, Debug, PartialEq)]
pub struct Narrating {
    /// The scene being written.
    pub request: RequestId,
}

/// The writers of every scene result.
#[derive(SystemParam)]
pub(crate) struct SceneWriters<'w> {
    pub(crate) delta: MessageWriter<'w, SceneDelta>,
    pub(crate) finished: MessageWriter<'w, SceneFinished>,
    pub(crate) failed: MessageWriter<'w, SceneFailed>,
}

impl SceneWriters<'_> {
    /// Sends a [`SceneFailed`] as a message, and as an entity event while the story exists.
    pub(crate) fn fail(
        &mut self,
        commands: &mut Commands,
        story: Entity,
        request: Option<RequestId>,
        error: DialogueError,
    ) {
        tracing::warn!(?story, ?request, "scene failed: {error}");
        let ev = SceneFailed {
            story,
            request,
            error,
        };
        self.failed.write(ev.clone());
        if commands.get_entity(story).is_ok() {
            commands.trigger(ev);
        }
    }

    /// The entity asked about is not a story.
    pub(crate) fn not_a_narrator(&mut self, commands: &mut Commands, entity: Entity) {
        self.fail(commands, entity, None, DialogueError::NotANarrator(entity));
    }

    /// Whether a story (from a save, a scene file, reflection) is valid to use; a bad one
    /// gets a [`SceneFailed`] and is left as it was (nothing is lost).
    pub(crate) fn valid(&mut self, commands: &mut Commands, entity: Entity, story: &Story) -> bool {
        match story.validate() {
            Ok(()) => true,
            Err(e) => {
                let error = DialogueError::Structure(e.to_string());
                self.fail(commands, entity, None, error);
                false
            }
        }
    }

    /// Sends a [`SceneFinished`] as a message and as an entity event.
    pub(crate) fn finish(&mut self, commands: &mut Commands, ev: SceneFinished) {
        self.finished.write(ev.clone());
        commands.trigger(ev);
    }
}
