//! What an author writes: `*.story.ron`.

use serde::{Deserialize, Serialize};

use crate::engine::SamplingParams;
use crate::ron_file::{Invalid, RonFileError, Validate, from_ron};

/// Fewest and most choices a scene may offer.
pub const CHOICES: std::ops::RangeInclusive<usize> = 2..=6;

/// What an author pins down about a story.
///
/// ```
/// # use bevy_llm_dialogue::story::StoryAsset;
/// let story = StoryAsset::from_ron(r#"(
///     title: "The Silver Key",
///     premise: "A traveller arrives in Elmsbrook, a village troubled by wolves.",
///     tone: "warm, a little eerie",
///     choices: 3,
///     narrator_must: ["write in the second person"],
///     narrator_must_not: ["kill the player"],
///     start: Some("gate"),
///     nodes: [(id: "gate", text: "You stand at the village gate.", choices: [(text: "Enter")])],
/// )"#, "key.story.ron")?;
/// assert_eq!(story.choices, 3);
/// # Ok::<(), bevy_llm_dialogue::ron_file::RonFileError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
#[serde(deny_unknown_fields)]
pub struct StoryAsset {
    /// The story's name.
    pub title: String,
    /// The situation the story starts from.
    pub premise: String,
    /// How it should read: "grim", "whimsical".
    #[serde(default)]
    pub tone: String,
    /// How many choices each generated scene offers.
    #[serde(default = "default_choices")]
    pub choices: usize,
    /// Rules the narrator follows.
    #[serde(default)]
    pub narrator_must: Vec<String>,
    /// Things the narrator never does.
    #[serde(default)]
    pub narrator_must_not: Vec<String>,
    /// The pinned scene the story opens with; `None` opens with a generated scene.
    #[serde(default)]
    pub start: Option<String>,
    /// Pinned scenes, written by the author.
    #[serde(default)]
    pub nodes: Vec<FixedNode>,
    /// The longest generated scene, in characters.
    #[serde(default = "default_scene_chars")]
    pub max_scene_chars: usize,
    /// Sampling for the narrator; unset fields take the defaults.
    #[serde(default)]
    pub sampling: Option<SamplingParams>,
    /// The narrator's own lore: entries that fire on the recent scenes and choices or on
    /// game facts go next to the narrator's newest ask, with the world's
    /// (`DialogueContext::lore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lore: Option<crate::lore::Lorebook>,
    /// What the narrator must never write in this story, on top of the game's
    /// [`ContentPolicy`](crate::content::ContentPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<crate::content::ContentOverride>,
}

fn default_choices() -> usize {
    3
}

fn default_scene_chars() -> usize {
    400
}

/// A scene the author wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(deny_unknown_fields)]
pub struct FixedNode {
    /// Referenced by `start` and by choices' `goto`.
    pub id: String,
    /// The scene text.
    pub text: String,
    /// The choices offered; any number.
    #[serde(default)]
    pub choices: Vec<FixedChoice>,
}

/// A choice in a pinned scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(deny_unknown_fields)]
pub struct FixedChoice {
    /// What the player sees.
    pub text: String,
    /// The pinned scene it leads to; `None` lets the narrator write what follows.
    #[serde(default)]
    pub goto: Option<String>,
}

impl StoryAsset {
    /// Parses and validates a story file; `file` names it in errors.
    pub fn from_ron(text: &str, file: &str) -> Result<Self, RonFileError> {
        from_ron(text, file)
    }

    /// The pinned scene with this id.
    pub fn node(&self, id: &str) -> Option<&FixedNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

impl Validate for StoryAsset {
    /// Checks values a parser cannot: choice counts, scene lengths, dangling ids.
    fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field: &str, reason: String| Invalid::new(field, reason);
        if !CHOICES.contains(&self.choices) {
            return Err(invalid(
                "choices",
                format!("{} is outside 2..=6", self.choices),
            ));
        }
        if !(40..=2000).contains(&self.max_scene_chars) {
            return Err(invalid(
                "max_scene_chars",
                format!("{} is outside 40..=2000", self.max_scene_chars),
            ));
        }
        if let Some(s) = &self.sampling {
            s.validate()
                .map_err(|e| invalid("sampling", e.to_string()))?;
        }
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(invalid("nodes", format!("two scenes have the id `{id}`")));
            }
        }
        let known = |id: &str| ids.contains(&id);
        if let Some(start) = &self.start
            && !known(start)
        {
            return Err(invalid("start", format!("no scene has the id `{start}`")));
        }
        for node in &self.nodes {
            for choice in &node.choices {
                if let Some(goto) = &choice.goto
                    && !known(goto)
                {
                    return Err(invalid(
                        "nodes",
                        format!(
                            "a choice in `{}` goes to `{goto}`, which no scene has",
                            node.id
                        ),
                    ));
                }
            }
        }
        if let Some(lore) = &self.lore {
            lore.validate()
                .map_err(|e| Invalid::new(format!("lore.{}", e.field), e.reason))?;
        }
        if let Some(content) = &self.content {
            content.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn story_assets_are_validated() {
        let bad = r#"(title: "T", premise: "P", choices: 9)"#;
        let err = StoryAsset::from_ron(bad, "t.story.ron").unwrap_err();
        assert!(err.to_string().contains("choices"), "{err}");
        let bad_goto = r#"(title: "T", premise: "P", nodes: [(id: "a", text: "x", choices: [(text: "y", goto: Some("b"))])])"#;
        assert!(StoryAsset::from_ron(bad_goto, "t.story.ron").is_err());
    }
}
