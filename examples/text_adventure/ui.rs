//! The adventure's window: transcript, choices, text input, side panel, loading bar, and a
//! debug panel on F3. Everything it does goes through [`PlayerInput`].

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

#[expect(
    clippy::too_many_arguments,
    reason = "a system takes what it reads as parameters"
)]
fn draw(
    mut contexts: EguiContexts,
    mut ui_state: ResMut<UiState>,
    state: Res<GameState>,
    transcript: Res<Transcript>,
    debug: Res<DebugInfo>,
    model: Res<DialogueModel>,
    time: Res<Time<Real>>,
    story: Single<&Story, With<StoryTeller>>,
    characters: Query<(&Character, &Name, Has<Speaking>)>,
    mut input: MessageWriter<PlayerInput>,
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    let ctx = &ctx;
    let ui_state = &mut *ui_state;
    // Panels are laid out inside one Ui covering the window (egui 0.36).
    let mut root = egui::Ui::new(
        ctx.clone(),
        "adventure".into(),
        egui::UiBuilder::new()
            .layer_id(egui::LayerId::background())
            .max_rect(ctx.viewport_rect()),
    );
    let root = &mut root;

    egui::Panel::top("title").show(root, |ui| {
        ui.horizontal(|ui| {
            ui.heading("The Silver Key");
            ui.separator();
            if ui.button("Save").clicked() {
                input.write(PlayerInput::Save);
            }
            let loading_is_safe = story.pending.is_none() && !transcript.is_streaming();
            if ui
                .add_enabled(loading_is_safe, egui::Button::new("Load"))
                .clicked()
            {
                input.write(PlayerInput::Load);
            }
            ui.separator();
            ui.label(RichText::new("F3: debug").weak());
        });
    });

    egui::Panel::left("where")
        .resizable(false)
        .exact_size(230.0)
        .show(root, |ui| {
            ui.heading(capitalize(state.location.name()));
            ui.label(state.location.description());
            ui.add_space(8.0);
            ui.strong("Who is here");
            let mut anyone = false;
            for (character, name, speaking) in &characters {
                if character.location != state.location {
                    continue;
                }
                anyone = true;
                let selected = ui_state.talking_to == Some(character.id);
                let label = if speaking {
                    format!("{name} (speaking)")
                } else {
                    name.to_string()
                };
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
        });

    // Whoever the player talks to must be here; default to the first character here.
    let here: Vec<(&'static str, String)> = characters
        .iter()
        .filter(|(c, _, _)| c.location == state.location)
        .map(|(c, n, _)| (c.id, n.to_string()))
        .collect();
    if !here.iter().any(|(id, _)| Some(*id) == ui_state.talking_to) {
        ui_state.talking_to = here.first().map(|(id, _)| *id);
    }

    egui::Panel::bottom("act").show(root, |ui| {
        ui.add_space(4.0);
        if story.pending.is_none() {
            if let Some(scene) = story.current_scene() {
                ui.horizontal_wrapped(|ui| {
                    for (i, choice) in scene.choices.iter().enumerate() {
                        if ui.button(format!("{}. {}", i + 1, choice.text)).clicked() {
                            input.write(PlayerInput::Choose(i));
                        }
                    }
                });
            }
        } else if transcript.narrator_busy {
            ui.label(RichText::new("The narrator is writing…").italics());
        } else {
            ui.horizontal(|ui| {
                ui.label(RichText::new("The narrator fell silent.").italics());
                if ui.button("Try again").clicked() {
                    input.write(PlayerInput::Retry);
                }
            });
        }
        ui.add_space(4.0);
        ui.horizontal(|ui| match ui_state.talking_to {
            Some(id) => {
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
            None => {
                ui.label(RichText::new("There is nobody here to talk to.").weak());
            }
        });
        ui.add_space(4.0);
    });

    if ui_state.debug_open {
        egui::Panel::right("debug")
            .default_size(320.0)
            .show(root, |ui| {
                ui.heading("Debug");
                let status = &model.status;
                egui::Grid::new("figures").show(ui, |ui| {
                    ui.label("frame");
                    ui.label(format!("{:.1} ms", time.delta_secs() * 1000.0));
                    ui.end_row();
                    ui.label("tokens/s");
                    ui.label(format!("{:.1}", debug.tokens_per_second));
                    ui.end_row();
                    ui.label("queue");
                    ui.label(format!(
                        "{} waiting, {} unanswered",
                        status.queued, debug.pending
                    ));
                    ui.end_row();
                    ui.label("slots");
                    ui.label(format!(
                        "{} of {} ({:.1} MiB)",
                        status.slots_used,
                        status.slots_capacity,
                        status.cache_bytes as f64 / (1024.0 * 1024.0)
                    ));
                    ui.end_row();
                    ui.label("last action");
                    ui.label(&debug.last_action);
                    ui.end_row();
                });
                ui.separator();
                ui.strong("Last prompt as sent");
                egui::ScrollArea::vertical().show(ui, |ui| {
                    ui.add(egui::Label::new(RichText::new(&debug.last_prompt).monospace()).wrap());
                });
            });
    }

    egui::CentralPanel::default().show(root, |ui| {
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
                    let mut text =
                        RichText::new(format!("{who}{}{cursor}", entry.text)).color(colour);
                    if entry.speaker == Speaker::Game {
                        text = text.italics();
                    }
                    ui.add(egui::Label::new(text).wrap());
                    ui.add_space(6.0);
                }
            });
    });

    // Over everything: the model's progress, or why there is none.
    match &model.state {
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
    Ok(())
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
