//! Prompt templates: how a persona, the game's state and the conversation so far become the
//! chat messages the model sees. Templates are Jinja (minijinja), stored as assets in
//! `assets/prompts/*.jinja`, so writers can change them without touching code.

mod group;
mod narrator;
mod npc;
mod summary;
mod template;

pub use crate::facts::Facts;
pub use group::{
    SpokenLine, group_cue, group_opening, group_turns, next_speaker_messages, next_speaker_schema,
};
/// The value [`PromptTemplate::render`] takes (minijinja's): build one with
/// `TemplateValue::from_serialize(..)` or minijinja's `context!` macro.
pub use minijinja::Value as TemplateValue;
pub use narrator::{choice_list, example_echoes, opening_ask};
pub use npc::{
    DEFAULT_PLAYER_NAME, MAX_EXAMPLE_TURNS, MAX_HISTORY_TURNS, MAX_TURN_BYTES, PLAYER_NAME_FACT,
    UNPROMPTED_LINE, conversation, directed_unprompted_line, player_name, relevant_facts,
};
pub use summary::summary_messages;
pub use template::{
    DEFAULT_ACTION_TEMPLATE, DEFAULT_NARRATOR_TEMPLATE, DEFAULT_NPC_TEMPLATE, PROMPT_TEMPLATE_FUEL,
    PromptError, PromptTemplate,
};
