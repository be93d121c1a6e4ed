//! Episodic memory: the moments an NPC lived through (exchanges with the player, memories
//! that no longer fit in every prompt, notes of summarised turns), found again by relevance
//! when the player says something new.
//!
//! An NPC's prompt shows its newest turns, its summary and its remembered facts; everything
//! older is an [`Episode`]. For each new player line, a [`Recall`] ranks the episodes the
//! prompt does not show against the line, and the best few, within a token budget, go into
//! the prompt before the question ([`RecallQuery::messages`]). The default, [`Bm25Recall`], ranks by
//! BM25 over stemmed words without stop words and needs no model; a game can plug in
//! embeddings by implementing [`Recall`].
//!
//! Retrieval runs on the inference worker's thread when the job arrives, never on the
//! game's main thread (an embedding model may take milliseconds).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::ChatMessage;

/// One moment an NPC remembers. Serializable: it is saved with the NPC's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[cfg_attr(feature = "bevy", reflect(Clone, Debug, PartialEq))]
pub enum Episode {
    /// An exchange: the player's line (none when the NPC spoke first) and the NPC's reply.
    Exchange {
        /// What the player said.
        said: Option<String>,
        /// What the NPC answered.
        reply: String,
    },
    /// A memory the game recorded that was pushed out of the NPC's always-remembered ones.
    Memory(String),
    /// A note of turns that were summarised away, replaced by a newer note.
    Summary(String),
}

impl Episode {
    /// The text retrieval ranks: every word of the moment.
    pub fn text(&self) -> String {
        match self {
            Self::Exchange {
                said: Some(said),
                reply,
            } => format!("{said}\n{reply}"),
            Self::Exchange { said: None, reply } => reply.clone(),
            Self::Memory(text) | Self::Summary(text) => text.clone(),
        }
    }

    /// The moment as the NPC `speaker` recalls it, the player named `player`:
    /// `the traveler said: "…" Mira said: "…"`.
    pub fn recalled(&self, speaker: &str, player: &str) -> String {
        match self {
            Self::Exchange {
                said: Some(said),
                reply,
            } => format!("{player} said: \"{said}\" {speaker} said: \"{reply}\""),
            Self::Exchange { said: None, reply } => format!("{speaker} said: \"{reply}\""),
            Self::Memory(text) | Self::Summary(text) => sentence(text),
        }
    }
}

/// `text` ending in a full stop if it has no sentence end.
fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.ends_with(['.', '!', '?', '"']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The `episodes` a prompt does not show: all but the exchanges whose reply is among the
/// assistant turns of `shown` (the turns the prompt holds).
pub fn unseen(episodes: &[Episode], shown: &[ChatMessage]) -> Vec<Episode> {
    let shown: std::collections::HashSet<&str> = shown
        .iter()
        .filter(|t| t.role == crate::engine::Role::Assistant)
        .map(|t| t.content.as_str())
        .collect();
    episodes
        .iter()
        .filter(|e| match e {
            Episode::Exchange { reply, .. } => !shown.contains(reply.as_str()),
            Episode::Memory(_) | Episode::Summary(_) => true,
        })
        .cloned()
        .collect()
}

/// Puts `recalled` ([`RecallQuery::messages`]) into a prompt: after the history, before the
/// system notes that sit by the newest turn (the facts asked about, a direction) and the
/// newest turn itself, so that those stay next to it.
pub fn insert_recalled(messages: &mut Vec<ChatMessage>, recalled: Vec<ChatMessage>) {
    let newest = messages.len().saturating_sub(1);
    let mut at = newest;
    while at > 1 && messages[at - 1].role == crate::engine::Role::System {
        at -= 1;
    }
    messages.splice(at..at, recalled);
}

/// Finds the moments that matter to what was just said. Implement it to retrieve by
/// embeddings instead of [`Bm25Recall`]'s words; it runs on the inference worker's thread.
pub trait Recall: Send + Sync + 'static {
    /// The indices into `moments` of those most relevant to `query`, best first, at most
    /// `limit`; none where nothing relates. An index out of range is ignored.
    fn recall(&self, query: &str, moments: &[&str], limit: usize) -> Vec<usize>;
}

/// The default [`Recall`]: BM25 over the words of each moment, stemmed ("sisters" finds
/// "sister") and without stop words ("what", "the"), through the `bm25` crate. Needs no
/// model; moments that share no word with the query are never recalled.
#[derive(Clone, Debug)]
pub struct Bm25Recall {
    /// The language of stemming and stop words.
    pub language: bm25::Language,
}

