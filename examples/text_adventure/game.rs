//! The adventure's rules, without any UI: where the player is, what they carry, who is
//! where. The egui front end (`ui.rs`) and the headless test (`tests/plugin/text_adventure.rs`)
//! both drive it through [`PlayerInput`] messages. The transcript is in `transcript.rs`,
//! saving and loading in `save.rs`.
//!
//! What the model is doing is never counted here: the plugin marks an NPC [`Speaking`] or
//! [`Deciding`] and the story [`Narrating`] while their requests are out, and the game reads
//! those markers (see [`Busy`]).

// `#[path]` so that these resolve next to this file both in the example (where this is
// `game.rs` under `main.rs`) and in the test (which includes this file by its path).
#[path = "save.rs"]
mod save;
#[path = "transcript.rs"]
mod transcript;

use std::path::PathBuf;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use serde::{Deserialize, Serialize};

pub use transcript::{Entry, Speaker, Transcript};

use save::{SaveData, SaveIo};

/// The game logic: add after [`LlmDialoguePlugin`].
pub struct AdventurePlugin;

impl Plugin for AdventurePlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<PlayerInput>()
            .init_resource::<GameState>()
            .init_resource::<Transcript>()
            .init_resource::<DebugInfo>()
            .init_resource::<AdventureConfig>()
            .init_resource::<SaveIo>()
            .add_systems(Startup, setup)
            .add_systems(
                Update,
                (
                    handle_input,
                    transcript::record_lines,
                    transcript::record_scenes,
                    save::finish_io,
                    publish_facts,
                    log_filtered,
                )
                    .chain(),
            );
    }
}

/// The places in the adventure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    /// Elmsbrook's square, by the forge.
    #[default]
    Village,
    /// The Old Forest, where the hunter lives.
    Forest,
    /// The ruined tower, kept by the hermit.
    Ruin,
    /// Inside the tower, once its door is open.
    Tower,
}

impl Location {
    /// The name the player sees.
    pub fn name(self) -> &'static str {
        match self {
            Location::Village => "Elmsbrook",
            Location::Forest => "the Old Forest",
            Location::Ruin => "the ruined tower",
            Location::Tower => "inside the tower",
        }
    }

    /// One line about the place.
    pub fn description(self) -> &'static str {
        match self {
            Location::Village => "A village square. Sparks fly from Mira's forge.",
            Location::Forest => "Dark pines and fresh wolf tracks in the mud.",
            Location::Ruin => "Broken stones around a tower with an iron-bound door.",
            Location::Tower => "A spiral stair climbs to a glint of silver.",
        }
    }

    /// Where the player can go from here.
    pub fn exits(self) -> &'static [Location] {
        match self {
            Location::Village => &[Location::Forest],
            Location::Forest => &[Location::Village, Location::Ruin],
            Location::Ruin => &[Location::Forest, Location::Tower],
            Location::Tower => &[Location::Ruin],
        }
    }
}

/// One character of the adventure, as the game sets it up.
pub struct CastMember {
    /// Stable id, used in saves and in [`PlayerInput::Say`]: "mira".
    pub id: &'static str,
    /// The name the player sees.
    pub name: &'static str,
    /// The persona file, under `assets/`.
    pub persona: &'static str,
    /// Where they stand.
    pub location: Location,
}

/// The characters.
pub const CAST: [CastMember; 3] = [
    CastMember {
        id: "mira",
        name: "Mira",
        persona: "personas/mira.persona.ron",
        location: Location::Village,
    },
    CastMember {
        id: "wren",
        name: "Wren",
        // Wren comes from a character card (the format of LLM chat front ends): the same
        // character as personas/wren.persona.ron, her game fields in the card's extension.
        persona: "personas/wren.card.json",
        location: Location::Forest,
    },
    CastMember {
        id: "aldous",
        name: "Aldous",
        persona: "personas/aldous.persona.ron",
        location: Location::Ruin,
    },
];

/// The story the narrator tells.
pub const STORY: &str = "stories/silver_key.story.ron";

/// One of the adventure's characters.
#[derive(Component, Clone, Debug)]
pub struct Character {
    /// Stable id, used in saves: "mira".
    pub id: &'static str,
    /// Where they stand.
    pub location: Location,
}

/// The entity that tells the story.
#[derive(Component)]
pub struct StoryTeller;

/// Entities the model is working for right now: a character speaking or deciding, the
/// narrator writing. The plugin adds and removes the markers; `Query<(), Busy>` is empty
/// when nothing of ours is at the model.
pub type Busy = Or<(With<Speaking>, With<Deciding>, With<Narrating>)>;

