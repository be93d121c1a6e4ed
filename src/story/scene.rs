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
        let json = serde_json::json!({ "scene": scene, "choices": choices });
        Self::parse(&json.to_string(), n)
    }

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
    fn scenes_with_repeated_or_missing_choices_are_malformed() {
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go","Stay"]}"#, 2).is_ok());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go","go "]}"#, 2).is_err());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go"]}"#, 2).is_err());
        assert!(Scene::parse(r#"{"scene":"A hall.","choices":["Go",""]}"#, 2).is_err());
    }
}
