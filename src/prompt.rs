//! Prompt templates: how a persona, the game's state and the conversation so far become the
//! chat messages the model sees. Templates are Jinja (minijinja), stored as assets in
//! `assets/prompts/*.jinja`, so writers can change them without touching code.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value, context};

#[cfg(feature = "bevy")]
use bevy::prelude::ReflectDefault;

use crate::action::ActionSpec;
use crate::engine::ChatMessage;
use crate::persona::Persona;
use crate::story::{Story, StoryAsset};

/// The NPC prompt used when an NPC names no template of its own (`assets/prompts/npc.jinja`).
pub const DEFAULT_NPC_TEMPLATE: &str = include_str!("../assets/prompts/npc.jinja");

/// The narrator's prompt unless a story names its own (`assets/prompts/narrator.jinja`).
pub const DEFAULT_NARRATOR_TEMPLATE: &str = include_str!("../assets/prompts/narrator.jinja");

/// The prompt for an NPC's choice of action (`assets/prompts/action.jinja`).
pub const DEFAULT_ACTION_TEMPLATE: &str = include_str!("../assets/prompts/action.jinja");

/// What the player "says" when an NPC speaks first (a greeting or a bark).
pub const UNPROMPTED_LINE: &str = "(The player walks up to you. Say something to them.)";

/// Facts from the game that templates can use: `{{ world.time_of_day }}`,
/// `{% if npc.quest_given %}`. Values are JSON-like (strings, numbers, booleans, lists).
/// A map from name to value (it derefs to a `BTreeMap`); it reflects as one opaque value.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(
    feature = "bevy",
    derive(bevy::reflect::Reflect),
    reflect(opaque, Clone, Debug, Default, PartialEq)
)]
#[serde(transparent)]
pub struct Facts(pub BTreeMap<String, serde_json::Value>);

