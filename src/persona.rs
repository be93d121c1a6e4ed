//! Personas: who an NPC is, how they speak, what they know and want. Plain data, written by
//! designers in `assets/personas/*.persona.ron` and loaded as a Bevy asset by the plugin.

use serde::{Deserialize, Serialize};

use crate::engine::SamplingParams;

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
/// # Ok::<(), bevy_llm_dialogue::persona::PersonaError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// The character's name, as others call them.
    pub name: String,
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
    /// Strings that end a line early.
    #[serde(default)]
    pub stop: Vec<String>,
    /// What the NPC may do ([`RequestAction`](crate::plugin::RequestAction) picks one).
    #[serde(default)]
    pub actions: Vec<crate::story::ActionSpec>,
}

/// A persona file that cannot be used. Messages name the file, the line and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PersonaError {
    /// Not valid RON, a missing field, a field of the wrong type, an unknown field.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The persona file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// Parsed, but a value is out of range.
    #[error("{file}:{line}: `{field}` {reason}")]
    Invalid {
        /// The persona file.
        file: String,
        /// 1-based line of the field (0 if not found).
        line: usize,
        /// The field, such as `sampling.temperature`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Persona {
    /// Parses and validates a persona written in RON. `file` names it in errors.
    pub fn from_ron(text: &str, file: &str) -> Result<Self, PersonaError> {
        let persona: Persona = ron::Options::default()
            .from_str(text)
            .map_err(|e| located(file, &e))?;
        persona.validate().map_err(|(field, reason)| {
            let leaf = field.rsplit('.').next().unwrap_or(&field);
            PersonaError::Invalid {
                file: file.to_owned(),
                line: line_of_field(text, leaf),
                field,
                reason,
            }
        })?;
        Ok(persona)
    }

    /// Checks values a parser cannot: empty names, absurd sampling or lengths.
    /// Returns the offending field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.name.trim().is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        }
        if let Some(max) = self.max_tokens
            && !(1..=MAX_LINE_TOKENS).contains(&max)
        {
            return Err((
                "max_tokens".into(),
                format!("is {max}, outside 1..={MAX_LINE_TOKENS}"),
            ));
        }
        if let Some(sampling) = &self.sampling {
            sampling.validate().map_err(|e| match e {
                crate::engine::EngineError::InvalidParameter { name, reason } => {
                    (format!("sampling.{name}"), reason)
                }
                other => ("sampling".into(), other.to_string()),
            })?;
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(("stop".into(), "contains an empty string".into()));
        }
        for action in &self.actions {
            if action.name.is_empty()
                || !action
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err((
                    "actions".into(),
                    format!("`{}` is not a name (letters, digits, _)", action.name),
                ));
            }
        }
        Ok(())
    }
}

/// A RON error with the file, line and column.
pub(crate) fn located(file: &str, e: &ron::error::SpannedError) -> PersonaError {
    PersonaError::Syntax {
        file: file.to_owned(),
        line: e.span.start.line,
        column: e.span.start.col,
        message: e.code.to_string(),
    }
}

/// The 1-based line where `field:` first appears, or 0.
pub(crate) fn line_of_field(text: &str, field: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map_or(0, |i| i + 1)
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
    fn syntax_errors_name_file_and_line() {
        let err = Persona::from_ron("(\n name: \"Mira\",\n description: 3,\n)", "m.persona.ron")
            .unwrap_err();
        match &err {
            PersonaError::Syntax { file, line, .. } => {
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
            PersonaError::Invalid {
                file: "m.persona.ron".into(),
                line: 5,
                field: "sampling.temperature".into(),
                reason: "-3 is outside 0..=5".into(),
            }
        );
        let text = GOOD.replace("sampling", "max_tokens: Some(1000000000),\n    sampling");
        let err = Persona::from_ron(&text, "m.persona.ron").unwrap_err();
        assert!(
            matches!(&err, PersonaError::Invalid { field, line: 4, .. } if field == "max_tokens"),
            "{err:?}"
        );
    }
}
