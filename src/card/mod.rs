//! Character Cards: the character format of LLM chat front ends (SillyTavern, RisuAI, chub),
//! V2 (`chara_card_v2`) and V3 (`chara_card_v3`), as JSON or inside a PNG (a base64 `tEXt`
//! chunk: `chara` for V2, `ccv3` for V3), turned into a [`Persona`].
//!
//! ```
//! use bevy_llm_dialogue::card::CharacterCard;
//! let card = CharacterCard::from_json(r#"{
//!   "spec": "chara_card_v2", "spec_version": "2.0",
//!   "data": {
//!     "name": "Mira",
//!     "description": "The blacksmith of Elmsbrook. {{char}} has forged for thirty years.",
//!     "personality": "gruff, secretly kind",
//!     "scenario": "{{user}} walks into the forge at dusk.",
//!     "first_mes": "Need something forged, {{user}}?",
//!     "mes_example": "<START>\n{{user}}: Hi.\n{{char}}: Steel doesn't lie, friend.\n<START>\n{{char}}: Mind the sparks.",
//!     "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
//!     "alternate_greetings": [], "tags": [], "creator": "", "character_version": "1",
//!     "extensions": {}
//!   }
//! }"#, "mira.card.json")?;
//! let mira = card.to_persona();
//! assert_eq!(mira.description, "the blacksmith of Elmsbrook");
//! assert_eq!(mira.personality, ["gruff", "secretly kind"]);
//! assert_eq!(mira.example_exchanges[0].said, "Hi.");
//! assert_eq!(mira.example_exchanges[0].reply, "Steel doesn't lie, friend.");
//! assert_eq!(mira.example_lines, ["Mind the sparks."]);
//! assert_eq!(mira.greeting.as_deref(), Some("Need something forged, {{user}}?"));
//! # Ok::<(), bevy_llm_dialogue::card::CardError>(())
//! ```
//!
//! `{{char}}` (and `<BOT>`) become the character's name on import, in the card's lorebook
//! too. `{{user}}` (and `<USER>`) stay in the persona (its knowledge, greetings, examples) and
//! become the player's name when a prompt is built, for the NPC's lines and its decisions
//! alike (the `player_name` fact of the world, "the traveler" when it is not set;
//! [`resolve_user`]). A greeting the game shows itself goes through [`resolve_user`].

mod in_png;
mod text;

pub use text::resolve_user;
use text::{as_phrase, examples, macro_count, resolve_char, split_sentences};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::persona::Persona;
use crate::ron_file::Validate;

/// The most bytes of a card, JSON or PNG (a card's portrait included).
pub const MAX_CARD_BYTES: usize = 16 << 20;

/// The longest name (and nickname) of a card, in bytes.
pub const MAX_CARD_NAME_BYTES: usize = 256;

/// The most bytes a card's text may grow to once `{{char}}` and `<BOT>` are the name: a
/// short card that repeats the macro a million times is refused before it is expanded.
pub const MAX_EXPANDED_CARD_BYTES: usize = 2 * MAX_CARD_BYTES;

/// The key of this crate's extension in a card's `extensions`: the persona fields cards have
/// no place for (speaking style, goals, sampling, lengths, stop strings, actions,
/// disposition, lore, content rules), so that a persona written out as a card comes back the same.
pub const EXTENSION: &str = "bevy_llm_dialogue";

/// The persona fields a card keeps in its [`EXTENSION`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PersonaExtras {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_guard: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    speaking_style: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    goals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling: Option<crate::engine::SamplingParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sentences: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    actions: Vec<crate::action::ActionSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disposition: Option<crate::persona::DispositionSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lore: Option<crate::lore::Lorebook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<crate::content::ContentOverride>,
}

