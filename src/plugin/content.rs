//! Content control in the plugin: the game's [`ContentPolicy`] (a resource) with each
//! persona's and story's additions guards every line and scene as it is generated, checks
//! the player's lines, and reports what it did as [`LineFiltered`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bevy::prelude::*;

use super::DialogueSystems;
use super::request::{DialogueError, RequestId};
use crate::content::{ContentFilter, ContentPolicy, IdentityCheck, PlayerLineCheck};
use crate::engine::Guard;
use crate::engine::{Generation, StopReason};
use crate::persona::Persona;
use crate::story::StoryAsset;

/// Registers the content policy and its message, and warms the profanity filter up.
pub(crate) struct ContentPlugin;

impl Plugin for ContentPlugin {
    fn build(&self, app: &mut App) {
        // The profanity filter's tables take tens of milliseconds to build: not on the main
        // thread at the first player line a policy checks. A failed spawn only means the
        // first check builds them.
        let _ = std::thread::Builder::new()
            .name("llm-dialogue-content-warm-up".into())
            .spawn(ContentFilter::warm_up);
        app.init_resource::<ContentPolicy>()
            .init_resource::<LinePolicies>()
            .register_type::<LineFiltered>()
            .add_message::<LineFiltered>()
            .add_systems(
                PostUpdate,
                forget_changed_policies.before(DialogueSystems::Dispatch),
            );
    }
}

/// Each persona's and story's [`LinePolicy`], built once per version of the asset and of
/// the game's [`ContentPolicy`]: building a filter takes time that grows with its lists, and
/// requests are prepared on the main thread.
#[derive(Resource, Default)]
pub(crate) struct LinePolicies {
    personas: Mutex<HashMap<AssetId<Persona>, Arc<LinePolicy>>>,
    stories: Mutex<HashMap<AssetId<StoryAsset>, Arc<LinePolicy>>>,
}

impl LinePolicies {
    /// The policy of lines spoken as `persona` (the asset behind `id`).
    pub(crate) fn persona(
        &self,
        id: AssetId<Persona>,
        game: &ContentPolicy,
        persona: &Persona,
    ) -> Arc<LinePolicy> {
        let mut cache = self.personas.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(id)
            .or_insert_with(|| {
                Arc::new(LinePolicy::new(
                    game.with_override(persona.content.as_ref()),
                    persona.identity_check(),
                ))
            })
            .clone()
    }

    /// The policy of scenes of `story` (the asset behind `id`).
    pub(crate) fn story(
        &self,
        id: AssetId<StoryAsset>,
        game: &ContentPolicy,
        story: &StoryAsset,
    ) -> Arc<LinePolicy> {
        let mut cache = self.stories.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(id)
            .or_insert_with(|| {
                let mut policy = game.with_override(story.content.as_ref());
                policy.banned.extend(crate::prompt::example_echoes(story));
                Arc::new(LinePolicy::new(policy, None))
            })
            .clone()
    }
}

/// Forgets the policies of personas and stories that changed or went away, and all of
/// them when the game's policy changed.
fn forget_changed_policies(
    game: Res<ContentPolicy>,
    mut personas: MessageReader<AssetEvent<Persona>>,
    mut stories: MessageReader<AssetEvent<StoryAsset>>,
    cache: Res<LinePolicies>,
) {
    let mut by_persona = cache.personas.lock().unwrap_or_else(|e| e.into_inner());
    let mut by_story = cache.stories.lock().unwrap_or_else(|e| e.into_inner());
    if game.is_changed() {
        by_persona.clear();
        by_story.clear();
    }
    for event in personas.read() {
        if let AssetEvent::Modified { id }
        | AssetEvent::Removed { id }
        | AssetEvent::Unused { id } = event
        {
            by_persona.remove(id);
        }
    }
    for event in stories.read() {
        if let AssetEvent::Modified { id }
        | AssetEvent::Removed { id }
        | AssetEvent::Unused { id } = event
        {
            by_story.remove(id);
        }
    }
}

