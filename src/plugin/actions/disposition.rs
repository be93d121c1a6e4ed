//! An NPC's mood and regard for the player: a component the game reads and sets, that
//! prompts see, and that the model may move after a line through a constrained decision
//! (as NPC actions are decided), never outside what the persona declares.

use bevy::prelude::*;
use serde::{Deserialize, Serialize};

use crate::action::{ActionSpec, ArgSpec};
use crate::persona::DispositionSpec;
use crate::plugin::request::RequestId;
use crate::prompt::Facts;

/// How an NPC feels: a mood from its persona's `disposition.moods` and an affinity for the
/// player inside its declared range. Insert it yourself, or let the first
/// [`UpdateDisposition`] start it from the persona. Prompts see it as the NPC facts `mood`
/// and `affinity`. Serializable, for save games.
#[derive(Component, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reflect)]
#[reflect(Component, Clone, Debug, PartialEq)]
pub struct NpcDisposition {
    /// One of the persona's moods.
    pub mood: String,
    /// Regard for the player, inside the persona's range.
    pub affinity: i32,
}

/// Asks the model how an NPC feels now (after a line, a gift, an insult). It picks a mood
/// among the persona's and moves the affinity by at most `max_step`; the result arrives as
/// [`DispositionChanged`], a failure as [`ActionFailed`](crate::plugin::ActionFailed).
#[derive(Message, Clone, Debug, Reflect)]
pub struct UpdateDisposition {
    /// The NPC.
    pub npc: Entity,
    /// What just happened, for the model; `None` uses the player's last line.
    pub situation: Option<String>,
}

impl UpdateDisposition {
    /// An update of `npc`'s disposition after what was last said.
    pub fn new(npc: Entity) -> Self {
        Self {
            npc,
            situation: None,
        }
    }
    /// What just happened.
    pub fn situation(mut self, text: impl Into<String>) -> Self {
        self.situation = Some(text.into());
        self
    }
}

/// An NPC's disposition was updated by the model (also sent when nothing changed, so that
/// every [`UpdateDisposition`] gets an answer). The component already holds `mood` and
/// `affinity`.
#[derive(Message, EntityEvent, Clone, Debug, PartialEq, Eq, Reflect)]
pub struct DispositionChanged {
    /// The NPC.
    #[event_target]
    pub npc: Entity,
    /// The request.
    pub request: RequestId,
    /// The mood before.
    pub mood_before: String,
    /// The mood now.
    pub mood: String,
    /// The affinity before.
    pub affinity_before: i32,
    /// The affinity now.
    pub affinity: i32,
}

/// The name of the decision the model makes for an update.
pub(crate) const FEEL: &str = "feel";

/// The one "action" an update chooses: a mood and a change of affinity in the step.
pub(crate) fn feel_action(spec: &DispositionSpec) -> ActionSpec {
    ActionSpec {
        name: FEEL.into(),
        description: "say how you feel about the player now: your mood, and how much your \
                      regard for them changes (negative: less, positive: more)"
            .into(),
        args: [
            ("mood".to_owned(), ArgSpec::OneOf(spec.moods.clone())),
            // The steps as a list of strings: every server's JSON-schema support takes an
            // enum, not all take integer bounds (llama-cpp-python's server ignores them).
            (
                "change".to_owned(),
                ArgSpec::OneOf(
                    (-spec.max_step..=spec.max_step)
                        .map(|step| format!("{step:+}"))
                        .collect(),
                ),
            ),
        ]
        .into_iter()
        .collect(),
    }
}

/// The disposition after a decision: the chosen mood (if it is one of the persona's), the
/// affinity moved by the change, both limited to what the persona declares.
pub(crate) fn apply(
    spec: &DispositionSpec,
    before: &NpcDisposition,
    args: &serde_json::Map<String, serde_json::Value>,
) -> NpcDisposition {
    let mood = args
        .get("mood")
        .and_then(|m| m.as_str())
        .filter(|m| spec.moods.iter().any(|s| s == m))
        .map_or_else(|| before.mood.clone(), str::to_owned);
    let change = args
        .get("change")
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|t| t.trim().parse::<i64>().ok()))
        })
        .unwrap_or(0)
        .clamp(-i64::from(spec.max_step), i64::from(spec.max_step)) as i32;
    NpcDisposition {
        mood,
        affinity: spec.clamp(before.affinity.saturating_add(change)),
    }
}

/// Applies a decision's `args` to `npc`'s disposition (`before`, or the persona's start
/// when it has none yet): inserts the new component and triggers the entity event, and
/// returns the event for the message.
pub(crate) fn change_disposition(
    commands: &mut Commands,
    spec: &DispositionSpec,
    before: Option<&NpcDisposition>,
    args: &serde_json::Map<String, serde_json::Value>,
    npc: Entity,
    request: RequestId,
) -> DispositionChanged {
    let before = before.cloned().unwrap_or_else(|| {
        let (mood, affinity) = spec.start();
        NpcDisposition { mood, affinity }
    });
    let after = apply(spec, &before, args);
    let ev = DispositionChanged {
        npc,
        request,
        mood_before: before.mood,
        mood: after.mood.clone(),
        affinity_before: before.affinity,
        affinity: after.affinity,
    };
    if let Ok(mut entity) = commands.get_entity(npc) {
        entity.try_insert(after);
        commands.trigger(ev.clone());
    }
    ev
}

/// `facts` with the disposition's `mood` and `affinity` added, for the prompt.
pub(crate) fn with_disposition(facts: &Facts, disposition: Option<&NpcDisposition>) -> Facts {
    let mut facts = facts.clone();
    if let Some(d) = disposition {
        facts.insert("mood".into(), d.mood.clone().into());
        facts.insert("affinity".into(), d.affinity.into());
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DispositionSpec {
        DispositionSpec {
            moods: vec!["calm".into(), "angry".into()],
            start_mood: None,
            affinity: (-3, 3),
            start_affinity: 9,
            max_step: 2,
        }
    }

    #[test]
    fn updates_stay_inside_what_the_persona_declares() {
        let spec = spec();
        assert_eq!(
            spec.start(),
            ("calm".to_owned(), 3),
            "the start is clamped too"
        );
        let at_top = NpcDisposition {
            mood: "calm".into(),
            affinity: 3,
        };
        let args = |mood: &str, change: i64| {
            serde_json::json!({ "mood": mood, "change": format!("{change:+}") })
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(apply(&spec, &at_top, &args("angry", 2)).affinity, 3);
        assert_eq!(apply(&spec, &at_top, &args("angry", -2)).affinity, 1);
        assert_eq!(
            apply(&spec, &at_top, &args("angry", -50)).affinity,
            1,
            "one step"
        );
        assert_eq!(apply(&spec, &at_top, &args("furious", 0)).mood, "calm");
        assert_eq!(apply(&spec, &at_top, &args("angry", 0)).mood, "angry");
        let steps = match &feel_action(&spec).args["change"] {
            ArgSpec::OneOf(steps) => steps.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(steps, ["-2", "-1", "+0", "+1", "+2"]);
    }
}