/// Why a card could not be read. Every message names the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CardError {
    /// Not JSON, or a field of the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Json {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// JSON, but not a V2 or V3 character card, or a field the persona cannot take.
    #[error("{file}: `{field}` {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// The field, such as `spec` or `data.name`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A PNG that cannot be read, or holds no card.
    #[error("{file}: {reason}")]
    Png {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// The card format versions this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardSpec {
    /// `chara_card_v2`.
    #[serde(rename = "chara_card_v2")]
    V2,
    /// `chara_card_v3`.
    #[serde(rename = "chara_card_v3")]
    V3,
}

/// A character card as written: every field of V2 and V3, unknown ones kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CharacterCard {
    /// The format.
    pub spec: CardSpec,
    /// `2.0` or `3.0`.
    #[serde(default)]
    pub spec_version: String,
    /// The character.
    pub data: CardData,
}

/// The `data` object of a card.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CardData {
    /// The character's name.
    pub name: String,
    /// Who they are (front ends put it in the system prompt).
    pub description: String,
    /// Their personality, often a list of traits.
    pub personality: String,
    /// The situation the chat starts in.
    pub scenario: String,
    /// The greeting.
    pub first_mes: String,
    /// Example conversations: `<START>` blocks of `{{user}}:` and `{{char}}:` lines.
    pub mes_example: String,
    /// Notes for people, not the model.
    pub creator_notes: String,
    /// A system prompt that replaces the front end's own (kept in [`Persona::card`]).
    pub system_prompt: String,
    /// Instructions after the history (kept in [`Persona::card`]).
    pub post_history_instructions: String,
    /// Other greetings.
    pub alternate_greetings: Vec<String>,
    /// The character's lorebook, kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub character_book: Option<Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Who made it.
    pub creator: String,
    /// Its version.
    pub character_version: String,
    /// Front ends' own data, kept as written.
    pub extensions: Map<String, Value>,
    /// V3: the name others call them, if not `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Fields this crate does not know (V3's `assets`, `group_only_greetings`, ...), kept.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl CardData {
    /// What a card kept in [`Persona::card`] on import, as card fields: `None` for a persona
    /// that came from no card (or whose `card` does not read as a card's `data`).
    pub fn kept_in(persona: &Persona) -> Option<CardData> {
        persona
            .card
            .as_ref()
            .and_then(|kept| serde_json::from_value(kept.clone()).ok())
    }

    /// This crate's fields in the card's [`EXTENSION`], none if it has none.
    fn extras(&self) -> Result<PersonaExtras, serde_json::Error> {
        self.extensions
            .get(EXTENSION)
            .map_or(Ok(PersonaExtras::default()), |e| {
                serde_json::from_value(e.clone())
            })
    }
}

