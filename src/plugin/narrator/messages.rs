//! The narrator: an entity whose [`Story`] it tells, scene by scene, with choices.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::settings::LineSettings;

use crate::engine::{GenerationStats, SamplingParams};
use crate::plugin::request::{DialogueError, RequestId};
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
#[derive(Message, Clone, Debug, Reflect)]
pub struct RequestScene {
    /// The entity with the [`Narrator`].
    pub story: Entity,
    /// How many alternative scenes to write (1..=8), sharing the prompt's computation;
    /// the first becomes the story's scene, the rest arrive in
    /// [`SceneFinished::alternatives`].
    pub alternatives: usize,
    /// Settings for these scenes only, over the plugin's and the story's, field by field
    /// (`max_tokens`, `max_sentences` and `best_of` do not apply: a scene's length comes from
    /// the story).
    pub settings: LineSettings,
    /// How many choices this scene offers (within [`CHOICES`](crate::story::CHOICES));
    /// `None` takes the story's `choices`.
    pub choices: Option<usize>,
    /// What this scene should do ("the guard blocks the gate"), added to the narrator's ask
    /// for this scene only.
    pub direction: Option<String>,
    /// The id results will carry (see [`RequestLine::id`](crate::plugin::RequestLine::id)).
    pub id: Option<RequestId>,
}

impl RequestScene {
    /// The next scene of `story`.
    pub fn new(story: Entity) -> Self {
        Self {
            story,
            alternatives: 1,
            settings: LineSettings::default(),
            choices: None,
            direction: None,
            id: None,
        }
    }
    /// Writes `n` alternatives.
    pub fn alternatives(mut self, n: usize) -> Self {
        self.alternatives = n;
        self
    }
    /// Sampling for this scene.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.settings = LineSettings::merge([&self.settings, &LineSettings::from(&sampling)]);
        self
    }
    /// A fixed seed for these scenes, keeping the story's other settings.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }
    /// These settings over the request's, field by field.
    pub fn settings(mut self, settings: LineSettings) -> Self {
        self.settings = LineSettings::merge([&self.settings, &settings]);
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
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct ChooseOption {
    /// The entity with the [`Narrator`].
    pub story: Entity,
    /// Which choice, from 0.
    pub index: usize,
}

/// More scene text as the narrator writes it.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
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
/// reaching the model to [`SceneFinished`] or [`SceneFailed`] (or a [`CancelLine`](crate::plugin::CancelLine)).
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
        crate::plugin::notify::notify(commands, &mut self.failed, ev);
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
        crate::plugin::notify::notify(commands, &mut self.finished, ev);
    }
}