/// What the player does; the UI, the autoplay script and the tests send these.
#[derive(Message, Clone, Debug, PartialEq)]
pub enum PlayerInput {
    /// Say something to the character with this id (who must be here).
    Say {
        /// The character's id.
        to: String,
        /// The player's words.
        text: String,
    },
    /// Take choice `index` of the current scene.
    Choose(usize),
    /// Ask the narrator again for a scene that failed (the choice stays taken).
    Retry,
    /// Walk to a neighbouring location.
    Travel(Location),
    /// Save to [`AdventureConfig::save_file`].
    Save,
    /// Load from [`AdventureConfig::save_file`].
    Load,
}

/// Where the player is and what they have.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GameState {
    /// Where the player is.
    pub location: Location,
    /// What the player carries, in the order they got it.
    pub inventory: Vec<String>,
    /// Whether Aldous has opened the tower door.
    pub tower_door_open: bool,
}

impl GameState {
    /// The inventory as the NPCs hear it: "a lantern and a wolf charm".
    pub fn carrying(&self) -> String {
        match self.inventory.as_slice() {
            [] => "nothing".to_owned(),
            [one] => format!("a {one}"),
            [rest @ .., last] => {
                let rest: Vec<String> = rest.iter().map(|i| format!("a {i}")).collect();
                format!("{} and a {last}", rest.join(", "))
            }
        }
    }
}

/// Figures for the debug panel. What is in progress is not here: the UI reads the plugin's
/// markers and [`DialogueModel::status`].
#[derive(Resource, Clone, Debug, Default)]
pub struct DebugInfo {
    /// The last prompt as the model saw it.
    pub last_prompt: String,
    /// Decode speed of the last line or scene, tokens per second.
    pub tokens_per_second: f64,
    /// The last action an NPC took.
    pub last_action: String,
    /// What the content policy did, newest last (the last few).
    pub filtered: Vec<String>,
}

/// Where saves go, and an optional seed for reproducible playthroughs.
#[derive(Resource, Clone, Debug)]
pub struct AdventureConfig {
    /// The save file.
    pub save_file: PathBuf,
    /// When set, every request samples with a seed derived from it.
    pub seed: Option<u64>,
    requests: u64,
}

impl Default for AdventureConfig {
    fn default() -> Self {
        Self {
            save_file: PathBuf::from("saves/text_adventure.ron"),
            seed: None,
            requests: 0,
        }
    }
}

impl AdventureConfig {
    /// Sampling for the next request: seeded (a new seed each time) when [`Self::seed`] is set.
    /// The next request's seed, when the game runs seeded (the persona's other settings
    /// stay: a seed is one field of the layered settings).
    fn seed(&mut self) -> Option<u64> {
        self.requests += 1;
        Some(self.seed?.wrapping_add(self.requests))
    }
}

fn setup(
    mut commands: Commands,
    assets: Res<AssetServer>,
    mut scenes: MessageWriter<RequestScene>,
    mut world: ResMut<DialogueContext>,
    mut content: ResMut<ContentPolicy>,
) {
    // A game for all ages: no swearing from anyone, and what the traveller types is
    // censored before the characters hear it. (Out-of-character talk is caught by default.)
    content.profanity = Profanity::Moderate;
    content.player_input = PlayerLineCheck::Censor;
    // The world's lore: a small file, parsed once (it is also a `*.lore.ron` asset a game
    // could load and copy in).
    match bevy_llm_dialogue::lore::Lorebook::from_ron(
        include_str!("../../assets/lore/silver_key.lore.ron"),
        "lore/silver_key.lore.ron",
    ) {
        Ok(lore) => world.lore = lore,
        Err(e) => error!("{e}"),
    }
    for member in &CAST {
        commands
            .spawn((
                Name::new(member.name),
                Character {
                    id: member.id,
                    location: member.location,
                },
                Npc::new(assets.load(member.persona)),
            ))
            // Decisions arrive as entity events on the character who made them.
            .observe(on_action)
            .observe(on_action_failed);
    }
    let story = commands
        .spawn((StoryTeller, Narrator::new(assets.load(STORY))))
        .id();
    // The opening is pinned in the story file, so it shows before the model has loaded.
    scenes.write(RequestScene::new(story));
}

/// Plays the player's inputs in the order they came, one small function per kind.
fn handle_input(mut inputs: MessageReader<PlayerInput>, mut turn: Turn) {
    for input in inputs.read() {
        match input {
            PlayerInput::Say { to, text } => turn.say(to, text),
            PlayerInput::Choose(index) => turn.choose(*index),
            PlayerInput::Retry => turn.retry(),
            PlayerInput::Travel(to) => turn.travel(*to),
            PlayerInput::Save => turn.save(),
            PlayerInput::Load => turn.load(),
        }
    }
}

