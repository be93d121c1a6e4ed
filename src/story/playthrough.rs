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
    /// A saved playthrough that cannot be a real one: indices out of range, a `from` that
    /// does not point back, or over the size limits ([`Story::validate`]).
    #[error("the saved story is invalid: {0}")]
    Invalid(String),
}

/// The most scenes a playthrough holds ([`Story::validate`]).
pub const MAX_SCENES: usize = 10_000;
/// The most choices a saved scene offers.
pub const MAX_SAVED_CHOICES: usize = 16;
/// The most bytes of text in one saved scene or choice.
pub const MAX_SCENE_BYTES: usize = 16 * 1024;

impl Story {
    /// The scene the player is at.
    pub fn current_scene(&self) -> Option<&SceneNode> {
        self.current.and_then(|i| self.nodes.get(i))
    }

    /// Checks a playthrough that came from outside (a save file, a scene, reflection)
    /// before the plugin uses it: every index in range, every `from` earlier than its scene
    /// and pointing back at a real choice, every `next` matching its scene's `from`, and the
    /// size limits [`MAX_SCENES`], [`MAX_SAVED_CHOICES`] and [`MAX_SCENE_BYTES`]. The
    /// plugin checks before every scene; a story it refuses fails with a clear error and is
    /// left as it was.
    pub fn validate(&self) -> Result<(), StoryError> {
        let bad = |what: String| Err(StoryError::Invalid(what));
        let n = self.nodes.len();
        if n > MAX_SCENES {
            return bad(format!("{n} scenes (the limit is {MAX_SCENES})"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.choices.len() > MAX_SAVED_CHOICES {
                return bad(format!(
                    "scene {i} offers {} choices (the limit is {MAX_SAVED_CHOICES})",
                    node.choices.len()
                ));
            }
            let texts = std::iter::once(&node.text).chain(node.choices.iter().map(|c| &c.text));
            if texts.into_iter().any(|t| t.len() > MAX_SCENE_BYTES) {
                return bad(format!("scene {i} has a text over {MAX_SCENE_BYTES} bytes"));
            }
            match node.from {
                None if i != 0 => return bad(format!("scene {i} does not say where it came from")),
                Some((s, c)) if s >= i || c >= self.nodes[s].choices.len() => {
                    return bad(format!(
                        "scene {i} comes from ({s}, {c}), which is not an earlier scene's choice"
                    ));
                }
                _ => {}
            }
            for (c, choice) in node.choices.iter().enumerate() {
                if let Some(next) = choice.next
                    && self.nodes.get(next).and_then(|x| x.from) != Some((i, c))
                {
                    return bad(format!(
                        "choice {c} of scene {i} leads to scene {next}, which does not come from it"
                    ));
                }
            }
        }
        if let Some(current) = self.current
            && current >= n
        {
            return bad(format!(
                "the current scene {current} does not exist ({n} scenes)"
            ));
        }
        if self.current.is_none() && n > 0 {
            return bad("scenes but no current scene".into());
        }
        if let Some((s, c)) = self.pending
            && (Some(s) != self.current || c >= self.nodes[s].choices.len())
        {
            return bad(format!(
                "the pending choice ({s}, {c}) is not a choice of the current scene"
            ));
        }
        Ok(())
    }

    /// The path from the opening to the current scene, each scene with the choice taken in
    /// it (for the current scene, the pending choice if one was taken). On a story that
    /// [`validate`](Self::validate) refuses it stops at the first broken link instead of
    /// looping or panicking.
    pub fn path(&self) -> Vec<(&SceneNode, Option<&Choice>)> {
        let mut indices = Vec::new();
        let mut at = self.current.filter(|&i| i < self.nodes.len());
        // A valid `from` always points earlier, so a walk longer than the story is a cycle.
        while let Some(i) = at
            && indices.len() < self.nodes.len()
        {
            indices.push(i);
            at = self.nodes[i].from.map(|(s, _)| s).filter(|&s| s < i);
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
        if let Some((s, c)) = from
            && let Some(choice) = self.nodes.get_mut(s).and_then(|n| n.choices.get_mut(c))
        {
            choice.next = Some(index);
        }
        self.current = Some(index);
        index
    }

    /// Takes choice `index` in the current scene. Returns the choice; its scene is written
    /// next (pinned or generated).
    pub fn choose(&mut self, index: usize) -> Result<&Choice, StoryError> {
        let current = self.current.ok_or(StoryError::NotStarted)?;
        let node = self.nodes.get(current).ok_or_else(|| {
            StoryError::Invalid(format!("the current scene {current} does not exist"))
        })?;
        let available = node.choices.len();
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
        assert_eq!(story.validate(), Ok(()));
    }

    #[test]
    fn hostile_saves_are_refused_and_never_hang_or_panic() {
        let node = |from| SceneNode {
            text: "A gate.".into(),
            choices: vec![Choice {
                text: "Enter".into(),
                goto: None,
                next: None,
            }],
            from,
            fixed: None,
        };
        // A `from` cycle: 0 <- 1 <- 0. `path` looped forever on it.
        let cycle = Story {
            nodes: vec![node(Some((1, 0))), node(Some((0, 0)))],
            current: Some(1),
            pending: None,
        };
        let out_of_range = Story {
            nodes: vec![node(None)],
            current: Some(7),
            pending: Some((7, 3)),
        };
        let bad_from = Story {
            nodes: vec![node(None), node(Some((0, 9)))],
            current: Some(1),
            pending: None,
        };
        for story in [cycle, out_of_range, bad_from] {
            assert!(
                matches!(story.validate(), Err(StoryError::Invalid(_))),
                "{story:?}"
            );
            // Panic-free and finite anyway.
            let _ = story.path();
            let mut s = story.clone();
            let _ = s.choose(0);
            s.push_scene("Next.".into(), vec![], None);
        }
        let huge = Story {
            nodes: vec![node(None); MAX_SCENES + 1],
            current: Some(0),
            pending: None,
        };
        assert!(huge.validate().unwrap_err().to_string().contains("limit"));
    }
}
