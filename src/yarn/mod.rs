//! Authored and generated dialogue together: a bridge to Yarn Spinner (feature `yarn`).
//!
//! Writers keep the story beats, quest logic and key lines in `.yarn` files and ask the model
//! for lines and options where variety helps. Four Yarn commands do the asking; each holds
//! the runner until its result is there, and puts the result in Yarn variables that the
//! script shows like any other text:
//!
//! ```yarn
//! <<generate_line Guard "greet the traveller and mention the wolves" "Evening. Mind the wolves.">>
//! Guard: {$llm_line}
//! <<generate_options 3 "what the traveller could do at the gate" "Pay the toll|Turn back">>
//! <<if $llm_choice == 1>>
//!     <<generate_reply Guard "{$llm_choice_text}" "Hm.">>
//!     Guard: {$llm_line}
//! <<endif>>
//! ```
//!
//! - `generate_line NPC [direction] [fallback]`: the NPC (its `Name`, or its persona's
//!   name) says something; `direction` is told to the model for this line only.
//! - `generate_reply NPC player_line [fallback]`: the NPC answers what the player said.
//! - `generate_action NPC [situation]`: the NPC decides among its persona's actions; the
//!   decision sets `$NPC_action` (below) before the runner goes on.
//! - `generate_options N [direction] [fallback]`: the runner's narrator
//!   ([`YarnBridge::narrator`]) writes a short scene and `N` choices (2..=6) under the scene
//!   choices' guarantees (exactly `N`, non-empty, pairwise distinct). They arrive as
//!   [`GeneratedOptions`]; the game answers with [`ChooseGenerated`]. `fallback` is the
//!   options to offer without a model, separated by `|`. With a fourth argument `beside`,
//!   the runner goes on once they are written, and the script shows them among its own
//!   options: `-> {$llm_option_1}`.
//!
//! Lines stream as [`GeneratedLineDelta`]s while the runner waits, then end in
//! [`GeneratedLineFinished`]; the variables are `$llm_line` and `$llm_speaker` for lines,
//! `$llm_scene`, `$llm_option_1`..`$llm_option_N`, `$llm_choice` (1-based; 0 when nothing
//! was chosen) and `$llm_choice_text` for options. Declare the ones a script reads
//! (`<<declare $llm_line = "">>`).
//!
//! Quest state flows both ways: every Yarn variable of a bridged runner is a world fact the
//! prompt templates see (without its `$`), and NPC actions and dispositions set variables
//! named after the NPC: `$guard_action` (the action's name), `$guard_action_ARG` (each
//! argument), `$guard_mood` and `$guard_affinity`.
//!
//! Every generated line and set of options has its own line id, `llm:NODE:VISIT:N`, and is
//! kept in the runner's [`YarnTranscript`]; [`YarnSave`] captures the node, the variables
//! and the transcript, and after [`YarnSave::restore`] a command that runs again at the same
//! place replays what was generated instead of asking the model again.
//!
//! Nothing here blocks: commands send requests to the plugin's worker and return at once.

mod actions;
mod commands;
mod lines;
mod options;
mod save;
mod variables;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bevy::ecs::system::SystemId;
use bevy::prelude::*;
use bevy_yarnspinner::events::{DialogueCompleted, ExecuteCommand, NodeStarted};
use bevy_yarnspinner::prelude::{DialogueRunner, LineId, YarnSpinnerSystemSet};

use crate::plugin::{DialogueError, DialogueSystems, RequestId};

pub use save::{MAX_SAVED_ENTRIES, SavedValue, YarnSave};
pub use variables::npc_variable_prefix;

/// The Yarn commands the bridge adds to every dialogue runner.
pub const COMMANDS: [&str; 4] = [
    "generate_line",
    "generate_reply",
    "generate_options",
    "generate_action",
];

/// The fewest and most generated options one command may ask for.
pub const OPTIONS: std::ops::RangeInclusive<usize> = crate::story::CHOICES;