impl Facts {
    /// No facts.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::ops::Deref for Facts {
    type Target = BTreeMap<String, serde_json::Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Facts {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: Into<String>, V: Into<serde_json::Value>> FromIterator<(K, V)> for Facts {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// A template error: syntax, an undefined variable, a failing filter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("prompt template {template}: {message}")]
pub struct PromptError {
    /// The template's name (its asset path).
    pub template: String,
    /// What went wrong, with the line where minijinja knows it.
    pub message: String,
}

/// A compiled prompt template. Undefined variables are errors, not empty strings, so a typo
/// in a template fails loudly instead of silently dropping a fact.
#[derive(Debug)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
pub struct PromptTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
}

/// Bounds the work one render may do.
const FUEL: u64 = 1_000_000;

impl PromptTemplate {
    /// Compiles a template; `name` is used in error messages.
    pub fn new(name: &str, source: &str) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned("prompt", source.to_owned())
            .map_err(|e| error(name, source, &e))?;
        Ok(Self {
            name: name.to_owned(),
            source: source.to_owned(),
            env,
        })
    }

    /// The built-in narrator template.
    pub fn default_narrator() -> Self {
        Self::new("narrator.jinja (built in)", DEFAULT_NARRATOR_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The built-in NPC action template.
    pub fn default_action() -> Self {
        Self::new("action.jinja (built in)", DEFAULT_ACTION_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The messages for the narrator's next scene. The template sees `story` (the asset),
    /// `world`, and `path`: the last scenes, each with the `choice` taken in it.
    pub fn narrator_messages(
        &self,
        asset: &StoryAsset,
        story: &Story,
        world: &Facts,
    ) -> Result<Vec<ChatMessage>, PromptError> {
        let path: Vec<Value> = story
            .path()
            .into_iter()
            .map(|(node, choice)| {
                context! { scene => node.text.clone(), choice => choice.map(|c| c.text.clone()) }
            })
            .collect();
        // The last few scenes are enough context for a small model.
        let path = &path[path.len().saturating_sub(6)..];
        let system = self.render(context! {
            story => Value::from_serialize(asset),
            world => Value::from_serialize(world),
            path => path,
        })?;
        Ok(vec![
            ChatMessage::system(system),
            ChatMessage::user(format!(
                "Reply with JSON: the scene, then exactly {} choices.",
                asset.choices
            )),
        ])
    }

    /// The messages for an NPC's decision: the template sees `persona`, `world`, `npc` and
    /// `actions`; the situation (or the player's last line) is the user turn.
    pub fn action_messages(
        &self,
        persona: &Persona,
        world: &Facts,
        npc: &Facts,
        actions: &[ActionSpec],
        situation: &str,
    ) -> Result<Vec<ChatMessage>, PromptError> {
        let system = self.render(context! {
            persona => Value::from_serialize(persona),
            world => Value::from_serialize(world),
            npc => Value::from_serialize(npc),
            actions => Value::from_serialize(actions),
        })?;
        Ok(vec![
            ChatMessage::system(system),
            ChatMessage::user(situation),
        ])
    }

    /// The built-in NPC template.
    pub fn default_npc() -> Self {
        Self::new("npc.jinja (built in)", DEFAULT_NPC_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template with arbitrary variables.
    pub fn render(&self, vars: Value) -> Result<String, PromptError> {
        let tmpl = self
            .env
            .get_template("prompt")
            .map_err(|e| error(&self.name, &self.source, &e))?;
        tmpl.render(vars)
            .map(|s| s.trim().to_owned())
            .map_err(|e| error(&self.name, &self.source, &e))
    }

    /// The messages for one NPC line: the rendered template as the system message, then the
    /// conversation so far, then the player's line (or [`UNPROMPTED_LINE`]).
    ///
    /// The template sees `persona`, `world`, `npc`, `player_line` (or none) and `history`.
    pub fn npc_messages(
        &self,
        persona: &Persona,
        world: &Facts,
        npc: &Facts,
        history: &[ChatMessage],
        player_line: Option<&str>,
    ) -> Result<Vec<ChatMessage>, PromptError> {
        let system = self.render(context! {
            persona => Value::from_serialize(persona),
            world => Value::from_serialize(world),
            npc => Value::from_serialize(npc),
            history => Value::from_serialize(history),
            player_line => player_line,
        })?;
        let mut messages = Vec::with_capacity(history.len() + 2);
        messages.push(ChatMessage::system(system));
        messages.extend(history.iter().cloned());
        messages.push(ChatMessage::user(player_line.unwrap_or(UNPROMPTED_LINE)));
        Ok(messages)
    }
}

/// "undefined value `npc.mood` at line 1": the kind, the detail, the offending source text
/// and the line, without minijinja's internal template name.
fn error(name: &str, source: &str, e: &minijinja::Error) -> PromptError {
    let mut message = e.kind().to_string();
    if let Some(detail) = e.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(snippet) = e.range().and_then(|r| source.get(r)) {
        message.push_str(&format!(" `{}`", snippet.trim()));
    }
    if let Some(line) = e.line() {
        message.push_str(&format!(" at line {line}"));
    }
    PromptError {
        template: name.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mira() -> Persona {
        Persona::from_ron(
            r#"(name: "Mira", description: "the blacksmith", knowledge: ["Wolves roam."])"#,
            "mira",
        )
        .unwrap()
    }

    #[test]
    fn default_template_uses_persona_world_and_npc_facts() {
        let mut world = Facts::new();
        world.insert("time_of_day".into(), "evening".into());
        let mut npc = Facts::new();
        npc.insert("mood".into(), "tired".into());
        let msgs = PromptTemplate::default_npc()
            .npc_messages(&mira(), &world, &npc, &[], Some("Hello"))
            .unwrap();
        assert_eq!(msgs.len(), 2);
        let system = &msgs[0].content;
        for needle in [
            "You are Mira, the blacksmith.",
            "- Wolves roam.",
            "time of day: evening",
            "mood: tired",
        ] {
            assert!(system.contains(needle), "{needle:?} missing from {system}");
        }
        assert_eq!(msgs[1], ChatMessage::user("Hello"));
    }

    #[test]
    fn undefined_variables_and_syntax_errors_are_errors() {
        let t = PromptTemplate::new("bad.jinja", "Hi {{ persona.nickname }}").unwrap();
        let err = t
            .npc_messages(&mira(), &Facts::new(), &Facts::new(), &[], None)
            .unwrap_err();
        assert_eq!(err.template, "bad.jinja");
        assert!(err.message.contains("undefined"), "{err}");
        assert!(err.message.contains("persona.nickname"), "{err}");
        let err = PromptTemplate::new("broken.jinja", "line one\n{% if %}").unwrap_err();
        assert!(err.message.contains("line 2"), "{err}");
    }
}
