//! Components that make an entity a talking NPC, and the facts its prompt sees.

use bevy::prelude::*;
use serde::{Deserialize, Serialize};

use super::request::RequestId;
use crate::engine::ChatMessage;
use crate::memory::Episode;
use crate::persona::Persona;
use crate::prompt::{Facts, PromptTemplate};

/// An NPC that talks. Spawning this is enough: the other components it needs are added.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// fn spawn(mut commands: Commands, assets: Res<AssetServer>) {
///     commands.spawn(Npc::new(assets.load("personas/mira.persona.ron")));
/// }
/// ```
#[derive(Component, Clone, Debug, Reflect)]
#[reflect(Component, Clone, Debug)]
#[require(DialogueHistory, NpcContext)]
pub struct Npc {
    /// Who the NPC is.
    pub persona: Handle<Persona>,
    /// How the persona becomes a prompt; `None` uses the built-in
    /// [`DEFAULT_NPC_TEMPLATE`](crate::prompt::DEFAULT_NPC_TEMPLATE).
    pub prompt: Option<Handle<PromptTemplate>>,
}

impl Npc {
    /// An NPC with the default prompt template.
    pub fn new(persona: Handle<Persona>) -> Self {
        Self {
            persona,
            prompt: None,
        }
    }
    /// Uses another prompt template.
    pub fn with_prompt(mut self, prompt: Handle<PromptTemplate>) -> Self {
        self.prompt = Some(prompt);
        self
    }
}

/// The conversation so far: the player's lines (`user`) and the NPC's (`assistant`).
/// Finished lines are appended automatically. Serializable, for save games.
#[derive(Component, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reflect)]
#[reflect(Component, Clone, Debug, Default, PartialEq)]
pub struct DialogueHistory {
    /// Oldest first.
    pub turns: Vec<ChatMessage>,
    /// What the NPC remembers whatever the history keeps: facts the game recorded with
    /// [`remember`](Self::remember), oldest first. They go into every prompt next to the
    /// newest turn and are saved with the history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memories: Vec<String>,
    /// The model's note of turns that were summarised away
    /// ([`DialogueSettings::summarize_after`](super::DialogueSettings)); it goes into every
    /// prompt next to the newest turn and is saved with the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Every moment the NPC lived through, oldest first, up to
    /// [`MAX_EPISODES`](Self::MAX_EPISODES): each exchange (appended with its turns, kept
    /// after the turns are summarised or dropped), memories pushed out of
    /// [`memories`](Self::memories) and summaries replaced by newer ones. Those the prompt
    /// does not show are searched for what the player's new line is about
    /// ([`DialogueSettings::recall_moments`](super::DialogueSettings::recall_moments)).
    /// Saved with the history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub episodes: Vec<Episode>,
}

impl DialogueHistory {
    /// The most turns kept: past it, the oldest are dropped as new ones arrive. Prompts use
    /// the newest [`MAX_HISTORY_TURNS`](crate::prompt::MAX_HISTORY_TURNS) at most.
    pub const MAX_TURNS: usize = 256;

    /// Appends an exchange (the player's line, if any, and the NPC's reply) and drops the
    /// oldest turns past [`MAX_TURNS`](Self::MAX_TURNS). An empty reply adds nothing: a
    /// player turn without an answer would make strict chat templates refuse every later line.
    pub fn push_exchange(&mut self, player_line: Option<String>, reply: String) {
        if reply.is_empty() {
            return;
        }
        if let Some(line) = &player_line {
            self.turns.push(ChatMessage::user(line.clone()));
        }
        self.turns.push(ChatMessage::assistant(reply.clone()));
        let excess = self.turns.len().saturating_sub(Self::MAX_TURNS);
        self.turns.drain(..excess);
        self.record(Episode::Exchange {
            said: player_line,
            reply,
        });
    }

    /// The most episodes kept: past it, the oldest are forgotten.
    pub const MAX_EPISODES: usize = 512;

    /// Appends an episode, forgetting the oldest past [`MAX_EPISODES`](Self::MAX_EPISODES).
    pub fn record(&mut self, episode: Episode) {
        self.episodes.push(episode);
        let excess = self.episodes.len().saturating_sub(Self::MAX_EPISODES);
        self.episodes.drain(..excess);
    }

    /// Replaces the summary; the one it replaces becomes an episode.
    pub(crate) fn replace_summary(&mut self, summary: String) {
        if let Some(old) = self.summary.replace(summary) {
            self.record(Episode::Summary(old));
        }
    }

