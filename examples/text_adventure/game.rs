//! The adventure's rules, without any UI: where the player is, what they carry, who is
//! where, and the transcript. The egui front end (`ui.rs`) and the headless test
//! (`tests/text_adventure.rs`) both drive it through [`PlayerInput`] messages.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bevy::prelude::*;
use bevy::tasks::IoTaskPool;
use bevy_llm_dialogue::plugin::RequestId;
use bevy_llm_dialogue::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

/// The game logic: add after [`LlmDialoguePlugin`].
pub struct AdventurePlugin;

impl Plugin for AdventurePlugin {
    fn build(&self, app: &mut App) {
        let (done, results) = crossbeam_channel::unbounded();
        app.add_message::<PlayerInput>()
            .init_resource::<GameState>()
            .init_resource::<Transcript>()
            .init_resource::<DebugInfo>()
            .init_resource::<AdventureConfig>()
            .insert_resource(SaveIo { done, results })
            .add_systems(Startup, setup)
            .add_systems(
                Update,
                (
                    handle_input,
                    record_lines,
                    record_scenes,
                    apply_actions,
                    finish_io,
                    publish_facts,
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

/// The characters: stable id (for saves), name, persona file and where they stand.
pub const NPCS: [(&str, &str, &str, Location); 3] = [
    (
        "mira",
        "Mira",
        "personas/mira.persona.ron",
        Location::Village,
    ),
    (
        "wren",
        "Wren",
        "personas/wren.persona.ron",
        Location::Forest,
    ),
    (
        "aldous",
        "Aldous",
        "personas/aldous.persona.ron",
        Location::Ruin,
    ),
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
    /// The narrator is writing a scene.
    pub narrator_busy: bool,
}

impl Transcript {
    fn push(&mut self, speaker: Speaker, text: impl Into<String>) -> usize {
        self.entries.push(Entry {
            speaker,
            text: text.into(),
            streaming: false,
        });
        self.entries.len() - 1
    }

    fn stream(&mut self, request: RequestId, speaker: Speaker) -> &mut Entry {
        let index = match self.streams.get(&request) {
            Some(&i) => i,
            None => {
                let i = self.push(speaker, "");
                self.entries[i].streaming = true;
                self.streams.insert(request, i);
                i
            }
        };
        &mut self.entries[index]
    }

    fn finish(&mut self, request: RequestId, speaker: Speaker, text: &str) {
        let entry = self.stream(request, speaker);
        entry.text = text.to_owned();
        entry.streaming = false;
        self.streams.remove(&request);
    }

    /// Ends the streams `keep` rejects, leaving what arrived so far (a failed line or scene).
    fn abandon(&mut self, keep: impl Fn(RequestId, &Entry) -> bool) {
        let entries = &mut self.entries;
        self.streams.retain(|&request, &mut i| {
            let kept = keep(request, &entries[i]);
            entries[i].streaming &= kept;
            kept
        });
    }

    /// Whether any entry is still streaming.
    pub fn is_streaming(&self) -> bool {
        !self.streams.is_empty()
    }
}

/// Figures for the debug panel.
#[derive(Resource, Clone, Debug, Default)]
pub struct DebugInfo {
    /// The last prompt as the model saw it.
    pub last_prompt: String,
    /// Decode speed of the last line or scene, tokens per second.
    pub tokens_per_second: f64,
    /// The last action an NPC took.
    pub last_action: String,
    /// Lines and scenes requested and not yet answered.
    pub pending: usize,
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
    fn sampling(&mut self) -> Option<SamplingParams> {
        self.requests += 1;
        let seed = self.seed?;
        Some(SamplingParams::default().with_seed(seed.wrapping_add(self.requests)))
    }
}

/// A saved game.
#[derive(Serialize, Deserialize)]
struct SaveData {
    state: GameState,
    transcript: Vec<Entry>,
    story: Story,
    histories: BTreeMap<String, DialogueHistory>,
}

/// Saves and loads run on the IO pool; their results come back here.
#[derive(Resource)]
struct SaveIo {
    done: Sender<IoResult>,
    results: Receiver<IoResult>,
}

enum IoResult {
    Saved(PathBuf),
    Loaded(Box<SaveData>),
    Failed(String),
}

fn setup(
    mut commands: Commands,
    assets: Res<AssetServer>,
    mut scenes: MessageWriter<RequestScene>,
) {
    for (id, name, persona, location) in NPCS {
        commands.spawn((
            Name::new(name),
            Character { id, location },
            Npc::new(assets.load(persona)),
        ));
    }
    let story = commands
        .spawn((StoryTeller, Narrator::new(assets.load(STORY))))
        .id();
    // The opening is pinned in the story file, so it shows before the model has loaded.
    scenes.write(RequestScene::new(story));
}

#[expect(
    clippy::too_many_arguments,
    reason = "a system takes what it reads as parameters"
)]
fn handle_input(
    mut inputs: MessageReader<PlayerInput>,
    mut state: ResMut<GameState>,
    mut transcript: ResMut<Transcript>,
    mut config: ResMut<AdventureConfig>,
    mut debug: ResMut<DebugInfo>,
    characters: Query<(Entity, &Character, &Name)>,
    story: Single<(Entity, &Story), With<StoryTeller>>,
    histories: Query<(&Character, &DialogueHistory)>,
    io: Res<SaveIo>,
    mut out: (
        MessageWriter<RequestLine>,
        MessageWriter<RequestAction>,
        MessageWriter<ChooseOption>,
    ),
    mut scenes: MessageWriter<RequestScene>,
) {
    let (story_entity, story_data) = *story;
    for input in inputs.read() {
        match input {
            PlayerInput::Say { to, text } => {
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let Some((npc, character, name)) = characters.iter().find(|(_, c, _)| c.id == to)
                else {
                    transcript.push(Speaker::Game, format!("There is nobody called {to} here."));
                    continue;
                };
                if character.location != state.location {
                    transcript.push(Speaker::Game, format!("{name} is not here."));
                    continue;
                }
                transcript.push(Speaker::Player, text);
                let mut line = RequestLine::new(npc)
                    .saying(text)
                    .priority(Priority::Player);
                if let Some(sampling) = config.sampling() {
                    line = line.sampling(sampling);
                }
                out.0.write(line);
                // Then the character decides whether to act on it (give, open, refuse).
                let mut action = RequestAction::new(npc)
                    .situation(format!("The traveller says to you: \"{text}\""));
                if let Some(sampling) = config.sampling() {
                    action = action.sampling(sampling);
                }
                out.1.write(action);
                debug.pending += 2;
            }
            PlayerInput::Choose(_) | PlayerInput::Load if transcript.narrator_busy => {
                transcript.push(Speaker::Game, "Wait for the narrator to finish the scene.");
            }
            PlayerInput::Choose(index) => {
                out.2.write(ChooseOption {
                    story: story_entity,
                    index: *index,
                });
                if let Some(choice) = story_data
                    .current_scene()
                    .and_then(|scene| scene.choices.get(*index))
                {
                    transcript.push(Speaker::Player, format!("> {}", choice.text));
                    if choice.goto.is_none() {
                        debug.pending += 1;
                        transcript.narrator_busy = true;
                    }
                }
            }
            PlayerInput::Retry => {
                if story_data.pending.is_some() && !transcript.narrator_busy {
                    scenes.write(RequestScene::new(story_entity));
                    debug.pending += 1;
                    transcript.narrator_busy = true;
                }
            }
            PlayerInput::Travel(to) => {
                if !state.location.exits().contains(to) {
                    transcript.push(
                        Speaker::Game,
                        format!(
                            "You cannot reach {} from {}.",
                            to.name(),
                            state.location.name()
                        ),
                    );
                } else if *to == Location::Tower && !state.tower_door_open {
                    transcript.push(Speaker::Game, "The tower door is barred from inside.");
                } else {
                    state.location = *to;
                    transcript.push(
                        Speaker::Game,
                        format!("You walk to {}. {}", to.name(), to.description()),
                    );
                }
            }
            PlayerInput::Save => {
                let data = SaveData {
                    state: state.clone(),
                    transcript: transcript.entries.clone(),
                    story: story_data.clone(),
                    histories: histories
                        .iter()
                        .map(|(c, h)| (c.id.to_owned(), h.clone()))
                        .collect(),
                };
                let path = config.save_file.clone();
                let done = io.done.clone();
                IoTaskPool::get()
                    .spawn(async move {
                        let _ = done.send(write_save(&path, &data));
                    })
                    .detach();
            }
            PlayerInput::Load => {
                let path = config.save_file.clone();
                let done = io.done.clone();
                IoTaskPool::get()
                    .spawn(async move {
                        let _ = done.send(read_save(&path));
                    })
                    .detach();
            }
        }
    }
}

fn write_save(path: &std::path::Path, data: &SaveData) -> IoResult {
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

fn read_save(path: &std::path::Path) -> IoResult {
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
fn finish_io(
    io: Res<SaveIo>,
    mut state: ResMut<GameState>,
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    mut story: Single<&mut Story, With<StoryTeller>>,
    mut characters: Query<(Entity, &Character, &mut DialogueHistory)>,
    mut cancel: MessageWriter<CancelLine>,
) {
    while let Ok(result) = io.results.try_recv() {
        match result {
            IoResult::Saved(path) => {
                transcript.push(Speaker::Game, format!("Saved to {}.", path.display()));
            }
            IoResult::Failed(error) => {
                transcript.push(Speaker::Game, error);
            }
            IoResult::Loaded(data) => {
                // Lines in flight belong to the old game.
                for (npc, _, _) in &characters {
                    cancel.write(CancelLine { npc });
                }
                *state = data.state;
                **story = data.story;
                for (_, character, mut history) in &mut characters {
                    *history = data
                        .histories
                        .get(character.id)
                        .cloned()
                        .unwrap_or_default();
                }
                *transcript = Transcript {
                    entries: data.transcript,
                    ..default()
                };
                for entry in &mut transcript.entries {
                    entry.streaming = false;
                }
                transcript.push(Speaker::Game, "Game loaded.");
                debug.pending = 0;
            }
        }
    }
}

/// A character's name, or "Someone" for an entity that is gone.
fn name_of(names: &Query<&Name>, npc: Entity) -> String {
    names
        .get(npc)
        .map_or("Someone".to_owned(), |n| n.to_string())
}

fn record_lines(
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    names: Query<&Name>,
    mut started: MessageReader<LineStarted>,
    mut deltas: MessageReader<LineDelta>,
    mut finished: MessageReader<LineFinished>,
    mut failed: MessageReader<LineFailed>,
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
        debug.pending = debug.pending.saturating_sub(1);
    }
    for line in failed.read() {
        transcript.abandon(|request, _| request != line.request);
        let who = name_of(&names, line.npc);
        transcript.push(
            Speaker::Game,
            format!("({who} cannot answer: {})", line.error),
        );
        debug.pending = debug.pending.saturating_sub(1);
    }
}

fn record_scenes(
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    mut deltas: MessageReader<SceneDelta>,
    mut ready: MessageReader<SceneReady>,
    mut failed: MessageReader<SceneFailed>,
) {
    for delta in deltas.read() {
        transcript
            .stream(delta.request, Speaker::Narrator)
            .text
            .push_str(&delta.text);
    }
    for scene in ready.read() {
        transcript.narrator_busy = false;
        match scene.request {
            Some(request) => {
                transcript.finish(request, Speaker::Narrator, &scene.text);
                debug.pending = debug.pending.saturating_sub(1);
            }
            None => {
                transcript.push(Speaker::Narrator, scene.text.clone());
            }
        }
        if let Some(stats) = &scene.stats {
            debug.tokens_per_second = stats.decode_tokens_per_second();
        }
    }
    for scene in failed.read() {
        // A failed scene has no request id: end whatever the narrator was writing.
        transcript.abandon(|_, entry| entry.speaker != Speaker::Narrator);
        transcript.narrator_busy = false;
        transcript.push(
            Speaker::Game,
            format!("(The narrator falters: {})", scene.error),
        );
        debug.pending = debug.pending.saturating_sub(1);
    }
}

/// NPC decisions change the world: items go to the player, the tower door opens.
fn apply_actions(
    mut actions: MessageReader<NpcAction>,
    mut state: ResMut<GameState>,
    mut transcript: ResMut<Transcript>,
    mut debug: ResMut<DebugInfo>,
    names: Query<&Name>,
) {
    for action in actions.read() {
        debug.pending = debug.pending.saturating_sub(1);
        let who = name_of(&names, action.npc);
        debug.last_action = format!("{who}: {} {:?}", action.name, action.args);
        match action.name.as_str() {
            "give_item" => {
                let Some(item) = action.args.get("item").and_then(|v| v.as_str()) else {
                    continue;
                };
                if state.inventory.iter().any(|i| i == item) {
                    continue;
                }
                state.inventory.push(item.to_owned());
                transcript.push(Speaker::Game, format!("{who} gives you a {item}."));
            }
            "open_door" if !state.tower_door_open => {
                state.tower_door_open = true;
                transcript.push(Speaker::Game, format!("{who} unbars the tower door."));
            }
            _ => {}
        }
    }
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
        context.set(
            "traveller",
            if here {
                "standing in front of you"
            } else {
                "elsewhere"
            },
        );
    }
}
