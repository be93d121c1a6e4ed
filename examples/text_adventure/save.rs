//! Saving and loading: the game state, the transcript, the story graph and every
//! conversation go to one RON file, written and read on the IO pool so the frame never waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bevy::prelude::*;
use bevy::tasks::IoTaskPool;
use bevy_llm_dialogue::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::{Character, Entry, GameState, Speaker, StoryTeller, Transcript};

/// A saved game.
#[derive(Serialize, Deserialize)]
pub(super) struct SaveData {
    pub(super) state: GameState,
    pub(super) transcript: Vec<Entry>,
    pub(super) story: Story,
    /// Each character's conversation, by character id.
    pub(super) histories: BTreeMap<String, DialogueHistory>,
}

/// Saves and loads run on the IO pool; their results come back here.
#[derive(Resource)]
pub(super) struct SaveIo {
    done: Sender<IoResult>,
    results: Receiver<IoResult>,
}

impl Default for SaveIo {
    fn default() -> Self {
        let (done, results) = crossbeam_channel::unbounded();
        Self { done, results }
    }
}

impl SaveIo {
    /// Writes `data` to `path` in the background.
    pub(super) fn save(&self, path: PathBuf, data: SaveData) {
        let done = self.done.clone();
        IoTaskPool::get()
            .spawn(async move {
                let _ = done.send(write_save(&path, &data));
            })
            .detach();
    }

    /// Reads `path` in the background.
    pub(super) fn load(&self, path: PathBuf) {
        let done = self.done.clone();
        IoTaskPool::get()
            .spawn(async move {
                let _ = done.send(read_save(&path));
            })
            .detach();
    }
}

enum IoResult {
    Saved(PathBuf),
    Loaded(Box<SaveData>),
    Failed(String),
}

fn write_save(path: &Path, data: &SaveData) -> IoResult {
    let text = match ron::ser::to_string_pretty(data, ron::ser::PrettyConfig::default()) {
        Ok(text) => text,
        Err(e) => return IoResult::Failed(format!("could not save: {e}")),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return IoResult::Failed(format!("could not create {}: {e}", dir.display()));
    }
    match std::fs::write(path, text) {
        Ok(()) => IoResult::Saved(path.to_owned()),
        Err(e) => IoResult::Failed(format!("could not write {}: {e}", path.display())),
    }
}

fn read_save(path: &Path) -> IoResult {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return IoResult::Failed(format!("no saved game at {}: {e}", path.display())),
    };
    match ron::from_str(&text) {
        Ok(data) => IoResult::Loaded(Box::new(data)),
        Err(e) => IoResult::Failed(format!("{} is not a saved game: {e}", path.display())),
    }
}

/// Applies finished saves and loads.
pub(super) fn finish_io(
    io: Res<SaveIo>,
    mut state: ResMut<GameState>,
    mut transcript: ResMut<Transcript>,
    mut story: Single<&mut Story, With<StoryTeller>>,
    mut characters: Query<(Entity, &Character, &mut DialogueHistory)>,
    mut cancel: MessageWriter<CancelLine>,
) {
    while let Ok(result) = io.results.try_recv() {
        let data = match result {
            IoResult::Saved(path) => {
                let text = format!("Saved to {}.", path.display());
                transcript.push(Speaker::Game, text);
                continue;
            }
            IoResult::Failed(error) => {
                transcript.push(Speaker::Game, error);
                continue;
            }
            IoResult::Loaded(data) => data,
        };
        // Lines and decisions in flight belong to the old game.
        for (npc, character, mut history) in &mut characters {
            cancel.write(CancelLine { npc });
            *history = data
                .histories
                .get(character.id)
                .cloned()
                .unwrap_or_default();
        }
        *state = data.state;
        **story = data.story;
        *transcript = Transcript::restored(data.transcript);
        transcript.push(Speaker::Game, "Game loaded.");
    }
}
