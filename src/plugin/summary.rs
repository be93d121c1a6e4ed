//! Long conversations remember what they drop: when an NPC's history passes
//! [`DialogueSettings::summarize_after`] turns, the model writes a short note of the oldest
//! ones, which replaces them in [`DialogueHistory::summary`] and goes into every later prompt
//! (the persona never leaves the prompt; the note keeps names, places and promises).

use bevy::prelude::*;

use crate::plugin::env::RequestEnv;

use super::assets::DialogueAssets;
use super::in_flight::{ActiveKind, Dispatcher, Inbox, Progress};
use super::npc::{DialogueHistory, Npc, Speaking};
use super::request::{DialogueSettings, Priority};
use crate::engine::{CancelToken, SamplingParams};
use crate::prompt::summary_messages;
use crate::worker::{Job, Output};

/// Registers the systems that ask for history summaries and file them.
pub(crate) struct SummariesPlugin;

impl Plugin for SummariesPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            PreUpdate,
            deliver_summaries
                .in_set(super::Flow::Summaries)
                .in_set(super::DialogueSystems::Receive),
        )
        .add_systems(
            PostUpdate,
            summarize_histories
                .in_set(super::Flow::Summaries)
                .in_set(super::DialogueSystems::Dispatch),
        );
    }
}

/// On an NPC while the model summarises its oldest turns.
#[derive(Component, Clone, Copy, Debug)]
pub(crate) struct Summarizing;

/// After a failed summary: the next try waits until the history has this many turns (a
/// server that is down is not asked every frame).
#[derive(Component, Clone, Copy, Debug)]
pub(crate) struct SummaryRetry(usize);

/// What the summary system reads of an NPC.
type SummaryCandidate<'a> = (
    Entity,
    &'a Npc,
    &'a DialogueHistory,
    Option<&'a SummaryRetry>,
);

/// The longest note, in tokens.
const SUMMARY_TOKENS: usize = 96;

/// The turns a summary of `history` replaces: all but the newest half of `keep`, an even
/// number (whole exchanges).
fn turns_to_summarize(len: usize, keep: usize) -> usize {
    let n = len.saturating_sub(keep / 2);
    n - n % 2
}

/// `PostUpdate`, after lines are sent: NPCs whose history is past the setting, and who are
/// not speaking, get their oldest turns summarised.
pub(crate) fn summarize_histories(
    mut commands: Commands,
    mut dispatcher: Dispatcher,
    npcs: Query<SummaryCandidate, (Without<Summarizing>, Without<Speaking>)>,
    assets: DialogueAssets,
    env: RequestEnv,
    settings: Res<DialogueSettings>,
) {
    let Some(keep) = settings.summarize_after.filter(|&k| k >= 2) else {
        return;
    };
    if env.unavailable().is_some() {
        return;
    }
    for (entity, npc, history, retry) in &npcs {
        if history.turns.len() <= keep || retry.is_some_and(|r| history.turns.len() < r.0) {
            continue;
        }
        let Some(persona) = assets.persona(&npc.persona).or_fail(|_| ()).ok().flatten() else {
            continue;
        };
        let n = turns_to_summarize(history.turns.len(), keep);
        if n == 0 {
            continue;
        }
        let name = &persona.name;
        let messages = summary_messages(name, history.summary.as_deref(), &history.turns[..n]);
        let mut params = settings.defaults.clone();
        params.max_tokens = SUMMARY_TOKENS;
        params.max_sentences = Some(3);
        params.whole_sentences = true;
        params.sampling = SamplingParams {
            temperature: 0.0,
            ..params.sampling
        };
        let id = dispatcher.in_flight.next_id();
        let job = Job {
            recall: None,
            id,
            // Summaries have their own cache slot, next to the NPC's conversation.
            slot: entity.to_bits() ^ (1 << 62),
            messages,
            params,
            priority: Priority::Background,
            cancel: CancelToken::new(),
            output: Output::Text {
                best_of: 1,
                speaker: name.clone(),
            },
        };
        dispatcher.send(job, entity, ActiveKind::Summary { turns: n });
        commands.entity(entity).try_insert(Summarizing);
    }
}

/// `PreUpdate`, after the reports: a finished summary replaces the turns it covers.
pub(crate) fn deliver_summaries(
    mut commands: Commands,
    mut inbox: ResMut<Inbox>,
    mut histories: Query<&mut DialogueHistory>,
) {
    let mut retry_at = None;
    for (request, npc, progress) in std::mem::take(&mut inbox.summaries) {
        match progress {
            Progress::Started(_) | Progress::Delta(_) => continue,
            Progress::Done(active, generations) => {
                let ActiveKind::Summary { turns } = active.kind else {
                    continue;
                };
                let text = generations
                    .first()
                    .map(|g| g.text.trim().to_owned())
                    .unwrap_or_default();
                if let Ok(mut history) = histories.get_mut(npc)
                    && !text.is_empty()
                {
                    // Lines that finished meanwhile were appended: the oldest `turns` are
                    // still the ones summarised.
                    let turns = turns.min(history.turns.len());
                    history.turns.drain(..turns);
                    history.replace_summary(text);
                }
            }
            Progress::Failed(error) => {
                // Nothing is dropped: the turns stay, and the next try waits for the next
                // exchange.
                tracing::warn!(?npc, ?request, "summary failed: {error}");
                retry_at = histories.get(npc).ok().map(|h| h.turns.len() + 2);
            }
        }
        if let Ok(mut entity) = commands.get_entity(npc) {
            entity.try_remove::<Summarizing>();
            match retry_at.take() {
                Some(turns) => entity.try_insert(SummaryRetry(turns)),
                None => entity.try_remove::<SummaryRetry>(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::turns_to_summarize;

    #[test]
    fn whole_exchanges_are_summarised_and_half_the_limit_stays() {
        assert_eq!(turns_to_summarize(16, 8), 12);
        assert_eq!(turns_to_summarize(9, 8), 4);
        assert_eq!(turns_to_summarize(3, 2), 2);
    }
}