impl Default for Bm25Recall {
    fn default() -> Self {
        Self {
            language: bm25::Language::English,
        }
    }
}

impl Recall for Bm25Recall {
    fn recall(&self, query: &str, moments: &[&str], limit: usize) -> Vec<usize> {
        if moments.is_empty() || limit == 0 {
            return Vec::new();
        }
        let engine = bm25::SearchEngineBuilder::<usize>::with_documents(
            self.language.clone(),
            moments
                .iter()
                .enumerate()
                .map(|(i, text)| bm25::Document::new(i, *text)),
        )
        .build();
        let mut found: Vec<(usize, f32)> = engine
            .search(query, None)
            .into_iter()
            .filter(|r| r.score > 0.0)
            .map(|r| (r.document.id, r.score))
            .collect();
        // Ties go to the newer moment, whatever order the index returned them in.
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        found.into_iter().take(limit).map(|(i, _)| i).collect()
    }
}

/// What a line asks of episodic memory: the player's line, the moments its prompt does not
/// show, and how much of them may come back. Carried by the worker's job and answered on the
/// worker's thread.
#[derive(Clone)]
pub struct RecallQuery {
    /// What the player just said.
    pub query: String,
    /// The moments to search, oldest first.
    pub episodes: Vec<Episode>,
    /// The NPC's name, for the note.
    pub speaker: String,
    /// The player's name, for the note.
    pub player: String,
    /// The most moments recalled.
    pub limit: usize,
    /// The most tokens of recalled moments (counted as four bytes a token, as lorebooks
    /// are); a moment that does not fit is left out.
    pub token_budget: usize,
    /// What ranks the moments.
    pub recall: Arc<dyn Recall>,
}

impl fmt::Debug for RecallQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecallQuery")
            .field("query", &self.query)
            .field("episodes", &self.episodes.len())
            .field("speaker", &self.speaker)
            .field("limit", &self.limit)
            .field("token_budget", &self.token_budget)
            .finish_non_exhaustive()
    }
}

impl RecallQuery {
    /// The episodes recalled, in the order they happened, within the limit and the budget.
    pub fn recalled(&self) -> Vec<&Episode> {
        let texts: Vec<String> = self.episodes.iter().map(Episode::text).collect();
        let moments: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut left = self.token_budget.saturating_mul(4);
        let mut picked: Vec<usize> = Vec::new();
        // More candidates than the limit, so that one over the budget leaves room for the next.
        let candidates = self.limit.saturating_mul(4);
        for i in self.recall.recall(&self.query, &moments, candidates) {
            if i >= self.episodes.len() || picked.contains(&i) || picked.len() >= self.limit {
                continue;
            }
            let len = self.episodes[i].recalled(&self.speaker, &self.player).len();
            if len <= left {
                left -= len;
                picked.push(i);
            }
        }
        picked.sort_unstable();
        picked.into_iter().map(|i| &self.episodes[i]).collect()
    }

    /// The recalled moments as messages for the prompt, oldest first: each exchange as the
    /// turns it was (the player's line, the NPC's reply; a reply nobody prompted alone, as
    /// the NPC's turn after the player's `…`), memories and notes in one system note
    /// (`Mira remembers: …`). Empty when nothing is recalled.
    ///
    /// As turns, an exchange from long ago is answered from as if it had just been said: on
    /// the quality suite the answer named a fact recalled this way in 24 % of the questions,
    /// against 17 % for the same moments as a [`note`](Self::note) and 0 % without recall
    /// (QUALITY.md, "Recall").
    pub fn messages(&self) -> Vec<ChatMessage> {
        let recalled = self.recalled();
        let notes: Vec<String> = recalled
            .iter()
            .filter(|e| !matches!(e, Episode::Exchange { .. }))
            .map(|e| e.recalled(&self.speaker, &self.player))
            .collect();
        let mut messages = Vec::new();
        if !notes.is_empty() {
            messages.push(ChatMessage::system(format!(
                "{} remembers: {}",
                self.speaker,
                notes.join(" ")
            )));
        }
        for episode in recalled {
            if let Episode::Exchange { said, reply } = episode {
                messages.push(ChatMessage::user(said.as_deref().unwrap_or("…")));
                messages.push(ChatMessage::assistant(reply));
            }
        }
        messages
    }

