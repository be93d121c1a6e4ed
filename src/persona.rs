//! Personas: who an NPC is, how they speak, what they know and want. Plain data, written by
//! designers in `assets/personas/*.persona.ron` and loaded as a Bevy asset by the plugin.

use serde::{Deserialize, Serialize};

use crate::action::ActionSpec;
use crate::engine::SamplingParams;
use crate::ron_file::{Invalid, RonFileError, Validate, from_ron};

/// The most tokens a persona may ask for in one line.
pub const MAX_LINE_TOKENS: usize = 2048;

/// A character the model plays.
///
/// ```
/// # use bevy_llm_dialogue::persona::Persona;
/// let mira = Persona::from_ron(r#"(
///     name: "Mira",
///     description: "the blacksmith of Elmsbrook",
///     personality: ["gruff", "kind"],
///     speaking_style: "Short sentences. Calls everyone 'friend'.",
///     greeting: Some("Need something forged, friend?"),
///     sampling: Some((temperature: 0.8)),
/// )"#, "mira.persona.ron")?;
/// assert_eq!(mira.name, "Mira");
/// assert_eq!(mira.sampling.unwrap().temperature, 0.8);
/// # Ok::<(), bevy_llm_dialogue::ron_file::RonFileError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// The character's name, as others call them.
    pub name: String,
    /// Other names the character may give itself: titles, nicknames ("Sister Ilse", "the
    /// Lamplighter"). With its `name`, the only names the identity guard lets it introduce
    /// itself by (a character card's name becomes one when the card has a nickname).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Whether lines are kept in character while they are written: a self-introduction
    /// under a name that is not the character's, or a speaker label ("Name:") where a turn
    /// could start, is taken back and written again, as a banned word is
    /// ([`IdentityCheck`](crate::content::IdentityCheck)). On unless the persona turns it off.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub identity_guard: bool,
    /// Who they are, in a phrase: "the blacksmith of Elmsbrook".
    pub description: String,
    /// Personality traits: "gruff", "secretly kind".
    #[serde(default)]
    pub personality: Vec<String>,
    /// How they talk: accent, vocabulary, sentence length.
    #[serde(default)]
    pub speaking_style: String,
    /// Lines in their voice, to show the model how they sound.
    #[serde(default)]
    pub example_lines: Vec<String>,
    /// Example exchanges: what someone said and how the character answered, shown to the
    /// model as earlier turns before the `example_lines` (a character card's `mes_example`
    /// becomes these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub example_exchanges: Vec<ExampleExchange>,
    /// What they know about the world.
    #[serde(default)]
    pub knowledge: Vec<String>,
    /// What they want.
    #[serde(default)]
    pub goals: Vec<String>,
    /// What they say when the player first approaches, if anything fixed.
    #[serde(default)]
    pub greeting: Option<String>,
    /// Sampling for this character; unset fields take the defaults.
    #[serde(default)]
    pub sampling: Option<SamplingParams>,
    /// The longest line, in tokens.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The most sentences in a line (the plugin's default is 3).
    #[serde(default)]
    pub max_sentences: Option<usize>,
    /// Strings that end a line early.
    #[serde(default)]
    pub stop: Vec<String>,
    /// What the NPC may do (the plugin's `RequestAction` picks one).
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// The character's own lore: entries fire on words in the recent turns or on game facts
    /// and go next to the newest turn (a character card's `character_book` becomes this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lore: Option<crate::lore::Lorebook>,
    /// The moods and the range of regard for the player this NPC has, if it keeps a
    /// disposition (the plugin's `NpcDisposition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<DispositionSpec>,
    /// What this character must never say, on top of the game's
    /// [`ContentPolicy`](crate::content::ContentPolicy): more banned words, its own profanity
    /// level and fallback line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<crate::content::ContentOverride>,
    /// Other greetings the game may pick from (a character card's `alternate_greetings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternate_greetings: Vec<String>,
    /// What a character card held beyond what the persona uses (its system prompt,
    /// post-history instructions, lorebook, extensions, unknown fields): the card's `data`
    /// object as JSON, less the fields the persona holds, kept as written so that
    /// `card::CharacterCard::from_persona` gives them back (`card::CardData::kept_in` reads
    /// it as card fields). The persona does not read it. `None` for personas written as RON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Persona {
    /// Every name the character may use: its `name` and `aliases`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// The identity guard of its lines ([`identity_guard`](Self::identity_guard)), if on.
    pub fn identity_check(&self) -> Option<crate::content::IdentityCheck> {
        self.identity_guard
            .then(|| crate::content::IdentityCheck::new(self.names()))
    }
}

/// One example exchange: a line said to the character and its reply, in the persona file as
/// `(said: "What are you brewing?", reply: "Nothing you could pay for.")`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleExchange {
    /// What was said to the character (the user turn).
    pub said: String,
    /// The character's answer (the assistant turn).
    pub reply: String,
}

/// An NPC's mood and its regard for the player, declared by the designer: the moods it may
/// be in, the range of its affinity, and how far one update may move it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionSpec {
    /// The moods, as the game and the prompt name them: `["calm", "wary", "angry"]`.
    pub moods: Vec<String>,
    /// The mood it starts in (default: the first).
    #[serde(default)]
    pub start_mood: Option<String>,
    /// The lowest and highest affinity (default `(-10, 10)`).
    #[serde(default = "default_affinity")]
    pub affinity: (i32, i32),
    /// The affinity it starts at (default 0, or the nearest end of the range).
    #[serde(default)]
    pub start_affinity: i32,
    /// The most one update may move the affinity either way (default 2).
    #[serde(default = "default_step")]
    pub max_step: i32,
}

fn default_affinity() -> (i32, i32) {
    (-10, 10)
}

