//! Branching stories: a narrator writes scenes and offers the player choices; authors pin
//! parts of the story in `assets/stories/*.story.ron` and generated scenes fill the rest.
//!
//! Plain data, Bevy-free: [`StoryAsset`] is what an author writes, [`Story`] is a playthrough
//! (the graph of scenes and the choices taken; serializable for save games), and
//! [`scene_schema`] is the JSON schema the narrator's output is constrained to, so every
//! scene parses and has exactly the asked number of choices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::SamplingParams;
use crate::persona::{PersonaError, line_of_field, located};

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
/// # Ok::<(), bevy_llm_dialogue::persona::PersonaError>(())
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
}

fn default_choices() -> usize {
    3
}

fn default_scene_chars() -> usize {
    400
}

/// A scene the author wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub fn from_ron(text: &str, file: &str) -> Result<Self, PersonaError> {
        let story: StoryAsset = ron::Options::default()
            .from_str(text)
            .map_err(|e| located(file, &e))?;
        story
            .validate()
            .map_err(|(field, reason)| PersonaError::Invalid {
                file: file.to_owned(),
                line: line_of_field(text, &field),
                field,
                reason,
            })?;
        Ok(story)
    }

    /// Checks values a parser cannot; returns the offending field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, reason: String| (field.to_owned(), reason);
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
        Ok(())
    }

    /// The pinned scene with this id.
    pub fn node(&self, id: &str) -> Option<&FixedNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// One scene in a playthrough.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[cfg_attr(feature = "bevy", derive(bevy::ecs::component::Component))]
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

/// A scene as the narrator produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    /// The scene text.
    pub scene: String,
    /// The choices, non-empty and pairwise distinct.
    pub choices: Vec<String>,
}

