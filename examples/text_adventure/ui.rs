//! The adventure's window: transcript, choices, text input, side panel, loading bar, and a
//! debug panel on F3. Everything it does goes through [`PlayerInput`]; what the model is
//! doing it reads from the plugin's markers ([`Speaking`], [`Deciding`], [`Narrating`]).

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_egui::egui::{self, Color32, RichText};
use bevy_egui::{EguiContexts, EguiPrimaryContextPass};
use bevy_llm_dialogue::prelude::*;

use crate::game::{
    Character, DebugInfo, GameState, Location, PlayerInput, Speaker, StoryTeller, Transcript,
};

/// Draws the game with egui.
pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<UiState>()
            .add_systems(Startup, |mut commands: Commands| {
                commands.spawn(Camera2d);
            })
            .add_systems(Update, toggle_debug)
            .add_systems(EguiPrimaryContextPass, draw);
    }
}

/// What the UI remembers between frames.
#[derive(Resource, Default)]
pub struct UiState {
    /// The text being typed.
    pub input: String,
    /// Who the player talks to (a character id).
    pub talking_to: Option<&'static str>,
    /// Whether the debug panel is open.
    pub debug_open: bool,
}

fn toggle_debug(keys: Res<ButtonInput<KeyCode>>, mut ui: ResMut<UiState>) {
    if keys.just_pressed(KeyCode::F3) {
        ui.debug_open = !ui.debug_open;
    }
}

const NARRATOR: Color32 = Color32::from_rgb(222, 206, 160);
const PLAYER: Color32 = Color32::from_rgb(150, 200, 255);
const NPC: Color32 = Color32::from_rgb(160, 230, 160);
const GAME: Color32 = Color32::from_rgb(170, 170, 170);

/// Everything the window shows, read-only.
#[derive(SystemParam)]
struct View<'w, 's> {
    state: Res<'w, GameState>,
    transcript: Res<'w, Transcript>,
    debug: Res<'w, DebugInfo>,
    model: Res<'w, DialogueModel>,
    time: Res<'w, Time<Real>>,
    story: Single<'w, 's, (&'static Story, Has<Narrating>), With<StoryTeller>>,
    characters: Query<'w, 's, CharacterView>,
}

/// What the panel shows of a character.
type CharacterView = (
    &'static Character,
    &'static Name,
    Has<Speaking>,
    Has<Deciding>,
    Option<&'static NpcDisposition>,
);

impl View<'_, '_> {
    /// The characters where the player is: id and name.
    fn here(&self) -> Vec<(&'static str, String)> {
        self.characters
            .iter()
            .filter(|(c, ..)| c.location == self.state.location)
            .map(|(c, name, ..)| (c.id, name.to_string()))
            .collect()
    }