/// Connects every `bevy_yarnspinner` [`DialogueRunner`] to the dialogue plugin. Add it after
/// [`LlmDialoguePlugin`](crate::plugin::LlmDialoguePlugin) and `YarnSpinnerPlugin`.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_llm_dialogue::prelude::*;
/// use bevy_llm_dialogue::yarn::YarnBridgePlugin;
/// use bevy_yarnspinner::prelude::*;
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default()))
///     .add_plugins(LlmDialoguePlugin::default())
///     .add_plugins(YarnSpinnerPlugin::with_yarn_source(YarnFileSource::file("dialogue/gate.yarn")))
///     .add_plugins(YarnBridgePlugin)
///     .run();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct YarnBridgePlugin;

impl Plugin for YarnBridgePlugin {
    fn build(&self, app: &mut App) {
        let systems = CommandSystems {
            line: app.world_mut().register_system(commands::generate_line),
            reply: app.world_mut().register_system(commands::generate_reply),
            options: app.world_mut().register_system(commands::generate_options),
            action: app.world_mut().register_system(commands::generate_action),
        };
        app.insert_resource(systems)
            .insert_resource(crate::plugin::YarnCommandsAnswered)
            .init_resource::<Callers>()
            .add_message::<GeneratedLineDelta>()
            .add_message::<GeneratedLineFinished>()
            .add_message::<GeneratedOptions>()
            .add_message::<ChooseGenerated>()
            .add_message::<YarnBridgeFailed>()
            .add_observer(attach)
            .add_observer(note_caller)
            .add_observer(count_visit)
            .add_observer(release_on_completion)
            .add_systems(
                PreUpdate,
                (
                    lines::deliver_lines,
                    options::deliver_options,
                    variables::set_npc_variables,
                    actions::deliver_actions,
                )
                    .chain()
                    .after(DialogueSystems::Receive),
            )
            .add_systems(
                Update,
                (
                    save::restart_restored,
                    options::take_choices,
                    variables::share_variables,
                )
                    .chain()
                    .after(YarnSpinnerSystemSet),
            );
    }
}

/// The bridge's settings on a dialogue runner; added with defaults to every runner that
/// lacks it.
#[derive(Component, Clone, Debug, Default)]
pub struct YarnBridge {
    /// The story entity (with a [`Narrator`](crate::plugin::Narrator)) that writes
    /// `generate_options`; without one the command offers its fallback options.
    pub narrator: Option<Entity>,
    /// The variables that become world facts; empty shares every variable but the
    /// bridge's own `$llm_*`.
    pub facts: Vec<String>,
}

/// What a bridged runner generated: every line and set of options, by line id. Saved with
/// [`YarnSave`]; entries restored from a save are replayed when their command runs again.
/// It keeps the newest [`MAX_SAVED_ENTRIES`]: an older line is
/// forgotten (generated again, not replayed, if a restored save runs its command again).
#[derive(Component, Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct YarnTranscript {
    /// What was generated, oldest first: the newest
    /// [`MAX_SAVED_ENTRIES`].
    pub entries: Vec<Generated>,
    /// How many times each node has started on this runner (the `VISIT` of line ids).
    pub visits: std::collections::BTreeMap<String, u32>,
    /// Commands run in the current visit of the current node.
    #[serde(skip)]
    pub(crate) in_visit: u32,
    /// Entries from a restored save, replayed by id.
    #[serde(skip)]
    pub(crate) replay: Vec<Generated>,
    /// A restored save's node and visits, started after the runner's next update (when the
    /// events of what the restore stopped have gone out and been counted).
    #[serde(skip)]
    pub(crate) restart: Option<Restart>,
}

impl YarnTranscript {
    /// Records a generated entry, forgetting the oldest past
    /// [`MAX_SAVED_ENTRIES`].
    pub(crate) fn record(&mut self, entry: Generated) {
        self.entries.push(entry);
        let over = self.entries.len().saturating_sub(save::MAX_SAVED_ENTRIES);
        self.entries.drain(..over);
    }
}

impl YarnTranscript {
    /// The entry with line id `id`, if it was generated or restored.
    pub fn get(&self, id: &str) -> Option<&Generated> {
        self.entries.iter().rev().find(|e| e.id == id)
    }
}

