//! The transcript: everything said so far, with lines and scenes streaming in as the
//! plugin's messages arrive.

use std::collections::HashMap;

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use serde::{Deserialize, Serialize};

use super::{DebugInfo, name_of};

/// Who says a transcript entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Speaker {
    /// The narrator's scene text.
    Narrator,
    /// The player.
    Player,
    /// A character, by name.
    Npc(String),
    /// The game itself: items, doors, errors.
    Game,
}

/// One entry of the transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Who speaks.
    pub speaker: Speaker,
    /// What they said so far.
    pub text: String,
    /// Still streaming in.
    pub streaming: bool,
}

/// Everything said so far, oldest first.
#[derive(Resource, Clone, Debug, Default)]
pub struct Transcript {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Which entry a streaming request writes to.
    streams: HashMap<RequestId, usize>,
}

impl Transcript {
    /// A transcript of saved entries, none of them streaming.
    pub(super) fn restored(mut entries: Vec<Entry>) -> Self {
        for entry in &mut entries {
            entry.streaming = false;
        }
        Self {
            entries,
            streams: HashMap::new(),
        }
    }

    /// Adds a finished entry.
    pub(super) fn push(&mut self, speaker: Speaker, text: impl Into<String>) {
        self.entries.push(Entry {
            speaker,
            text: text.into(),
            streaming: false,
        });
    }

    /// The entry `request` streams into, started on its first delta.
    fn stream(&mut self, request: RequestId, speaker: Speaker) -> &mut Entry {
        let index = match self.streams.get(&request) {
            Some(&i) => i,
            None => {
                self.entries.push(Entry {
                    speaker,
                    text: String::new(),
                    streaming: true,
                });
                let i = self.entries.len() - 1;
                self.streams.insert(request, i);
                i
            }
        };
        &mut self.entries[index]
    }

    /// Ends `request`'s entry with the final text (the whole text, for a pinned scene).
    fn finish(&mut self, request: RequestId, speaker: Speaker, text: &str) {
        let entry = self.stream(request, speaker);
        entry.text = text.to_owned();
        entry.streaming = false;
        self.streams.remove(&request);
    }

    /// Ends `request`'s entry where it stopped (a failed line or scene); the entry, if it
    /// had started.
    fn abandon(&mut self, request: RequestId) -> Option<&mut Entry> {
        let i = self.streams.remove(&request)?;
        self.entries[i].streaming = false;
        Some(&mut self.entries[i])
    }

    /// Whether any entry is still streaming.
    pub fn is_streaming(&self) -> bool {
        !self.streams.is_empty()
    }
}

/// Characters' lines, as messages: they stream into the transcript.
#[expect(
    clippy::too_many_arguments,
    reason = "a system's parameters: every line message it records"
)]
pub(super) fn record_lines(
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    names: Query<&Name>,
    mut started: MessageReader<LineStarted>,
    mut deltas: MessageReader<LineDelta>,
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
    mut interrupted: MessageReader<LineInterrupted>,
) {
    let speaker = |npc: Entity| Speaker::Npc(name_of(&names, npc));
    for line in started.read() {
        debug.last_prompt = line.prompt.to_string();
    }
    for delta in deltas.read() {
        transcript
            .stream(delta.request, speaker(delta.npc))
            .text
            .push_str(&delta.text);
    }
    for line in finished.read() {
        transcript.finish(line.request, speaker(line.npc), &line.text);
        debug.tokens_per_second = line.stats.decode_tokens_per_second();
    }
    // A line of a conversation the player cut into: it stops where it was.
    for line in interrupted.read() {
        if let Some(entry) = transcript.abandon(line.request) {
            entry.text.push_str(" —");
        }
    }
    for line in failed.read() {
        transcript.abandon(line.request);
        let who = name_of(&names, line.npc);
        let text = format!("({who} cannot answer: {})", line.error);
        transcript.push(Speaker::Game, text);
    }
}

/// The narrator's scenes, as messages: generated ones stream in, pinned ones arrive whole.
pub(super) fn record_scenes(
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    mut deltas: MessageReader<SceneDelta>,
    mut finished: MessageReader<SceneFinished>,
    mut failed: MessageReader<SceneFailed>,
) {
    for delta in deltas.read() {
        transcript
            .stream(delta.request, Speaker::Narrator)
            .text
            .push_str(&delta.text);
    }
    for scene in finished.read() {
        match scene.request {
            Some(request) => transcript.finish(request, Speaker::Narrator, &scene.text),
            None => transcript.push(Speaker::Narrator, scene.text.clone()),
        }
        if let Some(stats) = &scene.stats {
            debug.tokens_per_second = stats.decode_tokens_per_second();
        }
    }
    for scene in failed.read() {
        if let Some(request) = scene.request {
            transcript.abandon(request);
        }
        let text = format!("(The narrator falters: {})", scene.error);
        transcript.push(Speaker::Game, text);
    }
}