    /// What the model is working on, from the plugin's markers: "Mira speaking, Mira
    /// deciding", "the narrator writing", or "nothing".
    fn in_progress(&self) -> String {
        let mut doing = Vec::new();
        for (_, name, speaking, deciding, _) in &self.characters {
            if speaking {
                doing.push(format!("{name} speaking"));
            }
            if deciding {
                doing.push(format!("{name} deciding"));
            }
        }
        if self.story.1 {
            doing.push("the narrator writing".to_owned());
        }
        if doing.is_empty() {
            "nothing".to_owned()
        } else {
            doing.join(", ")
        }
    }
}

/// The whole window, panel by panel.
fn draw(
    mut contexts: EguiContexts,
    mut ui_state: ResMut<UiState>,
    view: View,
    mut input: MessageWriter<PlayerInput>,
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    // Panels are laid out inside one Ui covering the window (egui 0.36).
    let mut root = egui::Ui::new(
        ctx.clone(),
        "adventure".into(),
        egui::UiBuilder::new()
            .layer_id(egui::LayerId::background())
            .max_rect(ctx.viewport_rect()),
    );
    let root = &mut root;
    let ui_state = &mut *ui_state;
    let input = &mut input;

    egui::Panel::top("title").show(root, |ui| title_bar(ui, &view, input));
    egui::Panel::left("where")
        .resizable(false)
        .exact_size(230.0)
        .show(root, |ui| where_panel(ui, &view, ui_state, input));
    // Whoever the player talks to must be here; default to the first character here.
    let here = view.here();
    if !here.iter().any(|(id, _)| Some(*id) == ui_state.talking_to) {
        ui_state.talking_to = here.first().map(|(id, _)| *id);
    }
    egui::Panel::bottom("act").show(root, |ui| {
        ui.add_space(4.0);
        choices(ui, &view, input);
        ui.add_space(4.0);
        ui.horizontal(|ui| say_field(ui, &here, ui_state, input));
        ui.add_space(4.0);
    });
    if ui_state.debug_open {
        egui::Panel::right("debug")
            .default_size(320.0)
            .show(root, |ui| debug_panel(ui, &view));
    }
    egui::CentralPanel::default().show(root, |ui| transcript_panel(ui, &view.transcript));
    model_notice(&ctx, &view.model.state);
    Ok(())
}

/// The title, Save and Load.
fn title_bar(ui: &mut egui::Ui, view: &View, input: &mut MessageWriter<PlayerInput>) {
    ui.horizontal(|ui| {
        ui.heading("The Silver Key");
        ui.separator();
        if ui.button("Save").clicked() {
            input.write(PlayerInput::Save);
        }
        let loading_is_safe = view.story.0.pending.is_none() && !view.transcript.is_streaming();
        if ui
            .add_enabled(loading_is_safe, egui::Button::new("Load"))
            .clicked()
        {
            input.write(PlayerInput::Load);
        }
        ui.separator();
        ui.label(RichText::new("F3: debug").weak());
    });
}

/// Where the player is, who is here, what they carry and where they can go.
fn where_panel(
    ui: &mut egui::Ui,
    view: &View,
    ui_state: &mut UiState,
    input: &mut MessageWriter<PlayerInput>,
) {
    let state = &view.state;
    ui.heading(capitalize(state.location.name()));
    ui.label(state.location.description());
    ui.add_space(8.0);
    ui.strong("Who is here");
    let mut anyone = false;
    for (character, name, speaking, _, disposition) in &view.characters {
        if character.location != state.location {
            continue;
        }
        anyone = true;
        let selected = ui_state.talking_to == Some(character.id);
        let mut label = name.to_string();
        if let Some(d) = disposition {
            label.push_str(&format!(" — {}, regard {:+}", d.mood, d.affinity));
        }
        if speaking {
            label.push_str(" (speaking)");
        }
        if ui.selectable_label(selected, label).clicked() {
            ui_state.talking_to = Some(character.id);
        }
    }
    if !anyone {
        ui.label(RichText::new("nobody").weak());
    }
    ui.add_space(8.0);
    ui.strong("You carry");
    if state.inventory.is_empty() {
        ui.label(RichText::new("nothing").weak());
    }
    for item in &state.inventory {
        ui.label(format!("• {item}"));
    }
    ui.add_space(8.0);
    ui.strong("Go to");
    for &exit in state.location.exits() {
        let open = exit != Location::Tower || state.tower_door_open;
        if ui
            .add_enabled(open, egui::Button::new(capitalize(exit.name())))
            .on_disabled_hover_text("The door is barred.")
            .clicked()
        {
            input.write(PlayerInput::Travel(exit));
        }
    }
}

/// The current scene's choices; while the narrator writes (the plugin's [`Narrating`]), a
/// note instead; after a failed scene, a way to try again.
fn choices(ui: &mut egui::Ui, view: &View, input: &mut MessageWriter<PlayerInput>) {
    let (story, narrating) = *view.story;
    if story.pending.is_none() {
        let Some(scene) = story.current_scene() else {
            return;
        };
        ui.horizontal_wrapped(|ui| {
            for (i, choice) in scene.choices.iter().enumerate() {
                if ui.button(format!("{}. {}", i + 1, choice.text)).clicked() {
                    input.write(PlayerInput::Choose(i));
                }
            }
        });
    } else if narrating {
        ui.label(RichText::new("The narrator is writing…").italics());
    } else {
        ui.horizontal(|ui| {
            ui.label(RichText::new("The narrator fell silent.").italics());
            if ui.button("Try again").clicked() {
                input.write(PlayerInput::Retry);
            }
        });
    }
}

/// The text field to talk to whoever is selected.
fn say_field(
    ui: &mut egui::Ui,
    here: &[(&'static str, String)],
    ui_state: &mut UiState,
    input: &mut MessageWriter<PlayerInput>,
) {
    let Some(id) = ui_state.talking_to else {
        ui.label(RichText::new("There is nobody here to talk to.").weak());
        return;
    };
    let name = here
        .iter()
        .find(|(h, _)| *h == id)
        .map_or(id.to_owned(), |(_, n)| n.clone());
    ui.label(format!("Say to {name}:"));
    let field = ui.add(
        egui::TextEdit::singleline(&mut ui_state.input)
            .desired_width(ui.available_width() - 60.0)
            .hint_text("type and press Enter"),
    );
    let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    if (ui.button("Say").clicked() || entered) && !ui_state.input.trim().is_empty() {
        input.write(PlayerInput::Say {
            to: id.to_owned(),
            text: std::mem::take(&mut ui_state.input),
        });
        field.request_focus();
    }
}

/// Frame time, decode speed, what the model is doing, its cache, the last action and prompt.
fn debug_panel(ui: &mut egui::Ui, view: &View) {
    ui.heading("Debug");
    let status = &view.model.status;
    let debug = &view.debug;
    egui::Grid::new("figures").show(ui, |ui| {
        let mut row = |name: &str, value: String| {
            ui.label(name);
            ui.label(value);
            ui.end_row();
        };
        row(
            "frame",
            format!("{:.1} ms", view.time.delta_secs() * 1000.0),
        );
        row("tokens/s", format!("{:.1}", debug.tokens_per_second));
        row("in progress", view.in_progress());
        row("queue", format!("{} waiting at the worker", status.queued));
        let mib = status.cache_bytes as f64 / (1024.0 * 1024.0);
        let slots = format!(
            "{} of {} ({mib:.1} MiB)",
            status.slots_used, status.slots_capacity
        );
        row("slots", slots);
        row("last action", debug.last_action.clone());
        let filtered = debug.filtered.last().cloned();
        row(
            "content",
            filtered.unwrap_or_else(|| "nothing filtered".into()),
        );
    });
    ui.separator();
    ui.strong("Last prompt as sent");
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.add(egui::Label::new(RichText::new(&debug.last_prompt).monospace()).wrap());
    });
}

/// Everything said so far, newest at the bottom.
fn transcript_panel(ui: &mut egui::Ui, transcript: &Transcript) {
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for entry in &transcript.entries {
                let (who, colour) = match &entry.speaker {
                    Speaker::Narrator => (String::new(), NARRATOR),
                    Speaker::Player => ("You: ".to_owned(), PLAYER),
                    Speaker::Npc(name) => (format!("{name}: "), NPC),
                    Speaker::Game => (String::new(), GAME),
                };
                let cursor = if entry.streaming { " …" } else { "" };
                let mut text = RichText::new(format!("{who}{}{cursor}", entry.text)).color(colour);
                if entry.speaker == Speaker::Game {
                    text = text.italics();
                }
                ui.add(egui::Label::new(text).wrap());
                ui.add_space(6.0);
            }
        });
}

/// Over everything: the model's progress, or why there is none.
fn model_notice(ctx: &egui::Context, state: &ModelState) {
    match state {
        ModelState::Loading(fraction) => {
            notice("Waking the storyteller").show(ctx, |ui| {
                ui.label("Loading the language model…");
                ui.add(egui::ProgressBar::new(*fraction).show_percentage());
            });
        }
        ModelState::Failed(reason) => {
            notice("The storyteller is missing").show(ctx, |ui| {
                ui.label("The characters cannot talk without a language model.");
                ui.label(RichText::new(reason.as_str()).color(Color32::LIGHT_RED));
                ui.label(
                    "Run scripts/fetch-model in the project folder, then start the game again.",
                );
            });
        }
        ModelState::NotLoaded | ModelState::Ready(_) => {}
    }
}

/// A fixed window in the middle of the screen.
fn notice(title: &str) -> egui::Window<'_> {
    egui::Window::new(title)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}