/// What the content policy did to a line, a scene or a player's line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reflect)]
#[reflect(Clone, Debug, PartialEq)]
pub enum FilterAction {
    /// Text that broke the rule was taken back as it formed and written again; nothing of it
    /// was shown.
    Resampled,
    /// The line kept breaking rules past the rollback budget and ended at its last sentence
    /// end.
    Cut,
    /// The line kept breaking rules and had nothing whole to say: the fallback line followed
    /// what was shown.
    Fallback,
    /// The player's line was censored before the model saw it.
    CensoredInput,
    /// The player's line was refused ([`DialogueError::Rejected`]).
    RejectedInput,
}

/// The content policy acted on a line (one message per hit): for logs, moderation counters
/// and debug displays. The line itself arrives as usual.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct LineFiltered {
    /// The NPC (or the narrator, for a scene).
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The rule: `banned: dragon`, `profanity`, `out of character: as an ai`.
    pub rule: String,
    /// What was done.
    pub action: FilterAction,
}

/// Sends a [`LineFiltered`] as a message, and as an entity event while its entity exists.
pub(crate) fn report(
    commands: &mut Commands,
    filtered: &mut MessageWriter<LineFiltered>,
    ev: LineFiltered,
) {
    crate::plugin::notify::notify(commands, filtered, ev);
}

/// A line's policy, ready: its filter, the guard for the generator, the fallback line.
pub(crate) struct LinePolicy {
    pub(crate) policy: ContentPolicy,
    pub(crate) filter: ContentFilter,
    pub(crate) guard: Option<Guard>,
    /// Empty when the configured line itself breaks the policy (a persona that bans a word
    /// of the game's fallback line): then nothing is added.
    pub(crate) fallback: String,
}

impl LinePolicy {
    /// The policy of lines by a character kept to `identity` (none for a narrator).
    pub(crate) fn new(policy: ContentPolicy, identity: Option<IdentityCheck>) -> Self {
        let filter = policy.filter();
        let guard = policy.guard_for_character(filter.clone(), identity);
        let fallback = match filter.check(&policy.fallback_line) {
            Some(hit) => {
                tracing::warn!(
                    "the fallback line {:?} breaks its own content policy ({}); none is used",
                    policy.fallback_line,
                    hit.rule
                );
                String::new()
            }
            None => policy.fallback_line.clone(),
        };
        Self {
            policy,
            filter,
            guard,
            fallback,
        }
    }

    /// The player's line as the model may see it: `Ok((line, censored rule))`, or the
    /// refusal. One pass of the filter over the line (a few microseconds a word).
    pub(crate) fn check_player_line(
        &self,
        line: &str,
    ) -> Result<(String, Option<String>), DialogueError> {
        if self.policy.player_input == PlayerLineCheck::Allow {
            return Ok((line.to_owned(), None));
        }
        let Some(hit) = self.filter.check(line) else {
            return Ok((line.to_owned(), None));
        };
        match &self.policy.player_input {
            PlayerLineCheck::Reject(message) => Err(DialogueError::Rejected {
                rule: hit.rule,
                message: message.clone(),
            }),
            _ => Ok((self.filter.censor(line), Some(hit.rule))),
        }
    }
}

/// The actions for a finished generation's hits, in order; a line that ended early and has
/// nothing whole to say gets `fallback` after what was shown (returned, to stream).
pub(crate) fn settle(
    generation: &mut Generation,
    fallback: Option<&str>,
) -> (Vec<(String, FilterAction)>, Option<String>) {
    let mut actions: Vec<(String, FilterAction)> = generation
        .filtered
        .iter()
        .take(generation.stats.rollbacks)
        .map(|rule| (rule.clone(), FilterAction::Resampled))
        .collect();
    if generation.stop_reason != StopReason::Filtered {
        return (actions, None);
    }
    let rule = generation.filtered.last().cloned().unwrap_or_default();
    let text = generation.text.trim_end_matches('…');
    let whole = !text.is_empty() && text.len() == generation.text.len();
    let Some(fallback) = fallback.filter(|f| !whole && !f.is_empty()) else {
        actions.push((rule, FilterAction::Cut));
        return (actions, None);
    };
    actions.push((rule, FilterAction::Fallback));
    let extra = if generation.text.is_empty() {
        fallback.to_owned()
    } else {
        format!(" {fallback}")
    };
    generation.text.push_str(&extra);
    (actions, Some(extra))
}
