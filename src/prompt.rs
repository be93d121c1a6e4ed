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

/// The narrator's turn that asks for the opening scene of a story with this premise.
pub fn opening_ask(premise: &str) -> String {
    format!("Begin the story. {premise}")
}

/// The narrator's turn that asks for the next scene when no choice is known.
const NEXT_ASK: &str = "What happens next?";

/// The turn that asks for `n` choices after a scene.
pub fn choices_ask(n: usize) -> String {
    format!("What can the player do now? Give {n} short actions, one per line.")
}

/// Choices as the plain list the narrator writes: `- Open the door`, one per line.
pub fn choice_list(choices: &[String]) -> String {
    choices
        .iter()
        .map(|c| format!("- {c}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A scene of another story, to show the narrator what a scene and its choices look like
/// when the story has no pinned scene of its own.
const BUILT_IN_EXAMPLE: (&str, &str, [&str; 3]) = (
    "A traveller seeks shelter from a storm at a roadside inn.",
    "Rain drums on the roof of the old inn as you shake the water from your cloak. By the \
     fire, a hooded stranger watches you, then slides a sealed letter across the table.",
    [
        "Open the letter",
        "Ask the stranger's name",
        "Leave the inn",
    ],
);

/// Example scenes for the narrator: the story's pinned scenes that the playthrough has not
/// reached (two at most), or the built-in one.
fn scene_examples(asset: &StoryAsset, story: &Story) -> Vec<(String, String, Vec<String>)> {
    let reached = |id: &str| story.nodes.iter().any(|n| n.fixed.as_deref() == Some(id));
    let pinned: Vec<(String, String, Vec<String>)> = asset
        .nodes
        .iter()
        .filter(|n| !reached(&n.id) && !n.choices.is_empty())
        .take(2)
        .map(|n| {
            let choices = n.choices.iter().map(|c| c.text.clone()).collect();
            (asset.premise.clone(), n.text.clone(), choices)
        })
        .collect();
    if !pinned.is_empty() || !story.nodes.is_empty() {
        return pinned;
    }
    let (premise, text, choices) = BUILT_IN_EXAMPLE;
    let choices = choices.iter().map(|c| (*c).to_owned()).collect();
    vec![(premise.to_owned(), text.to_owned(), choices)]
}

/// How many of a persona's example lines become earlier turns of its conversations.
pub const MAX_EXAMPLE_TURNS: usize = 3;

/// Words too common to tie a question to a fact.
const COMMON_WORDS: &[&str] = &[
    "what",
    "where",
    "when",
    "which",
    "while",
    "with",
    "about",
    "there",
    "their",
    "have",
    "does",
    "your",
    "this",
    "that",
    "from",
    "they",
    "them",
    "know",
    "tell",
    "much",
    "many",
    "some",
    "here",
    "would",
    "could",
    "should",
    "anyone",
    "anything",
    "something",
    "been",
    "were",
    "will",
    "just",
    "like",
    "good",
    "the",
    "and",
    "how",
    "who",
    "why",
];

/// The content words of `text`, cut to five letters (a crude stem: "floods" and "flood",
/// "crossing" and "crossings" meet).
fn stems(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 4 && !COMMON_WORDS.contains(&w.as_str()))
        .map(|w| w.chars().take(5).collect())
        .collect()
}

/// The persona's facts that share a content word with what the player said.
pub fn relevant_facts<'a>(knowledge: &'a [String], said: &str) -> Vec<&'a str> {
    let asked = stems(said);
    knowledge
        .iter()
        .filter(|fact| stems(fact).iter().any(|s| asked.contains(s)))
        .map(String::as_str)
        .collect()
}

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

    /// The messages for the narrator's next scene, as a conversation a chat model knows: the
    /// template's brief as the system message; then, while the story is young, an example
    /// exchange (the story's own pinned scenes, or a built-in one); then every scene so far
    /// as an earlier reply, each followed by its choices as a plain list; last, the player's
    /// choice as the newest turn. The template sees `story` (the asset), `world`, and `path`:
    /// the last scenes, each with the `choice` taken in it.
    pub fn narrator_messages(
        &self,
        asset: &StoryAsset,
        story: &Story,
        world: &Facts,
    ) -> Result<Vec<ChatMessage>, PromptError> {
        let steps = story.path();
        // The last few scenes are enough context for a small model.
        let steps = &steps[steps.len().saturating_sub(6)..];
        let path: Vec<Value> = steps
            .iter()
            .map(|(node, choice)| {
                context! { scene => node.text.clone(), choice => choice.map(|c| c.text.clone()) }
            })
            .collect();
        let system = self.render(context! {
            story => Value::from_serialize(asset),
            world => Value::from_serialize(world),
            path => path,
        })?;
        let mut messages = vec![ChatMessage::system(system)];
        if steps.len() < 2 {
            for (premise, text, choices) in scene_examples(asset, story) {
                messages.push(ChatMessage::user(opening_ask(&premise)));
                messages.push(ChatMessage::assistant(text));
                messages.push(ChatMessage::user(choices_ask(choices.len())));
                messages.push(ChatMessage::assistant(choice_list(&choices)));
            }
        }
        let mut ask = opening_ask(&asset.premise);
        for (node, choice) in steps {
            messages.push(ChatMessage::user(ask));
            messages.push(ChatMessage::assistant(node.text.clone()));
            let offered: Vec<String> = node.choices.iter().map(|c| c.text.clone()).collect();
            messages.push(ChatMessage::user(choices_ask(offered.len())));
            messages.push(ChatMessage::assistant(choice_list(&offered)));
            ask = match choice {
                Some(c) => format!("The player chose: {}. What happens next?", c.text),
                None => NEXT_ASK.to_owned(),
            };
        }
        messages.push(ChatMessage::user(ask));
        Ok(messages)
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
        let mut messages = Vec::with_capacity(history.len() + 4 + 2 * persona.example_lines.len());
        messages.push(ChatMessage::system(system));
        // A small model keeps a voice it has already spoken in better than one it was told
        // about: its name and its example lines go in as earlier turns (QUALITY.md).
        messages.push(ChatMessage::user("Who are you?"));
        messages.push(ChatMessage::assistant(format!(
            "I'm {}, {}.",
            persona.name, persona.description
        )));
        for line in persona.example_lines.iter().take(MAX_EXAMPLE_TURNS) {
            messages.push(ChatMessage::user(UNPROMPTED_LINE));
            messages.push(ChatMessage::assistant(line.clone()));
        }
        messages.extend(history.iter().cloned());
        if let Some(line) = player_line {
            // Facts the player asks about go next to the question, where a small model
            // looks, not only at the top of the prompt.
            let facts = relevant_facts(&persona.knowledge, line);
            if !facts.is_empty() {
                messages.push(ChatMessage::system(format!(
                    "{} knows: {}",
                    persona.name,
                    facts.join(" ")
                )));
            }
        }
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
        // System, the self-introduction turn pair, the player's line.
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[2], ChatMessage::assistant("I'm Mira, the blacksmith."));
        let system = &msgs[0].content;
        for needle in [
            "You are Mira, the blacksmith.",
            "- Wolves roam.",
            "time of day: evening",
            "mood: tired",
        ] {
            assert!(system.contains(needle), "{needle:?} missing from {system}");
        }
        assert_eq!(msgs[3], ChatMessage::user("Hello"));
    }

    #[test]
    fn example_lines_are_turns_and_asked_about_facts_sit_by_the_question() {
        let mira = Persona::from_ron(
            r#"(name: "Mira", description: "the blacksmith",
                example_lines: ["Steel doesn't lie, friend."],
                knowledge: ["Wolves roam the Old Forest.", "Iron ore is in the ruin."])"#,
            "mira",
        )
        .unwrap();
        let msgs = PromptTemplate::default_npc()
            .npc_messages(
                &mira,
                &Facts::new(),
                &Facts::new(),
                &[],
                Some("Any wolves about?"),
            )
            .unwrap();
        assert_eq!(
            msgs[4],
            ChatMessage::assistant("Steel doesn't lie, friend.")
        );
        let [.., facts, newest] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(newest, &ChatMessage::user("Any wolves about?"));
        assert_eq!(facts.role, crate::engine::Role::System);
        assert!(
            facts.content.contains("Wolves roam the Old Forest."),
            "{facts:?}"
        );
        assert!(
            !facts.content.contains("Iron ore"),
            "only the facts asked about: {facts:?}"
        );
        assert!(
            !msgs[0].content.contains("Steel doesn't lie"),
            "not in the system prompt too"
        );
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
