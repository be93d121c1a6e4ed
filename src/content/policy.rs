//! The rules as a game, a persona or a story writes them: [`ContentPolicy`], its additions
//! ([`ContentOverride`]), the profanity level and what happens to a player's line.

use serde::{Deserialize, Serialize};

use super::filter::{ContentFilter, Phrase};
use super::words::words;
use crate::engine::Guard;

/// Out-of-character phrases every policy catches unless a game clears
/// [`ContentPolicy::out_of_character`]: a model talking about itself, and chat markup.
pub const DEFAULT_OUT_OF_CHARACTER: &[&str] = &[
    "as an ai",
    "an ai model",
    "language model",
    "ai assistant",
    "as an assistant",
    "i am an ai",
    "i'm an ai",
    "i am a chatbot",
    "openai",
    "chatgpt",
    "<|",
    "|>",
    "[inst]",
    "[/inst]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<s>",
    "</s>",
    "<think>",
];

/// How strict the profanity filter is (the [`rustrict`] crate's severities, for profane,
/// offensive and sexual words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Profanity {
    /// No profanity filter.
    Off,
    /// Only the worst words.
    Severe,
    /// Moderate and severe words: a teen rating. The default: NPCs do not swear unless the
    /// game says they may.
    #[default]
    Moderate,
    /// Anything mildly rude too ("damn", "crap"): a children's game.
    Mild,
}

impl Profanity {
    fn threshold(self) -> Option<rustrict::Type> {
        let kinds = rustrict::Type::PROFANE | rustrict::Type::OFFENSIVE | rustrict::Type::SEXUAL;
        match self {
            Profanity::Off => None,
            Profanity::Severe => Some(kinds & rustrict::Type::SEVERE),
            Profanity::Moderate => Some(kinds & rustrict::Type::MODERATE_OR_HIGHER),
            Profanity::Mild => Some(kinds & rustrict::Type::MILD_OR_HIGHER),
        }
    }
}

/// What happens to a player's line that breaks the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlayerLineCheck {
    /// The model sees it as typed (what the NPC answers is still checked).
    #[default]
    Allow,
    /// Flagged words become asterisks before the model (and the history) see the line.
    Censor,
    /// The line is refused with this message for the game to show; nothing is generated.
    Reject(String),
}

/// What characters must never say, for a whole game (a resource of the plugin), with
/// additions per persona and per story ([`ContentOverride`]).
///
/// In RON (`content: Some((...))` in a persona or story adds to the game's policy):
///
/// ```ron
/// (
///     banned: ["dragon", "the old king"],
///     profanity: Mild,
///     max_rollbacks: 16,
///     fallback_line: "Let us speak of something else.",
///     player_input: Reject("Let's keep it civil."),
/// )
/// ```
///
/// Words match whole words in any case and their common inflections (`dragon` also catches
/// `Dragons`, `bake` catches `baking`; a phrase's words must follow one another). An entry
/// with characters other than letters, digits, spaces, apostrophes and hyphens (chat markup
/// like `<|`) matches anywhere, as written, in any case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::prelude::Resource))]
#[serde(default, deny_unknown_fields)]
pub struct ContentPolicy {
    /// Words and phrases no character may say.
    pub banned: Vec<String>,
    /// The profanity filter's strictness.
    pub profanity: Profanity,
    /// Phrases that break character (a model talking about itself, chat markup); by default
    /// [`DEFAULT_OUT_OF_CHARACTER`].
    pub out_of_character: Vec<String>,
    /// How many times one line may take text back and write it again before it ends early
    /// (at its last sentence end, with the fallback line if nothing was said). 0 ends a line
    /// at its first hit.
    pub max_rollbacks: usize,
    /// What a character says when its line could not be written within the rules (a
    /// persona's own [`ContentOverride::fallback_line`] comes first).
    pub fallback_line: String,
    /// What happens to a player's line that breaks the rules.
    pub player_input: PlayerLineCheck,
}

impl Default for ContentPolicy {
    fn default() -> Self {
        Self {
            banned: Vec::new(),
            profanity: Profanity::Moderate,
            out_of_character: DEFAULT_OUT_OF_CHARACTER
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            max_rollbacks: 16,
            fallback_line: "Let us speak of something else.".into(),
            player_input: PlayerLineCheck::Allow,
        }
    }
}

/// A persona's or a story's additions to the game's [`ContentPolicy`].
///
/// ```ron
/// content: Some((banned: ["the heir"], fallback_line: Some("Hm. Ask me another time."))),
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentOverride {
    /// More words and phrases this character (or story) may not say.
    pub banned: Vec<String>,
    /// More out-of-character phrases.
    pub out_of_character: Vec<String>,
    /// Replaces the game's profanity level (stricter or looser).
    pub profanity: Option<Profanity>,
    /// Replaces the game's rollback budget.
    pub max_rollbacks: Option<usize>,
    /// This character's own fallback line.
    pub fallback_line: Option<String>,
}

/// The most words and phrases in one list of a content override (a persona's, a story's):
/// every rule is checked against every line.
pub const MAX_CONTENT_RULES: usize = 1024;

/// The longest word or phrase of a content rule, in bytes.
pub const MAX_CONTENT_RULE_BYTES: usize = 256;