impl CharacterCard {
    /// Reads a card from JSON. `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, CardError> {
        if text.len() > MAX_CARD_BYTES {
            return Err(invalid(file, "", format!("is over {MAX_CARD_BYTES} bytes")));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| json_error(file, &e))?;
        match value.get("spec").and_then(Value::as_str) {
            Some("chara_card_v2" | "chara_card_v3") => {}
            Some(other) => {
                return Err(invalid(
                    file,
                    "spec",
                    format!("is `{other}`; this reads chara_card_v2 and chara_card_v3"),
                ));
            }
            None => {
                return Err(invalid(
                    file,
                    "spec",
                    "is missing: not a V2 or V3 character card (a V1 card has no `spec`)",
                ));
            }
        }
        let macros = macro_count(&value);
        let card: CharacterCard =
            serde_json::from_value(value).map_err(|e| invalid(file, "data", e.to_string()))?;
        let d = &card.data;
        if d.name.trim().is_empty() {
            return Err(invalid(file, "data.name", "must not be empty"));
        }
        for (field, name) in [
            ("data.name", Some(&d.name)),
            ("data.nickname", d.nickname.as_ref()),
        ] {
            if let Some(name) = name
                && name.len() > MAX_CARD_NAME_BYTES
            {
                return Err(invalid(
                    file,
                    field,
                    format!("is {} bytes; at most {MAX_CARD_NAME_BYTES}", name.len()),
                ));
            }
        }
        let name_len = d.name.len().max(d.nickname.as_ref().map_or(0, String::len));
        let expanded = macros.saturating_mul(name_len).saturating_add(text.len());
        if expanded > MAX_EXPANDED_CARD_BYTES {
            return Err(invalid(
                file,
                "data",
                format!(
                    "`{{{{char}}}}`/`<BOT>` appear {macros} times: with the name in their place \
                     the card would be {expanded} bytes; at most {MAX_EXPANDED_CARD_BYTES}"
                ),
            ));
        }
        Ok(card)
    }

    /// Reads the card inside a PNG: its `ccv3` text chunk if it has one, else `chara`
    /// (base64 of the card's JSON). `file` names it in errors.
    pub fn from_png(bytes: &[u8], file: &str) -> Result<Self, CardError> {
        let json = in_png::card_json(bytes, file)?;
        Self::from_json(&json, file)
    }

    /// The card as JSON (what a `*.card.json` file holds).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A V2 card of `persona`, for front ends: description, personality, knowledge as the
    /// scenario, example lines, greetings; the fields cards have no place for in the
    /// [`EXTENSION`]; what a card kept on import ([`Persona::card`]) comes back. Read back with
    /// [`to_persona`](Self::to_persona), a persona whose knowledge facts are one sentence each
    /// and whose traits have no commas comes back equal (its `card` aside).
    pub fn from_persona(persona: &Persona) -> Self {
        let mut kept = CardData::kept_in(persona).unwrap_or_default();
        let description = format!("{{{{char}}}} is {}.", persona.description);
        let extras = PersonaExtras {
            aliases: persona.aliases.clone(),
            identity_guard: (!persona.identity_guard).then_some(false),
            speaking_style: persona.speaking_style.clone(),
            goals: persona.goals.clone(),
            sampling: persona.sampling.clone(),
            max_tokens: persona.max_tokens,
            max_sentences: persona.max_sentences,
            stop: persona.stop.clone(),
            actions: persona.actions.clone(),
            disposition: persona.disposition.clone(),
            content: persona.content.clone(),
            // Lore that came from the card's own book goes back as that book.
            lore: persona
                .lore
                .clone()
                .filter(|_| kept.character_book.is_none()),
        };
        if extras != PersonaExtras::default()
            && let Ok(value) = serde_json::to_value(&extras)
        {
            kept.extensions.insert(EXTENSION.into(), value);
        }
        let exchanges = persona.example_exchanges.iter().map(|e| {
            let said: Vec<String> = e
                .said
                .lines()
                .map(|l| format!("{{{{user}}}}: {l}"))
                .collect();
            format!("<START>\n{}\n{{{{char}}}}: {}", said.join("\n"), e.reply)
        });
        let lines = persona
            .example_lines
            .iter()
            .map(|line| format!("<START>\n{{{{char}}}}: {line}"));
        let mes_example = exchanges.chain(lines).collect::<Vec<_>>().join("\n");
        CharacterCard {
            spec: CardSpec::V2,
            spec_version: "2.0".into(),
            data: CardData {
                name: persona.name.clone(),
                description,
                personality: persona.personality.join(", "),
                scenario: persona.knowledge.join(" "),
                first_mes: persona.greeting.clone().unwrap_or_default(),
                mes_example,
                alternate_greetings: persona.alternate_greetings.clone(),
                ..kept
            },
        }
    }

    /// The persona this card describes. `{{char}}` becomes the name; `{{user}}` stays for
    /// the prompt to fill (see the [module](self) docs). The mapping:
    ///
    /// | card | persona |
    /// |---|---|
    /// | `nickname`, else `name` | `name` |
    /// | `description`, first sentence (a phrase: "X is the blacksmith." → "the blacksmith") | `description` |
    /// | `description`, the other sentences; `scenario` | `knowledge` (facts the prompt places by the question) |
    /// | `personality`, split at commas | `personality` |
    /// | `mes_example`, a character's line after a `{{user}}:` line, with it | `example_exchanges` (what was said, the reply) |
    /// | `mes_example`, the character's other lines | `example_lines` |
    /// | `first_mes`, `alternate_greetings` | `greeting`, `alternate_greetings` |
    /// | `character_book` | `lore` ([`from_character_book`](crate::lore::from_character_book)), and kept |
    /// | `extensions.bevy_llm_dialogue` ([`EXTENSION`]): speaking style, goals, sampling, lengths, stop strings, actions, disposition, lore, content rules | those fields |
    /// | everything else (system prompt, post-history instructions, extensions, unknown fields) | `card`, kept as written |
    pub fn to_persona(&self) -> Persona {
        let d = &self.data;
        let name = d
            .nickname
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&d.name)
            .trim()
            .to_owned();
        let fill = |text: &str| resolve_char(text, &name);
        let description = fill(&d.description);
        let sentences = split_sentences(&description);
        let (phrase, rest) = match sentences.split_first() {
            Some((first, rest)) => (as_phrase(first, &name), rest.to_vec()),
            None => ("a character".to_owned(), Vec::new()),
        };
        let mut knowledge = rest;
        knowledge.extend(split_sentences(&fill(&d.scenario)));
        let (example_exchanges, example_lines) = examples(&d.mes_example, &name);
        let mut kept = d.clone();
        // What the persona holds is not repeated in what it keeps.
        for field in [
            &mut kept.description,
            &mut kept.personality,
            &mut kept.scenario,
            &mut kept.first_mes,
            &mut kept.mes_example,
        ] {
            field.clear();
        }
        kept.alternate_greetings.clear();
        // A malformed extension reads as none here; persona_from_bytes refuses it.
        let extras = d.extras().unwrap_or_default();
        let card_lore = d
            .character_book
            .as_ref()
            .map(crate::lore::from_character_book)
            .filter(|book| !book.entries.is_empty())
            .map(|mut book| {
                for entry in &mut book.entries {
                    entry.content = fill(&entry.content);
                    for key in entry.keys.iter_mut().chain(&mut entry.secondary_keys) {
                        *key = fill(key);
                    }
                }
                book
            });
        // A card with a nickname speaks by it; its name stays one of its names.
        let mut aliases = extras.aliases.clone();
        if d.name.trim() != name && !aliases.iter().any(|a| a == d.name.trim()) {
            aliases.push(d.name.trim().to_owned());
        }
        Persona {
            name: name.clone(),
            aliases,
            identity_guard: extras.identity_guard.unwrap_or(true),
            description: phrase,
            personality: fill(&d.personality)
                .split([',', ';', '\n'])
                .map(|t| t.trim().trim_end_matches('.').to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            speaking_style: extras.speaking_style,
            example_lines,
            example_exchanges,
            knowledge,
            goals: extras.goals,
            greeting: Some(fill(&d.first_mes).trim().to_owned()).filter(|g| !g.is_empty()),
            alternate_greetings: d
                .alternate_greetings
                .iter()
                .map(|g| fill(g).trim().to_owned())
                .filter(|g| !g.is_empty())
                .collect(),
            sampling: extras.sampling,
            max_tokens: extras.max_tokens,
            max_sentences: extras.max_sentences,
            stop: extras.stop,
            actions: extras.actions,
            disposition: extras.disposition,
            content: extras.content,
            lore: extras.lore.or(card_lore),
            card: serde_json::to_value(&kept).ok(),
        }
    }

    /// [`from_json`](Self::from_json) or [`from_png`](Self::from_png) by content, then
    /// [`to_persona`](Self::to_persona), checked as a persona file is.
    pub fn persona_from_bytes(bytes: &[u8], file: &str) -> Result<Persona, CardError> {
        let card = if bytes.starts_with(b"\x89PNG") {
            Self::from_png(bytes, file)?
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| invalid(file, "", "is neither a PNG nor UTF-8 JSON"))?;
            Self::from_json(text, file)?
        };
        card.data
            .extras()
            .map_err(|e| invalid(file, &format!("data.extensions.{EXTENSION}"), e.to_string()))?;
        let persona = card.to_persona();
        persona
            .validate()
            .map_err(|e| invalid(file, &e.field, e.reason))?;
        Ok(persona)
    }
}

