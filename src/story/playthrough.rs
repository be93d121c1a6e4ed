//! A playthrough: the scenes so far and the choices taken. Serializable for save games.

#[cfg(feature = "bevy")]
use bevy::prelude::{ReflectComponent, ReflectDefault};
use serde::{Deserialize, Serialize};

/// One scene in a playthrough.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct SceneNode {
    /// The scene text.
    pub text: String,
    /// The choices offered.
    pub choices: Vec<Choice>,
    /// The scene and choice that led here; `None` for the opening.
    pub from: Option<(usize, usize)>,
    /// The pinned scene's id, for authored scenes.
    pub fixed: Option<String>,
}

/// A choice offered in a scene.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct Choice {
    /// What the player sees.
    pub text: String,
    /// A pinned scene it leads to.
    pub goto: Option<String>,
    /// The scene that followed, once taken.
    pub next: Option<usize>,
}

/// A playthrough: every scene so far with the choices taken. Serializable, so a saved game
/// resumes with the same graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "bevy",
    derive(bevy::ecs::component::Component, bevy::reflect::Reflect),
    reflect(Component, Default)
)]
pub struct Story {
    /// Scenes in the order they were reached.
    pub nodes: Vec<SceneNode>,
    /// The scene the player is at.
    pub current: Option<usize>,
    /// A choice taken whose scene is not written yet: `(scene, choice)`.
    pub pending: Option<(usize, usize)>,
}

/// Why a story step is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoryError {
    /// The choice index does not exist in the current scene.
    #[error("choice {index} does not exist: the scene offers {available} (0..{available})")]
    NoSuchChoice {
        /// The index asked for.
        index: usize,
        /// How many choices there are.
        available: usize,
    },
    /// No scene yet, so nothing to choose from.
    #[error("the story has no scene yet: request one first")]
    NotStarted,
    /// The narrator's output did not parse (cannot happen under the schema; kept for
    /// outputs from other sources).
    #[error("the narrator's output is malformed: {0}")]
    Malformed(String),
    /// A `goto` names a scene the story asset does not have (the asset changed).
    #[error("scene `{0}` is not in the story asset")]
    MissingScene(String),
}

impl Story {
    /// The scene the player is at.
    pub fn current_scene(&self) -> Option<&SceneNode> {
        self.current.and_then(|i| self.nodes.get(i))
    }

    /// The path from the opening to the current scene, each scene with the choice taken in
    /// it (for the current scene, the pending choice if one was taken).
    pub fn path(&self) -> Vec<(&SceneNode, Option<&Choice>)> {
        let mut indices = Vec::new();
        let mut at = self.current;
        while let Some(i) = at {
            indices.push(i);
            at = self.nodes[i].from.map(|(s, _)| s);
        }
        indices.reverse();
        indices
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let taken = match indices.get(k + 1) {
                    Some(&next) => self.nodes[next].from.map(|(_, c)| c),
                    None => self.pending.filter(|(s, _)| *s == i).map(|(_, c)| c),
                };
                let node = &self.nodes[i];
                (node, taken.and_then(|c| node.choices.get(c)))
            })
            .collect()
    }

    /// Adds a scene after the pending choice (or as the opening) and moves there.
    pub fn push_scene(
        &mut self,
        text: String,
        choices: Vec<(String, Option<String>)>,
        fixed: Option<String>,
    ) -> usize {
        let from = self.pending.take();
        let index = self.nodes.len();
        self.nodes.push(SceneNode {
            text,
            choices: choices
                .into_iter()
                .map(|(text, goto)| Choice {
                    text,
                    goto,
                    next: None,
                })
                .collect(),
            from,
            fixed,
        });
        if let Some((s, c)) = from {
            self.nodes[s].choices[c].next = Some(index);
        }
        self.current = Some(index);
        index
    }

    /// Takes choice `index` in the current scene. Returns the choice; its scene is written
    /// next (pinned or generated).
    pub fn choose(&mut self, index: usize) -> Result<&Choice, StoryError> {
        let current = self.current.ok_or(StoryError::NotStarted)?;
        let available = self.nodes[current].choices.len();
        if index >= available {
            return Err(StoryError::NoSuchChoice { index, available });
        }
        self.pending = Some((current, index));
        Ok(&self.nodes[current].choices[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_taken_and_the_path_is_kept() {
        let mut story = Story::default();
        assert_eq!(story.choose(0), Err(StoryError::NotStarted));
        story.push_scene(
            "A gate.".into(),
            vec![("Enter".into(), None), ("Leave".into(), None)],
            None,
        );
        assert_eq!(
            story.choose(5).unwrap_err(),
            StoryError::NoSuchChoice {
                index: 5,
                available: 2
            }
        );
        story.choose(1).unwrap();
        assert_eq!(
            story.path()[0].1.unwrap().text,
            "Leave",
            "the pending choice is on the path"
        );
        let path = story.path();
        assert_eq!(path.len(), 1);
        story.push_scene(
            "A road.".into(),
            vec![("Walk".into(), None), ("Rest".into(), None)],
            None,
        );
        let path = story.path();
        assert_eq!(path.len(), 2);
        assert_eq!(path[0].1.unwrap().text, "Leave");
        assert!(path[1].1.is_none());
        assert_eq!(story.nodes[0].choices[1].next, Some(1));
    }
}