    /// The episodes the prompt does not show: all but the exchanges whose reply is among
    /// the turns a prompt sees ([`conversation`](crate::prompt::conversation)).
    pub fn unseen_episodes(&self) -> Vec<Episode> {
        crate::memory::unseen(&self.episodes, &crate::prompt::conversation(&self.turns))
    }

    /// The most memories kept: past it, the oldest leaves every prompt and becomes an
    /// [`Episode::Memory`], recalled when the player's line is about it.
    pub const MAX_MEMORIES: usize = 32;

    /// The longest memory, in bytes (a longer one is cut at a character boundary).
    pub const MAX_MEMORY_BYTES: usize = 512;

    /// Records something the NPC should remember from now on ("the player returned the
    /// ring"). A memory already kept is not repeated; blank text is ignored.
    pub fn remember(&mut self, fact: impl Into<String>) {
        let mut fact: String = fact.into().trim().to_owned();
        if fact.len() > Self::MAX_MEMORY_BYTES {
            let mut end = Self::MAX_MEMORY_BYTES;
            while !fact.is_char_boundary(end) {
                end -= 1;
            }
            fact.truncate(end);
        }
        if fact.is_empty() || self.memories.contains(&fact) {
            return;
        }
        self.memories.push(fact);
        let excess = self.memories.len().saturating_sub(Self::MAX_MEMORIES);
        let forgotten: Vec<String> = self.memories.drain(..excess).collect();
        for memory in forgotten {
            self.record(Episode::Memory(memory));
        }
    }

    /// The memories as a lorebook whose entries are always in, for the prompt.
    pub(crate) fn memory_lore(&self) -> crate::lore::Lorebook {
        let summary = self.summary.as_ref().map(|s| format!("Earlier: {s}"));
        crate::lore::Lorebook {
            entries: summary
                .iter()
                .chain(&self.memories)
                .map(|m| crate::lore::LoreEntry {
                    constant: true,
                    content: if m.ends_with(['.', '!', '?']) {
                        m.clone()
                    } else {
                        format!("{m}.")
                    },
                    ..crate::lore::LoreEntry::default()
                })
                .collect(),
            token_budget: Self::MAX_MEMORIES * Self::MAX_MEMORY_BYTES / 4,
            ..crate::lore::Lorebook::default()
        }
    }
}

/// Present while the NPC is speaking (from [`LineStarted`](super::LineStarted) to the end).
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
#[reflect(Component, Clone, Debug, PartialEq)]
pub struct Speaking {
    /// The line being spoken.
    pub request: RequestId,
}

/// Facts about one NPC for its prompt template (`{{ npc.mood }}`): quest flags, mood,
/// what the player gave them.
#[derive(Component, Clone, Debug, Default, PartialEq, Serialize, Deserialize, Reflect)]
#[reflect(Component, Clone, Debug, Default, PartialEq)]
pub struct NpcContext {
    /// Key/values the template sees as `npc`.
    pub facts: Facts,
}

impl NpcContext {
    /// Sets a fact.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.facts.insert(key.into(), value.into());
    }
}

/// Facts about the world for every prompt template (`{{ world.time_of_day }}`).
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, Reflect)]
#[reflect(Resource, Clone, Debug, Default, PartialEq)]
pub struct DialogueContext {
    /// Key/values the template sees as `world`.
    pub facts: Facts,
    /// Lore every NPC may be told: entries fire on words in the recent turns or on `facts`
    /// and go next to the newest turn ([`Lorebook`](crate::lore::Lorebook)).
    #[serde(default)]
    #[reflect(ignore)]
    pub lore: crate::lore::Lorebook,
}

impl DialogueContext {
    /// Sets a fact.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.facts.insert(key.into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_are_whole_and_the_history_is_bounded() {
        let mut history = DialogueHistory::default();
        history.push_exchange(Some("Hello?".into()), String::new());
        assert!(history.turns.is_empty(), "no player turn without a reply");
        history.push_exchange(None, "Welcome.".into());
        assert_eq!(history.turns, [ChatMessage::assistant("Welcome.")]);
        for i in 0..DialogueHistory::MAX_TURNS {
            history.push_exchange(Some(format!("q{i}")), "a".into());
        }
        assert_eq!(history.turns.len(), DialogueHistory::MAX_TURNS);
        assert_eq!(history.turns.last(), Some(&ChatMessage::assistant("a")));
    }
}