fn default_step() -> i32 {
    2
}

impl DispositionSpec {
    /// The starting mood and affinity.
    pub fn start(&self) -> (String, i32) {
        let mood = self
            .start_mood
            .clone()
            .or_else(|| self.moods.first().cloned())
            .unwrap_or_default();
        (mood, self.clamp(self.start_affinity))
    }

    /// `affinity` kept inside the declared range.
    pub fn clamp(&self, affinity: i32) -> i32 {
        affinity.clamp(self.affinity.0, self.affinity.1.max(self.affinity.0))
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.moods.is_empty() || self.moods.iter().any(|m| m.trim().is_empty()) {
            return Err(Invalid::new(
                "disposition.moods",
                "must name at least one mood, none empty",
            ));
        }
        if let Some(start) = &self.start_mood
            && !self.moods.contains(start)
        {
            return Err(Invalid::new(
                "disposition.start_mood",
                format!("`{start}` is not one of the moods"),
            ));
        }
        let (low, high) = self.affinity;
        if low >= high || low < -1000 || high > 1000 {
            return Err(Invalid::new(
                "disposition.affinity",
                format!("({low}, {high}) must be a range inside -1000..=1000"),
            ));
        }
        if !(1..=100).contains(&self.max_step) {
            return Err(Invalid::new(
                "disposition.max_step",
                format!("is {}, outside 1..=100", self.max_step),
            ));
        }
        Ok(())
    }
}

/// The old name of [`RonFileError`], which stories share.
#[deprecated(
    since = "0.2.0",
    note = "renamed to `RonFileError` (stories use it too)"
)]
pub type PersonaError = RonFileError;

impl Persona {
    /// Parses and validates a persona written in RON. `file` names it in errors.
    pub fn from_ron(text: &str, file: &str) -> Result<Self, RonFileError> {
        from_ron(text, file)
    }
}

impl Validate for Persona {
    /// Checks values a parser cannot: empty names, absurd sampling or lengths, action names.
    fn validate(&self) -> Result<(), Invalid> {
        if self.name.trim().is_empty() {
            return Err(Invalid::new("name", "must not be empty"));
        }
        if let Some(max) = self.max_tokens
            && !(1..=MAX_LINE_TOKENS).contains(&max)
        {
            return Err(Invalid::new(
                "max_tokens",
                format!("is {max}, outside 1..={MAX_LINE_TOKENS}"),
            ));
        }
        if let Some(sampling) = &self.sampling {
            sampling.validate().map_err(|e| match e {
                crate::engine::EngineError::InvalidParameter { name, reason } => {
                    Invalid::new(format!("sampling.{name}"), reason)
                }
                other => Invalid::new("sampling", other.to_string()),
            })?;
        }
        if self.max_sentences == Some(0) {
            return Err(Invalid::new(
                "max_sentences",
                "is 0; leave it out for the default",
            ));
        }
        for (i, e) in self.example_exchanges.iter().enumerate() {
            if e.said.trim().is_empty() || e.reply.trim().is_empty() {
                return Err(Invalid::new(
                    "example_exchanges",
                    format!("entry {i} (from 0) needs both `said` and `reply`"),
                ));
            }
        }
        if self.card.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(Invalid::new(
                "card",
                "must be a map of a character card's fields",
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Invalid::new("stop", "contains an empty string"));
        }
        for action in &self.actions {
            action
                .validate()
                .map_err(|e| Invalid::new("actions", e.to_string()))?;
        }
        if let Some(d) = &self.disposition {
            d.validate()?;
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

    const GOOD: &str = r#"(
    name: "Mira",
    description: "the blacksmith",
    sampling: Some((
        temperature: 0.8,
    )),
)"#;

    #[test]
    fn minimal_persona_parses() {
        let p = Persona::from_ron(GOOD, "mira.persona.ron").unwrap();
        assert_eq!(p.description, "the blacksmith");
        assert!(p.knowledge.is_empty());
    }

    #[test]
    fn the_readme_persona_parses() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("\n## Personas").unwrap()..];
        let start = section.find("```ron\n").unwrap() + "```ron\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let mira = Persona::from_ron(block, "README.md").unwrap();
        assert_eq!(
            mira.example_exchanges,
            [ExampleExchange {
                said: "Can you fix my sword?".into(),
                reply: "Leave it on the anvil, friend.".into(),
            }]
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = Persona::from_ron("(\n name: \"Mira\",\n description: 3,\n)", "m.persona.ron")
            .unwrap_err();
        match &err {
            RonFileError::Syntax { file, line, .. } => {
                assert_eq!(file, "m.persona.ron");
                assert_eq!(*line, 3);
            }
            other => panic!("{other:?}"),
        }
        let err = Persona::from_ron("(name: \"Mira\")", "m.persona.ron").unwrap_err();
        assert!(err.to_string().contains("description"), "{err}");
        let err = Persona::from_ron(
            "(name: \"M\", description: \"d\", mood: 1)",
            "m.persona.ron",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mood"), "{err}");
    }

    #[test]
    fn absurd_values_name_the_field_and_line() {
        let text = GOOD.replace("0.8", "-3.0");
        let err = Persona::from_ron(&text, "m.persona.ron").unwrap_err();
        assert_eq!(
            err,
            RonFileError::Invalid {
                file: "m.persona.ron".into(),
                line: 5,
                field: "sampling.temperature".into(),
                reason: "-3 is outside 0..=5".into(),
            }
        );
        let text = GOOD.replace("sampling", "max_tokens: Some(1000000000),\n    sampling");
        let err = Persona::from_ron(&text, "m.persona.ron").unwrap_err();
        assert!(
            matches!(&err, RonFileError::Invalid { field, line: 4, .. } if field == "max_tokens"),
            "{err:?}"
        );
    }
}