fn invalid(file: &str, field: &str, reason: impl Into<String>) -> CardError {
    CardError::Invalid {
        file: file.to_owned(),
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn json_error(file: &str, e: &serde_json::Error) -> CardError {
    CardError::Json {
        file: file.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_resolve_in_any_case_and_sentences_split() {
        assert_eq!(resolve_char("{{Char}} and <BOT>", "Mira"), "Mira and Mira");
        assert_eq!(resolve_user("Hi {{user}}, <USER>!", "Ann"), "Hi Ann, Ann!");
        assert_eq!(
            split_sentences("One. Two!\nThree 3.5 four"),
            ["One.", "Two!", "Three 3.5 four"]
        );
        assert_eq!(as_phrase("Mira is the smith.", "Mira"), "the smith");
        assert_eq!(as_phrase("A quiet girl.", "Mira"), "A quiet girl");
    }

    #[test]
    fn example_answers_keep_their_question() {
        let mes_example = "<START>\n{{user}}: What are you brewing?\n{{char}}: Nothing you could pay for.\n\
                           {{char}}: Now shut the door.\n<START>\n{{User}}: Hello.\n<user>: Anyone?\n\
                           *She looks up.*\n{{char}}: You're letting the cold in.\n\
                           <START>\n{{user}}: Unanswered.\n<START>\n<BOT>: Wolves listen.";
        let (exchanges, lines) = examples(mes_example, "Wren");
        let pairs: Vec<(&str, &str)> = exchanges
            .iter()
            .map(|e| (e.said.as_str(), e.reply.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("What are you brewing?", "Nothing you could pay for."),
                ("Hello.\nAnyone?", "You're letting the cold in."),
            ]
        );
        // A second line in a row, and a line after a question from another block, stand alone.
        assert_eq!(lines, ["Now shut the door.", "Wolves listen."]);

        // Written back out as a card and read again: the same pairs and lines.
        let card = CharacterCard::from_json(
            &serde_json::json!({"spec": "chara_card_v2", "data": {"name": "Wren",
                "description": "Wren is the herbalist.", "mes_example": mes_example}})
            .to_string(),
            "wren.card.json",
        )
        .unwrap();
        let wren = card.to_persona();
        assert_eq!(wren.example_exchanges, exchanges);
        let again = CharacterCard::from_persona(&wren).to_persona();
        assert_eq!(again.example_exchanges, wren.example_exchanges);
        assert_eq!(again.example_lines, wren.example_lines);
    }

    #[test]
    fn the_cards_lorebook_names_the_character_and_the_card_is_kept_opaque() {
        let card = CharacterCard::from_json(
            &serde_json::json!({"spec": "chara_card_v2", "data": {"name": "Wren",
                "description": "Wren is the herbalist.", "system_prompt": "Be {{char}}.",
                "character_book": {"entries": [{"keys": ["{{char}}'s hut"],
                    "content": "{{char}} hides the key from {{user}}."}]}}})
            .to_string(),
            "wren.card.json",
        )
        .unwrap();
        let wren = card.to_persona();
        let entry = &wren.lore.as_ref().unwrap().entries[0];
        assert_eq!(entry.keys, ["Wren's hut"]);
        // `{{user}}` waits for the prompt, which knows the player's name.
        assert_eq!(entry.content, "Wren hides the key from {{user}}.");
        // The kept card is plain JSON to the persona, card fields again to this module.
        assert_eq!(wren.card.as_ref().unwrap()["system_prompt"], "Be {{char}}.");
        let kept = CardData::kept_in(&wren).unwrap();
        assert_eq!(kept.system_prompt, "Be {{char}}.");
        assert!(kept.character_book.is_some());
    }
}