/// What the player's inputs read and change.
#[derive(SystemParam)]
struct Turn<'w, 's> {
    state: ResMut<'w, GameState>,
    transcript: ResMut<'w, Transcript>,
    config: ResMut<'w, AdventureConfig>,
    io: Res<'w, SaveIo>,
    characters: Query<
        'w,
        's,
        (
            Entity,
            &'static mut Character,
            &'static Name,
            &'static DialogueHistory,
        ),
    >,
    commands: Commands<'w, 's>,
    /// The conversation at the ruined tower, while the player is there.
    conversation: Query<'w, 's, (Entity, &'static Conversation)>,
    join: MessageWriter<'w, SayInConversation>,
    give_turn: MessageWriter<'w, GiveTurn>,
    story: Single<'w, 's, (Entity, &'static Story, Has<Narrating>), With<StoryTeller>>,
    lines: MessageWriter<'w, RequestLine>,
    decisions: MessageWriter<'w, RequestAction>,
    feelings: MessageWriter<'w, UpdateDisposition>,
    choices: MessageWriter<'w, ChooseOption>,
    scenes: MessageWriter<'w, RequestScene>,
}

impl Turn<'_, '_> {
    /// The player speaks to a character here, who answers and then decides whether to act.
    fn say(&mut self, to: &str, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let Some(npc) = self.character_here(to) else {
            return;
        };
        self.transcript.push(Speaker::Player, text);
        if let Some((conversation, _)) = self
            .conversation
            .iter()
            .find(|(_, c)| c.participants.contains(&npc))
        {
            // They are talking: the player joins in, and the one spoken to answers.
            self.join.write(SayInConversation {
                conversation,
                line: text.to_owned(),
            });
            self.give_turn.write(GiveTurn {
                conversation,
                speaker: npc,
            });
        } else {
            let mut line = RequestLine::new(npc)
                .saying(text)
                .priority(Priority::Player);
            line.settings.seed = self.config.seed();
            self.lines.write(line);
        }
        // Then the character decides whether to act on it (give, open, refuse).
        let mut decision =
            RequestAction::new(npc).situation(format!("The traveller says to you: \"{text}\""));
        decision.settings.seed = self.config.seed();
        self.decisions.write(decision);
        // Aldous's persona declares a disposition: how he feels about the traveller moves.
        if to == "aldous" {
            self.feelings.write(
                UpdateDisposition::new(npc)
                    .situation(format!("The traveller says to you: \"{text}\"")),
            );
        }
    }

    /// The character with this id, if they are here; otherwise the transcript says why not.
    fn character_here(&mut self, id: &str) -> Option<Entity> {
        let Some((npc, character, name, _)) = self.characters.iter().find(|c| c.1.id == id) else {
            let text = format!("There is nobody called {id} here.");
            self.transcript.push(Speaker::Game, text);
            return None;
        };
        if character.location != self.state.location {
            self.transcript
                .push(Speaker::Game, format!("{name} is not here."));
            return None;
        }
        Some(npc)
    }

    /// Takes a choice; the next scene is pinned (at once) or written by the narrator.
    fn choose(&mut self, index: usize) {
        if self.refused_while_narrating() {
            return;
        }
        let (story, data, _) = *self.story;
        self.choices.write(ChooseOption { story, index });
        if let Some(choice) = data.current_scene().and_then(|s| s.choices.get(index)) {
            self.transcript
                .push(Speaker::Player, format!("> {}", choice.text));
        }
    }

    /// Asks again for the scene after a choice whose scene failed.
    fn retry(&mut self) {
        let (story, data, narrating) = *self.story;
        if data.pending.is_some() && !narrating {
            self.scenes.write(RequestScene::new(story));
        }
    }

    /// Walks to a neighbouring place, if the way is open.
    fn travel(&mut self, to: Location) {
        let from = self.state.location;
        let text = if !from.exits().contains(&to) {
            format!("You cannot reach {} from {}.", to.name(), from.name())
        } else if to == Location::Tower && !self.state.tower_door_open {
            "The tower door is barred from inside.".to_owned()
        } else {
            self.state.location = to;
            format!("You walk to {}. {}", to.name(), to.description())
        };
        self.transcript.push(Speaker::Game, text);
        if self.state.location == to {
            self.wren_visits(from, to);
        }
    }

    /// Wren has walked ahead to the ruined tower: she and Aldous are talking when the
    /// player arrives (an ambient `Conversation`, which the player joins by speaking to
    /// either), and she goes back to her forest when the player leaves.
    fn wren_visits(&mut self, from: Location, to: Location) {
        if from == Location::Ruin {
            for (conversation, _) in &self.conversation {
                self.commands.entity(conversation).despawn();
            }
            for (_, mut character, _, _) in &mut self.characters {
                if character.id == "wren" {
                    character.location = Location::Forest;
                }
            }
        }
        if to != Location::Ruin {
            return;
        }
        let mut cast = Vec::new();
        for id in ["aldous", "wren"] {
            for (npc, mut character, _, _) in &mut self.characters {
                if character.id == id {
                    character.location = Location::Ruin;
                    cast.push(npc);
                }
            }
        }
        self.transcript.push(
            Speaker::Game,
            "Wren leans on the broken wall, talking with Aldous. They have not seen you yet.",
        );
        self.commands.spawn(
            Conversation::new(cast)
                .about("the wolves circling the tower, and the stranger who just walked up")
                .max_lines(4),
        );
    }

    /// Saves in the background; `save::finish_io` reports it.
    fn save(&mut self) {
        let data = SaveData {
            state: self.state.clone(),
            transcript: self.transcript.entries.clone(),
            story: self.story.1.clone(),
            histories: self
                .characters
                .iter()
                .map(|(_, c, _, history)| (c.id.to_owned(), history.clone()))
                .collect(),
        };
        self.io.save(self.config.save_file.clone(), data);
    }

    /// Loads in the background; `save::finish_io` applies it.
    fn load(&mut self) {
        if !self.refused_while_narrating() {
            self.io.load(self.config.save_file.clone());
        }
    }

    /// A choice or a load waits while the narrator writes (the plugin's [`Narrating`]).
    fn refused_while_narrating(&mut self) -> bool {
        let narrating = self.story.2;
        if narrating {
            let text = "Wait for the narrator to finish the scene.";
            self.transcript.push(Speaker::Game, text);
        }
        narrating
    }
}

/// A character's name, or "Someone" for an entity that is gone.
fn name_of(names: &Query<&Name>, npc: Entity) -> String {
    names
        .get(npc)
        .map_or("Someone".to_owned(), |n| n.to_string())
}

/// A character's decision changes the world: items go to the player, the tower door opens.
/// An entity observer on each character (see `setup`); lines and scenes are read as
/// messages in `transcript.rs`, to show both ways.
fn on_action(
    action: On<ActionFinished>,
    names: Query<&Name>,
    mut state: ResMut<GameState>,
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
) {
    let who = name_of(&names, action.npc);
    debug.last_action = format!("{who}: {} {:?}", action.name, action.args);
    match action.name.as_str() {
        "give_item" => {
            let Some(item) = action.args.get("item").and_then(|v| v.as_str()) else {
                return;
            };
            if !state.inventory.iter().any(|i| i == item) {
                state.inventory.push(item.to_owned());
                transcript.push(Speaker::Game, format!("{who} gives you a {item}."));
            }
        }
        "open_door" if !state.tower_door_open => {
            state.tower_door_open = true;
            transcript.push(Speaker::Game, format!("{who} unbars the tower door."));
        }
        _ => {}
    }
}

/// The content policy's work, for the debug panel: which rule, what it did, to whom.
fn log_filtered(
    mut filtered: MessageReader<LineFiltered>,
    names: Query<&Name>,
    mut debug: ResMut<DebugInfo>,
) {
    for hit in filtered.read() {
        let who = name_of(&names, hit.npc);
        debug
            .filtered
            .push(format!("{who}: {} ({:?})", hit.rule, hit.action));
    }
    let keep = debug.filtered.len().saturating_sub(5);
    debug.filtered.drain(..keep);
}

/// A character could not decide (no model, a broken persona): they do nothing, and the
/// debug panel says why.
fn on_action_failed(failure: On<ActionFailed>, names: Query<&Name>, mut debug: ResMut<DebugInfo>) {
    let who = name_of(&names, failure.npc);
    debug.last_action = format!("{who}: failed: {}", failure.error);
}

/// What the prompts know: where the player is and what they carry, and where each
/// character stands.
fn publish_facts(
    state: Res<GameState>,
    mut world: ResMut<DialogueContext>,
    mut characters: Query<(&Character, &mut NpcContext)>,
) {
    if !state.is_changed() {
        return;
    }
    world.set("traveller_is_at", state.location.name());
    world.set("traveller_carries", state.carrying());
    let door = if state.tower_door_open {
        "open"
    } else {
        "barred"
    };
    world.set("tower_door", door);
    for (character, mut context) in &mut characters {
        context.set("you_are_at", character.location.name());
        let here = character.location == state.location;
        let traveller = if here {
            "standing in front of you"
        } else {
            "elsewhere"
        };
        context.set("traveller", traveller);
    }
}
