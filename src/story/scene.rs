//! A generated scene: the narrator's output, its schema and its streaming.

use serde::{Deserialize, Serialize};

use super::playthrough::StoryError;

/// The fewest words a generated scene may have: fewer reads as a title.
pub const MIN_SCENE_WORDS: usize = 12;

/// A scene as the narrator produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct Scene {
    /// The scene text.
    pub scene: String,
    /// The choices, non-empty and pairwise distinct.
    pub choices: Vec<String>,
}

impl Scene {
    /// A scene from the narrator's prose and its choice list (`- Open the door` lines).
    /// Checks that the prose is a scene (whole sentences, at least [`MIN_SCENE_WORDS`]
    /// words, no markup) and that there are `n` non-empty, pairwise distinct choices.
    pub fn from_prose(prose: &str, list: &str, n: usize) -> Result<Self, StoryError> {
        let scene = prose.trim();
        let words = scene.split_whitespace().count();
        if words < MIN_SCENE_WORDS || !crate::engine::ends_sentence(scene) {
            return Err(StoryError::Malformed(format!(
                "not a scene ({words} words, whole sentences: {}): {scene:?}",
                crate::engine::ends_sentence(scene)
            )));
        }
        if scene.contains(['{', '}', '<', '>', '_', '|', '`', '#', '\\', '/']) {
            return Err(StoryError::Malformed(format!("not prose: {scene:?}")));
        }
        let choices: Vec<String> = list
            .lines()
            .map(|l| l.trim().trim_start_matches('-').trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        Self {
            scene: scene.to_owned(),
            choices,
        }
        .checked(n)
    }

    /// The scene, trimmed, if it has `n` non-empty, pairwise distinct choices.
    fn checked(mut self, n: usize) -> Result<Self, StoryError> {
        self.scene = self.scene.trim().to_owned();
        for c in &mut self.choices {
            *c = c.trim().to_owned();
        }
        if self.choices.len() != n {
            return Err(StoryError::Malformed(format!(
                "{} choices instead of {n}",
                self.choices.len()
            )));
        }
        if self.choices.iter().any(String::is_empty) || self.scene.is_empty() {
            return Err(StoryError::Malformed("an empty scene or choice".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if !self.choices.iter().all(|c| seen.insert(c.to_lowercase())) {
            return Err(StoryError::Malformed("two choices are the same".into()));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_with_repeated_or_missing_choices_are_malformed() {
        let hall = |choices: &[&str]| Scene {
            scene: " A hall. ".into(),
            choices: choices.iter().map(|c| (*c).to_owned()).collect(),
        };
        assert_eq!(hall(&["Go", "Stay"]).checked(2).unwrap().scene, "A hall.");
        assert!(hall(&["Go", "go "]).checked(2).is_err());
        assert!(hall(&["Go"]).checked(2).is_err());
        assert!(hall(&["Go", ""]).checked(2).is_err());
    }
}