/// A restored node waiting to start.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Restart {
    pub(crate) node: String,
    pub(crate) visits: std::collections::BTreeMap<String, u32>,
    /// Whether the runner has updated since the restore.
    pub(crate) armed: bool,
}

/// One generated line or set of options.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generated {
    /// Its line id: `llm:NODE:VISIT:N`.
    pub id: String,
    /// What it was.
    pub kind: GeneratedKind,
    /// Whether the writer's fallback stood in for the model.
    pub fallback: bool,
}

/// What was generated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum GeneratedKind {
    /// A line.
    Line {
        /// The speaker's name as the script named it.
        speaker: String,
        /// The line.
        text: String,
    },
    /// A short scene and the options after it.
    Options {
        /// The narrator's scene ("" for fallback options).
        scene: String,
        /// The options.
        options: Vec<String>,
        /// The option taken, from 0.
        chosen: Option<usize>,
    },
}

/// More of a generated line: append `text` to what came before. Sent as a message and as
/// an entity event on the runner while the runner waits for the line.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct GeneratedLineDelta {
    /// The dialogue runner.
    #[event_target]
    pub runner: Entity,
    /// The NPC speaking.
    pub npc: Entity,
    /// The line's id.
    pub id: LineId,
    /// New text.
    pub text: String,
}

/// A generated line is finished and in `$llm_line`; the runner goes on to present it.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct GeneratedLineFinished {
    /// The dialogue runner.
    #[event_target]
    pub runner: Entity,
    /// The NPC that spoke (`None` when the NPC was unknown and the fallback stood in).
    pub npc: Option<Entity>,
    /// The line's id.
    pub id: LineId,
    /// The whole line.
    pub text: String,
    /// Whether the writer's fallback stood in for the model ([`YarnBridgeFailed`] says why).
    pub fallback: bool,
    /// Whether it was replayed from a restored save.
    pub replayed: bool,
}

/// Options to show the player: the runner waits until the game answers with
/// [`ChooseGenerated`].
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct GeneratedOptions {
    /// The dialogue runner.
    #[event_target]
    pub runner: Entity,
    /// The options' id.
    pub id: LineId,
    /// The narrator's short scene before the options ("" for fallback options).
    pub scene: String,
    /// The options, in order.
    pub options: Vec<String>,
    /// Whether these are the writer's fallback options.
    pub fallback: bool,
    /// Whether the script shows them itself, beside its authored options
    /// (`<<generate_options N "..." "..." beside>>`): the runner has gone on, and nothing is
    /// to be answered with [`ChooseGenerated`].
    pub beside: bool,
}

/// The player takes option `index` (from 0) of the runner's [`GeneratedOptions`]: the runner
/// goes on with `$llm_choice` set to `index + 1`.
#[derive(Message, Clone, Copy, Debug, Reflect)]
pub struct ChooseGenerated {
    /// The dialogue runner.
    pub runner: Entity,
    /// The option, from 0.
    pub index: usize,
}

/// A bridge command could not do what the script asked; the runner went on with the
/// writer's fallback (or nothing) and the game keeps running.
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
pub struct YarnBridgeFailed {
    /// The dialogue runner.
    #[event_target]
    pub runner: Entity,
    /// The node the command is in.
    pub node: String,
    /// The command (`generate_line`, ...).
    pub command: String,
    /// What went wrong, in words a writer can act on.
    pub error: YarnError,
}