    /// The note that goes next to the player's line, `None` when nothing is recalled:
    /// `Mira remembers, from long ago: the traveler said: "…" Mira said: "…"`.
    pub fn note(&self) -> Option<String> {
        let recalled = self.recalled();
        if recalled.is_empty() {
            return None;
        }
        let moments: Vec<String> = recalled
            .iter()
            .map(|e| e.recalled(&self.speaker, &self.player))
            .collect();
        Some(format!(
            "{} remembers, from long ago: {}",
            self.speaker,
            moments.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(said: &str, reply: &str) -> Episode {
        Episode::Exchange {
            said: Some(said.into()),
            reply: reply.into(),
        }
    }

    fn query(line: &str, episodes: Vec<Episode>) -> RecallQuery {
        RecallQuery {
            query: line.into(),
            episodes,
            speaker: "Mira".into(),
            player: "Ann".into(),
            limit: 2,
            token_budget: 64,
            recall: Arc::new(Bm25Recall::default()),
        }
    }

    #[test]
    fn the_moment_that_shares_stemmed_words_is_recalled_from_hundreds() {
        let mut episodes: Vec<Episode> = (0..300)
            .map(|i| exchange(&format!("How is the forge today, {i}?"), "Hot, as always."))
            .collect();
        episodes.insert(
            17,
            exchange("My sister Elda lives in Harrowgate.", "Elda? A fine name."),
        );
        episodes.push(Episode::Memory("The player owes Mira ten coins".into()));
        let q = query("Do you remember my sister?", episodes);
        assert_eq!(
            q.recalled(),
            [&exchange(
                "My sister Elda lives in Harrowgate.",
                "Elda? A fine name."
            )]
        );
        let note = q.note().unwrap();
        assert!(
            note.starts_with("Mira remembers, from long ago: Ann said: \"My sister Elda"),
            "{note}"
        );
        // Stop words alone find nothing.
        assert!(query("What is the", q.episodes.clone()).note().is_none());
    }

    #[test]
    fn recalled_moments_keep_their_order_and_the_budget() {
        let episodes = vec![
            Episode::Summary("Ann asked about the coins".into()),
            exchange("The coins are under the bridge.", "Under the bridge, then."),
            exchange("Coins, coins, coins!", &"x".repeat(400)),
        ];
        let q = query("Where are the coins?", episodes);
        let recalled = q.recalled();
        // The long one is over the budget; the others come oldest first.
        assert_eq!(recalled.len(), 2, "{recalled:?}");
        assert!(matches!(recalled[0], Episode::Summary(_)));
        assert_eq!(
            recalled[0].recalled("Mira", "Ann"),
            "Ann asked about the coins."
        );
        assert!(q.note().unwrap().len() <= q.token_budget * 4 + 64);
    }

    #[test]
    fn recalled_exchanges_become_turns_before_the_notes_by_the_question() {
        let q = query(
            "Where is my sister?",
            vec![
                exchange("My sister went to Harrowgate.", "Harrowgate, then."),
                Episode::Memory("The player's sister owes Mira a horse".into()),
            ],
        );
        let mut messages = vec![
            ChatMessage::system("You are Mira."),
            ChatMessage::user("Hello."),
            ChatMessage::assistant("Hello yourself."),
            ChatMessage::system("Mira knows: the road is closed."),
            ChatMessage::user("Where is my sister?"),
        ];
        insert_recalled(&mut messages, q.messages());
        assert_eq!(
            messages[3..],
            [
                ChatMessage::system("Mira remembers: The player's sister owes Mira a horse."),
                ChatMessage::user("My sister went to Harrowgate."),
                ChatMessage::assistant("Harrowgate, then."),
                ChatMessage::system("Mira knows: the road is closed."),
                ChatMessage::user("Where is my sister?"),
            ]
        );
        // Nothing recalled: the prompt is as it was.
        let mut same = messages.clone();
        insert_recalled(&mut same, query("Weather?", vec![]).messages());
        assert_eq!(same, messages);
    }

    #[test]
    fn a_recall_that_returns_nonsense_indices_is_harmless() {
        struct Wild;
        impl Recall for Wild {
            fn recall(&self, _: &str, _: &[&str], _: usize) -> Vec<usize> {
                vec![99, 0, 0, 1, 1, 1]
            }
        }
        let mut q = query("anything", vec![exchange("a", "b"), exchange("c", "d")]);
        q.recall = Arc::new(Wild);
        q.limit = 5;
        assert_eq!(q.recalled().len(), 2);
    }
}
