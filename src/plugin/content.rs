//! Content control in the plugin: the game's [`ContentPolicy`] (a resource) with each
//! persona's and story's additions guards every line and scene as it is generated, checks
//! the player's lines, and reports what it did as [`LineFiltered`].

use bevy::prelude::*;

use super::request::{DialogueError, RequestId};
use crate::content::{ContentPolicy, PlayerLineCheck};
use crate::engine::{Generation, StopReason};

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
#[derive(Message, EntityEvent, Clone, Debug)]
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

/// The player's line as the model may see it: `Ok((line, censored rule))`, or the refusal.
pub(crate) fn check_player_line(
    policy: &ContentPolicy,
    line: &str,
) -> Result<(String, Option<String>), DialogueError> {
    if policy.player_input == PlayerLineCheck::Allow {
        return Ok((line.to_owned(), None));
    }
    let filter = policy.filter();
    let Some(hit) = filter.check_input(line) else {
        return Ok((line.to_owned(), None));
    };
    match &policy.player_input {
        PlayerLineCheck::Reject(message) => Err(DialogueError::Rejected {
            rule: hit.rule,
            message: message.clone(),
        }),
        _ => Ok((filter.censor_input(line), Some(hit.rule))),
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
    let Some(fallback) = fallback.filter(|_| !whole) else {
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
