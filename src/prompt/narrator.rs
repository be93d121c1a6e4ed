//! The narrator's conversation: the story so far as chat turns, with example scenes while the
//! story is young.

use minijinja::value::Serde;
use minijinja::{Value, context};

use super::template::{PromptError, PromptTemplate};
use crate::engine::ChatMessage;
use crate::facts::Facts;
use crate::story::{Story, StoryAsset, choices_ask};

/// The narrator's turn that asks for the opening scene of a story with this premise.
pub fn opening_ask(premise: &str) -> String {
    format!("Begin the story. {premise}")
}

/// The narrator's turn that asks for the next scene when no choice is known.
const NEXT_ASK: &str = "What happens next?";

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

/// The words of the built-in example that a story's scenes and choices must not echo: those
/// its premise does not use, for a story shown the example (one without pinned scenes).
/// Small models copy the example's stranger, letter and inn into stories of their own; the
/// narrator's guard bans these words ([`crate::content::ContentPolicy::banned`]).
pub fn example_echoes(asset: &StoryAsset) -> Vec<String> {
    const ECHOES: &[&str] = &["stranger", "letter", "inn", "hooded", "roadside"];
    if asset.nodes.iter().any(|n| !n.choices.is_empty()) {
        return Vec::new();
    }
    let premise = asset.premise.to_lowercase();
    let premise: Vec<&str> = premise
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    ECHOES
        .iter()
        .filter(|e| !premise.iter().any(|w| w.starts_with(*e)))
        .map(|e| (*e).to_owned())
        .collect()
}

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

impl PromptTemplate {
    /// The messages for the narrator's next scene, as a conversation a chat model knows: the
    /// template's brief as the system message; then, while the story is young, an example
    /// exchange (the story's own pinned scenes, or a built-in one); then every scene so far
    /// as an earlier reply, each followed by its choices as a plain list; last, the player's
    /// choice as the newest turn. The template sees `story` (the asset), `world`, and `path`:
    /// the last scenes, each with the `choice` taken in it.
    fn narrator_turns(
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
            story => Value::from(Serde(asset)),
            world => Value::from(Serde(world)),
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

    /// The narrator's messages with lore: the entries of `lore` (the world's; `&[]` for
    /// none) and of the story's own book that fire on the recent scenes and choices, or on
    /// the facts, go into a note next to the newest ask.
    pub fn narrator_messages(
        &self,
        asset: &StoryAsset,
        story: &Story,
        world: &Facts,
        lore: &[&crate::lore::Lorebook],
    ) -> Result<Vec<ChatMessage>, PromptError> {
        let mut messages = self.narrator_turns(asset, story, world)?;
        let mut books = lore.to_vec();
        books.extend(asset.lore.as_ref());
        if books.is_empty() {
            return Ok(messages);
        }
        let turns: Vec<&str> = messages
            .iter()
            .filter(|m| m.role != crate::engine::Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let fired = crate::lore::fired_contents(&books, &turns, world, &Facts::new());
        if !fired.is_empty() {
            let at = messages.len() - 1;
            messages.insert(
                at,
                ChatMessage::system(format!("The narrator knows: {}", fired.join(" "))),
            );
        }
        Ok(messages)
    }
}