impl Scene {
    /// Parses the narrator's JSON, trimming text, and checks that there are `n` non-empty,
    /// pairwise distinct choices.
    pub fn parse(json: &str, n: usize) -> Result<Self, StoryError> {
        let mut scene: Scene =
            serde_json::from_str(json).map_err(|e| StoryError::Malformed(e.to_string()))?;
        scene.scene = scene.scene.trim().to_owned();
        for c in &mut scene.choices {
            *c = c.trim().to_owned();
        }
        if scene.choices.len() != n {
            return Err(StoryError::Malformed(format!(
                "{} choices instead of {n}",
                scene.choices.len()
            )));
        }
        if scene.choices.iter().any(String::is_empty) || scene.scene.is_empty() {
            return Err(StoryError::Malformed("an empty scene or choice".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if !scene.choices.iter().all(|c| seen.insert(c.to_lowercase())) {
            return Err(StoryError::Malformed("two choices are the same".into()));
        }
        Ok(scene)
    }
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

/// The JSON schema of a narrator reply with `choices` choices: a scene of a quarter of
/// `max_chars` (at least 20) to `max_chars` characters, so that the narrator writes a scene
/// rather than a title, and that many short choices, each starting with a capital letter.
pub fn scene_schema(choices: usize, max_chars: usize) -> serde_json::Value {
    let min_chars = (max_chars / 4).max(20);
    serde_json::json!({
        "type": "object",
        "properties": {
            "scene": { "type": "string", "minLength": min_chars, "maxLength": max_chars },
            "choices": {
                "type": "array",
                "minItems": choices,
                "maxItems": choices,
                "items": { "type": "string", "pattern": "^[A-Z][A-Za-z ,'.!?-]{2,59}$" },
            },
        },
        "required": ["scene", "choices"],
        "additionalProperties": false,
    })
}

/// An action an NPC may take, declared in its persona or in a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// The action's name, as game systems match it: `give_item`.
    pub name: String,
    /// When to take it, for the model.
    #[serde(default)]
    pub description: String,
    /// Arguments by name.
    #[serde(default)]
    pub args: BTreeMap<String, ArgSpec>,
}

/// What an action argument may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ArgSpec {
    /// One of these strings.
    OneOf(Vec<String>),
    /// An integer in the range.
    Integer {
        /// Smallest.
        min: i64,
        /// Largest.
        max: i64,
    },
    /// Free text of at most this many characters.
    Text(usize),
    /// True or false.
    Bool,
}

impl ArgSpec {
    fn schema(&self) -> serde_json::Value {
        match self {
            ArgSpec::OneOf(values) => serde_json::json!({ "enum": values }),
            ArgSpec::Integer { min, max } => {
                serde_json::json!({ "type": "integer", "minimum": min, "maximum": max })
            }
            ArgSpec::Text(max) => {
                serde_json::json!({ "type": "string", "minLength": 1, "maxLength": max })
            }
            ArgSpec::Bool => serde_json::json!({ "type": "boolean" }),
        }
    }

    /// Whether `value` is allowed.
    pub fn accepts(&self, value: &serde_json::Value) -> bool {
        match self {
            ArgSpec::OneOf(values) => value
                .as_str()
                .is_some_and(|v| values.iter().any(|x| x == v)),
            ArgSpec::Integer { min, max } => {
                value.as_i64().is_some_and(|v| (*min..=*max).contains(&v))
            }
            ArgSpec::Text(max) => value
                .as_str()
                .is_some_and(|v| !v.is_empty() && v.chars().count() <= *max),
            ArgSpec::Bool => value.is_boolean(),
        }
    }
}

/// The JSON schema of a decision among `actions`: `{"action": name, "args": {...}}`.
pub fn action_schema(actions: &[ActionSpec]) -> serde_json::Value {
    let options: Vec<serde_json::Value> = actions
        .iter()
        .map(|a| {
            let props: serde_json::Map<String, serde_json::Value> = a
                .args
                .iter()
                .map(|(k, v)| (k.clone(), v.schema()))
                .collect();
            let required: Vec<&String> = a.args.keys().collect();
            serde_json::json!({
                "type": "object",
                "properties": {
                    "action": { "const": a.name },
                    "args": {
                        "type": "object",
                        "properties": props,
                        "required": required,
                        "additionalProperties": false,
                    },
                },
                "required": ["action", "args"],
                "additionalProperties": false,
            })
        })
        .collect();
    serde_json::json!({ "anyOf": options })
}

/// A decision parsed from the model's JSON and checked against the declared actions.
pub fn parse_action(
    json: &str,
    actions: &[ActionSpec],
) -> Result<(String, serde_json::Map<String, serde_json::Value>), StoryError> {
    #[derive(Deserialize)]
    struct Decision {
        action: String,
        args: serde_json::Map<String, serde_json::Value>,
    }
    let d: Decision =
        serde_json::from_str(json).map_err(|e| StoryError::Malformed(e.to_string()))?;
    let spec = actions
        .iter()
        .find(|a| a.name == d.action)
        .ok_or_else(|| StoryError::Malformed(format!("undeclared action `{}`", d.action)))?;
    for (name, arg) in &spec.args {
        let ok = d.args.get(name).is_some_and(|v| arg.accepts(v));
        if !ok {
            return Err(StoryError::Malformed(format!(
                "argument `{name}` of `{}`",
                d.action
            )));
        }
    }
    if d.args.len() != spec.args.len() {
        return Err(StoryError::Malformed(format!(
            "extra arguments for `{}`",
            d.action
        )));
    }
    Ok((d.action, d.args))
}

/// Pulls the `"scene"` string out of a narrator reply as it streams, so scene text can be
/// shown token by token. Feed it the raw output; it returns newly decoded scene text.
#[derive(Debug, Default)]
pub struct SceneStream {
    raw: String,
    shown: usize,
}

impl SceneStream {
    /// Adds raw output; returns the scene text that became complete.
    pub fn push(&mut self, raw: &str) -> String {
        self.raw.push_str(raw);
        let Some(key) = self.raw.find("\"scene\"") else {
            return String::new();
        };
        // `"scene"`, optional whitespace, `:`, optional whitespace, `"`.
        let rest = self.raw[key + 7..].trim_start();
        let Some(rest) = rest.strip_prefix(':').map(str::trim_start) else {
            return String::new();
        };
        let Some(body) = rest.strip_prefix('"') else {
            return String::new();
        };
        let decoded = decode_json_string_prefix(body);
        let new = decoded.get(self.shown..).unwrap_or("").to_owned();
        self.shown = decoded.len().max(self.shown);
        new
    }
}

/// Decodes the JSON string body at the start of `s` up to its closing quote or to the last
/// complete escape.
fn decode_json_string_prefix(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                let Some(e) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => {}
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        if hex.len() < 4 {
                            break;
                        }
                        if let Some(ch) =
                            u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                        {
                            out.push(ch);
                        }
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_stream_decodes_escapes_and_waits_for_complete_ones() {
        let mut s = SceneStream::default();
        assert_eq!(s.push("{\"sce"), "");
        assert_eq!(s.push("ne\":\"You \\\"see"), "You \"see");
        assert_eq!(s.push("\\"), "");
        assert_eq!(s.push("n a door"), "\n a door");
        assert_eq!(s.push("\",\"choices\":[\"Open\"]}"), "");
        let mut spaced = SceneStream::default();
        assert_eq!(spaced.push("{ \"scene\" : "), "");
        assert_eq!(spaced.push("\"Dark.\", "), "Dark.");
    }

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

    #[test]
    fn scenes_with_repeated_or_missing_choices_are_malformed() {
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go","Stay"]}"#, 2).is_ok());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go","go "]}"#, 2).is_err());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go"]}"#, 2).is_err());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go",""]}"#, 2).is_err());
    }

    #[test]
    fn story_assets_are_validated() {
        let bad = r#"(title: "T", premise: "P", choices: 9)"#;
        let err = StoryAsset::from_ron(bad, "t.story.ron").unwrap_err();
        assert!(err.to_string().contains("choices"), "{err}");
        let bad_goto = r#"(title: "T", premise: "P", nodes: [(id: "a", text: "x", choices: [(text: "y", goto: Some("b"))])])"#;
        assert!(StoryAsset::from_ron(bad_goto, "t.story.ron").is_err());
    }

    #[test]
    fn actions_must_be_declared_with_valid_arguments() {
        let actions = vec![ActionSpec {
            name: "give_item".into(),
            description: String::new(),
            args: [("item".to_owned(), ArgSpec::OneOf(vec!["sword".into()]))].into(),
        }];
        assert!(
            parse_action(
                r#"{"action":"give_item","args":{"item":"sword"}}"#,
                &actions
            )
            .is_ok()
        );
        assert!(parse_action(r#"{"action":"give_item","args":{"item":"axe"}}"#, &actions).is_err());
        assert!(parse_action(r#"{"action":"attack","args":{}}"#, &actions).is_err());
    }
}
