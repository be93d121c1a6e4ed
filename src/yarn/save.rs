//! Saving a bridged conversation: the node, the variables and what was generated.

use std::collections::BTreeMap;

use bevy::prelude::Query;
use bevy_yarnspinner::prelude::{DialogueRunner, YarnValue};
use serde::{Deserialize, Serialize};

use super::{YarnError, YarnTranscript};

/// The most generated entries a save may hold.
pub const MAX_SAVED_ENTRIES: usize = 4096;

/// A Yarn variable's value in a save.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SavedValue {
    /// A number.
    Number(f32),
    /// A string.
    Text(String),
    /// A boolean.
    Bool(bool),
}

impl From<&YarnValue> for SavedValue {
    fn from(value: &YarnValue) -> Self {
        match value {
            YarnValue::Number(n) => Self::Number(*n),
            YarnValue::String(s) => Self::Text(s.clone()),
            YarnValue::Boolean(b) => Self::Bool(*b),
        }
    }
}

impl From<&SavedValue> for YarnValue {
    fn from(value: &SavedValue) -> Self {
        match value {
            SavedValue::Number(n) => Self::Number(*n),
            SavedValue::Text(s) => Self::String(s.clone()),
            SavedValue::Bool(b) => Self::Boolean(*b),
        }
    }
}

/// A bridged runner's state for a save file (serde: RON, JSON, ...): the node it is in, its
/// variables, and everything generated with its line ids. Restoring starts the node again
/// from its top; the commands in it replay what was generated instead of asking the model.
///
/// ```no_run
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::yarn::{YarnSave, YarnTranscript};
/// # use bevy_yarnspinner::prelude::DialogueRunner;
/// fn save(runner: Single<(&DialogueRunner, &YarnTranscript)>) {
///     let save = YarnSave::capture(runner.0, runner.1);
///     let text = ron::to_string(&save).unwrap();
///     // ... write `text` to the save file
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct YarnSave {
    /// The node the runner was in, if it was running.
    pub node: Option<String>,
    /// Every Yarn variable, by name with its `$`.
    pub variables: BTreeMap<String, SavedValue>,
    /// What was generated, and how often each node had started before this one.
    pub transcript: YarnTranscript,
}

impl YarnSave {
    /// The state of `runner` now.
    pub fn capture(runner: &DialogueRunner, transcript: &YarnTranscript) -> Self {
        let node = runner.is_running().then(|| runner.current_node()).flatten();
        let mut transcript = transcript.clone();
        // The newest entries only (a game may have pushed more itself): a save its own
        // restore refuses would lose the game.
        let over = transcript.entries.len().saturating_sub(MAX_SAVED_ENTRIES);
        transcript.entries.drain(..over);
        // Restoring starts the node again, which counts as its visit again.
        if let Some(node) = &node
            && let Some(visits) = transcript.visits.get_mut(node)
        {
            *visits = visits.saturating_sub(1);
        }
        let variables = runner
            .variable_storage()
            .variables()
            .iter()
            .map(|(k, v)| (k.clone(), SavedValue::from(v)))
            .collect();
        Self {
            node,
            variables,
            transcript,
        }
    }

    /// Puts this state into `runner` and its transcript: the variables now (a running runner
    /// is stopped first), then, after the runner's next update, the node from its top (the
    /// bridge starts it). A save that names a node the project
    /// lacks, or holds more than [`MAX_SAVED_ENTRIES`] entries, is refused and nothing
    /// changes.
    pub fn restore(
        &self,
        runner: &mut DialogueRunner,
        transcript: &mut YarnTranscript,
    ) -> Result<(), YarnError> {
        if self.transcript.entries.len() > MAX_SAVED_ENTRIES {
            return Err(YarnError::BadSave(format!(
                "{} generated entries; the limit is {MAX_SAVED_ENTRIES}",
                self.transcript.entries.len()
            )));
        }
        if let Some(node) = &self.node
            && !runner.node_exists(node)
        {
            return Err(YarnError::BadSave(format!(
                "the node `{node}` is not in the Yarn project"
            )));
        }
        if runner.is_running() {
            runner.stop();
        }
        let storage = runner.variable_storage_mut();
        for (name, value) in &self.variables {
            if let Err(e) = storage.set(name.clone(), value.into()) {
                tracing::warn!("Yarn bridge: the save's {name} was refused: {e}");
            }
        }
        *transcript = YarnTranscript {
            entries: self.transcript.entries.clone(),
            visits: self.transcript.visits.clone(),
            in_visit: 0,
            replay: self.transcript.entries.clone(),
            restart: self.node.clone().map(|node| super::Restart {
                node,
                visits: self.transcript.visits.clone(),
                armed: false,
            }),
        };
        Ok(())
    }
}

/// `Update`, after the runners: a restored runner starts its node, with the visits as saved
/// (a runner stopped by the restore has just sent the events of what it was doing, which
/// counted as visits).
pub(super) fn restart_restored(mut runners: Query<(&mut DialogueRunner, &mut YarnTranscript)>) {
    for (mut runner, mut transcript) in &mut runners {
        let Some(restart) = transcript.restart.as_mut() else {
            continue;
        };
        if !restart.armed {
            // The runner updates once first, wherever in the frame the restore happened.
            restart.armed = true;
            continue;
        }
        let Some(super::Restart { node, visits, .. }) = transcript.restart.take() else {
            continue;
        };
        transcript.visits = visits;
        if runner.is_running() {
            runner.stop();
        }
        if let Err(e) = runner.try_start_node(&node) {
            tracing::warn!("Yarn bridge: the restored node `{node}` could not start: {e}");
        }
    }
}