impl crate::ron_file::Validate for ContentOverride {
    /// Checks what a mod's file may ask for: list sizes, rule lengths, the rollback budget
    /// ([`MAX_ROLLBACKS`](crate::engine::MAX_ROLLBACKS)).
    fn validate(&self) -> Result<(), crate::ron_file::Invalid> {
        use crate::ron_file::Invalid;
        for (field, list) in [
            ("content.banned", &self.banned),
            ("content.out_of_character", &self.out_of_character),
        ] {
            if list.len() > MAX_CONTENT_RULES {
                return Err(Invalid::new(
                    field,
                    format!("has {} entries; at most {MAX_CONTENT_RULES}", list.len()),
                ));
            }
            if let Some(long) = list.iter().find(|r| r.len() > MAX_CONTENT_RULE_BYTES) {
                return Err(Invalid::new(
                    field,
                    format!(
                        "has an entry of {} bytes; at most {MAX_CONTENT_RULE_BYTES}",
                        long.len()
                    ),
                ));
            }
        }
        if let Some(n) = self.max_rollbacks
            && n > crate::engine::MAX_ROLLBACKS
        {
            return Err(Invalid::new(
                "content.max_rollbacks",
                format!("is {n}; at most {}", crate::engine::MAX_ROLLBACKS),
            ));
        }
        Ok(())
    }
}

impl ContentPolicy {
    /// A policy that checks nothing.
    pub fn off() -> Self {
        Self {
            out_of_character: Vec::new(),
            profanity: Profanity::Off,
            ..Self::default()
        }
    }

    /// This policy with `over`'s additions.
    pub fn with_override(&self, over: Option<&ContentOverride>) -> ContentPolicy {
        let mut policy = self.clone();
        if let Some(over) = over {
            policy.banned.extend(over.banned.iter().cloned());
            policy
                .out_of_character
                .extend(over.out_of_character.iter().cloned());
            if let Some(p) = over.profanity {
                policy.profanity = p;
            }
            if let Some(n) = over.max_rollbacks {
                policy.max_rollbacks = n;
            }
            if let Some(line) = &over.fallback_line {
                policy.fallback_line.clone_from(line);
            }
        }
        policy
    }

    /// The rules, ready to check text.
    pub fn filter(&self) -> ContentFilter {
        let mut filter = ContentFilter {
            phrases: Vec::new(),
            literals: Vec::new(),
            profanity: self.profanity.threshold(),
        };
        let rules = self.banned.iter().map(|s| (s, "banned")).chain(
            self.out_of_character
                .iter()
                .map(|s| (s, "out of character")),
        );
        for (entry, kind) in rules {
            let entry = entry.trim();
            let rule = format!("{kind}: {entry}");
            let literal = entry
                .chars()
                .any(|c| !(c.is_alphanumeric() || c.is_whitespace() || c == '\'' || c == '-'));
            if literal {
                filter.literals.push((entry.to_ascii_lowercase(), rule));
            } else {
                let words: Vec<String> = words(entry).into_iter().map(|(_, w)| w).collect();
                if !words.is_empty() {
                    filter.phrases.push(Phrase { words, rule });
                }
            }
        }
        filter
    }

    /// The guard the generator enforces, `None` if the policy checks nothing.
    pub fn guard(&self) -> Option<Guard> {
        self.guard_with(self.filter())
    }

    /// The guard enforcing `filter` (this policy's [`filter`](Self::filter), built once by a
    /// caller that also needs it) with this policy's rollback budget.
    pub(crate) fn guard_with(&self, filter: ContentFilter) -> Option<Guard> {
        (!filter.is_empty()).then(|| Guard::new(filter, self.max_rollbacks))
    }

    /// The guard for a character's lines: this policy's [`filter`](Self::filter) (built once
    /// by a caller that also needs it) and, if any, the character's
    /// [`IdentityCheck`](super::IdentityCheck), sharing this policy's rollback budget.
    #[cfg(feature = "bevy")]
    pub(crate) fn guard_for_character(
        &self,
        filter: ContentFilter,
        identity: Option<super::IdentityCheck>,
    ) -> Option<Guard> {
        match (filter.is_empty(), identity) {
            (_, None) => self.guard_with(filter),
            (true, Some(identity)) => Some(Guard::new(identity, self.max_rollbacks)),
            (false, Some(identity)) => Some(Guard::new((filter, identity), self.max_rollbacks)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mods_content_rules_are_bounded() {
        use crate::persona::Persona;
        let persona = |content: &str| {
            Persona::from_ron(
                &format!(r#"(name: "M", description: "d", content: Some({content}))"#),
                "m.persona.ron",
            )
        };
        assert!(persona("(max_rollbacks: Some(16))").is_ok());
        let e = persona("(max_rollbacks: Some(18446744073709551615))")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`content.max_rollbacks` is 18446744073709551615; at most 16"),
            "{e}"
        );
        let many = format!(
            "(banned: [{}])",
            vec!["\"w\""; MAX_CONTENT_RULES + 1].join(",")
        );
        let e = persona(&many).unwrap_err().to_string();
        assert!(e.contains("`content.banned` has 1025 entries"), "{e}");
        let long = format!("(out_of_character: [\"{}\"])", "w".repeat(300));
        assert!(persona(&long).is_err());
        // A policy built in code is clamped.
        let guard = ContentPolicy {
            max_rollbacks: 1000,
            ..ContentPolicy::default()
        }
        .guard()
        .unwrap();
        assert_eq!(guard.max_rollbacks(), crate::engine::MAX_ROLLBACKS);
    }

    #[test]
    fn overrides_add_words_and_replace_settings() {
        let game = ContentPolicy {
            banned: vec!["dragon".into()],
            ..ContentPolicy::default()
        };
        let over = ContentOverride {
            banned: vec!["heir".into()],
            profanity: Some(Profanity::Mild),
            fallback_line: Some("Hm.".into()),
            ..ContentOverride::default()
        };
        let p = game.with_override(Some(&over));
        assert_eq!(p.banned, ["dragon", "heir"]);
        assert_eq!(p.profanity, Profanity::Mild);
        assert_eq!(p.fallback_line, "Hm.");
        assert_eq!(game.with_override(None), game);
        assert!(ContentPolicy::off().guard().is_none());
    }
}