/// Why a bridge command fell back.
#[derive(Clone, Debug, thiserror::Error, Reflect)]
pub enum YarnError {
    /// The command names no NPC the game has spawned.
    #[error("no NPC is named `{name}` (by its Name or its persona's name); known: {known}")]
    UnknownNpc {
        /// The name in the script.
        name: String,
        /// The names the bridge knows, comma-separated.
        known: String,
    },
    /// The command's arguments are wrong.
    #[error("{0}")]
    BadArguments(String),
    /// `generate_options` on a runner whose [`YarnBridge::narrator`] is not set.
    #[error("this runner has no narrator: set YarnBridge::narrator to a story entity")]
    NoNarrator,
    /// No model is loaded or loading.
    #[error("no model: {0}")]
    NoModel(String),
    /// The plugin could not produce the line or options.
    #[error(transparent)]
    Dialogue(#[from] DialogueError),
    /// A [`YarnSave`] that cannot be restored.
    #[error("the save cannot be restored: {0}")]
    BadSave(String),
    /// A [`ChooseGenerated`] for a runner that shows no generated options, or out of range.
    #[error("{0}")]
    BadChoice(String),
}

/// The bridge's command systems, registered once.
#[derive(Resource)]
struct CommandSystems {
    line: SystemId<In<commands::Args>, Hold>,
    reply: SystemId<In<commands::Args>, Hold>,
    options: SystemId<In<commands::OptionArgs>, Hold>,
    action: SystemId<In<commands::Args>, Hold>,
}

/// What holds a runner until a command is done: finished when set.
type Hold = Arc<AtomicBool>;

/// The runners whose bridge commands are about to run, in order. A command system learns
/// its runner here: `bevy_yarnspinner` runs registered commands without it, after the
/// [`ExecuteCommand`] event that names it.
#[derive(Resource, Default)]
struct Callers(VecDeque<(Entity, String)>);

/// A command waiting for its result.
#[derive(Component, Default)]
pub(crate) struct Waiting(Option<Wait>);

pub(crate) struct Wait {
    /// The line id.
    id: String,
    node: String,
    command: &'static str,
    hold: Hold,
    what: WaitFor,
}

pub(crate) enum WaitFor {
    /// An NPC's line; its request once it started.
    Line {
        npc: Entity,
        speaker: String,
        request: Option<RequestId>,
        fallback: String,
        text: String,
    },
    /// The narrator's scene and options; for options beside authored ones, where its story
    /// goes back to.
    Scene {
        story: Entity,
        fallback: Vec<String>,
        beside: Option<options::StoryMark>,
    },
    /// An NPC's decision among its actions.
    Action { npc: Entity },
    /// The player's choice among options shown.
    Choice {
        story: Option<Entity>,
        options: Vec<String>,
    },
}

impl Wait {
    fn release(&self) {
        self.hold.store(true, Ordering::Relaxed);
    }
}

/// A new runner gets the bridge's commands and state.
fn attach(
    add: On<Add, DialogueRunner>,
    mut commands: Commands,
    mut runners: Query<&mut DialogueRunner>,
    systems: Res<CommandSystems>,
) {
    let Ok(mut runner) = runners.get_mut(add.entity) else {
        return;
    };
    runner
        .commands_mut()
        .add_command(COMMANDS[0], systems.line)
        .add_command(COMMANDS[1], systems.reply)
        .add_command(COMMANDS[2], systems.options)
        .add_command(COMMANDS[3], systems.action);
    commands.entity(add.entity).insert_if_new((
        YarnBridge::default(),
        YarnTranscript::default(),
        Waiting::default(),
    ));
}

/// Remembers which runner is about to run a bridge command.
fn note_caller(ev: On<ExecuteCommand>, mut callers: ResMut<Callers>) {
    let name = ev.command.name.as_str();
    if COMMANDS.contains(&name) {
        callers.0.push_back((ev.entity, name.to_owned()));
    }
}

/// Counts node visits, for line ids.
fn count_visit(ev: On<NodeStarted>, mut transcripts: Query<&mut YarnTranscript>) {
    if let Ok(mut transcript) = transcripts.get_mut(ev.entity) {
        *transcript.visits.entry(ev.node_name.clone()).or_default() += 1;
        transcript.in_visit = 0;
    }
}

/// A runner that stops or ends lets go of what it waited for (a stopped runner keeps its
/// command tasks, and would otherwise wait for them when started again).
fn release_on_completion(
    ev: On<DialogueCompleted>,
    mut waiting: Query<&mut Waiting>,
    mut cancels: MessageWriter<crate::plugin::CancelLine>,
) {
    let Ok(mut waiting) = waiting.get_mut(ev.entity) else {
        return;
    };
    if let Some(wait) = waiting.0.take() {
        if let WaitFor::Line { npc, .. } = wait.what {
            cancels.write(crate::plugin::CancelLine { npc });
        }
        wait.release();
    }
}
