//! Lorebooks (world info): facts that enter a prompt only when they matter, triggered by
//! words in the recent conversation or by the game's state, and placed next to the newest
//! turn (a small model uses facts by the question far more than facts at the top).
//!
//! ```
//! use bevy_llm_dialogue::lore::{LoreEntry, Lorebook};
//! use bevy_llm_dialogue::prompt::Facts;
//!
//! let book = Lorebook {
//!     entries: vec![
//!         LoreEntry::new(["tower", "ruin"], "The ruined tower's door is barred from inside."),
//!         LoreEntry::when_fact("quest.silver_key", "found", "The player carries the silver key."),
//!     ],
//!     ..Lorebook::default()
//! };
//! let world: Facts = [("quest", serde_json::json!({ "silver_key": "found" }))].into_iter().collect();
//! let fired = book.select(&["What about the old tower?"], &world, &Facts::new());
//! assert_eq!(fired.len(), 2);
//! ```

use serde::{Deserialize, Serialize};

use crate::facts::Facts;
use crate::ron_file::{Invalid, RonFileError, Validate, from_ron};

/// A set of lore entries and how they are picked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
#[serde(default, deny_unknown_fields)]
pub struct Lorebook {
    /// The entries.
    pub entries: Vec<LoreEntry>,
    /// How many of the most recent turns are scanned for keys (the player's new line counts
    /// as one).
    pub scan_depth: usize,
    /// The most tokens of lore one prompt takes, counted as four characters a token;
    /// entries of higher `priority` get in first.
    pub token_budget: usize,
}

impl Default for Lorebook {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            scan_depth: 4,
            token_budget: 256,
        }
    }
}

/// How an entry's secondary keys combine with its keys (SillyTavern's "selective" logic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selective {
    /// Any secondary key must also be there (or there are none).
    #[default]
    AndAny,
    /// Every secondary key must also be there.
    AndAll,
    /// No secondary key may be there.
    NotAny,
    /// Not every secondary key may be there.
    NotAll,
}

/// One piece of lore.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoreEntry {
    /// Words or phrases that bring the entry in when any of them is in the scanned turns.
    pub keys: Vec<String>,
    /// Further words, combined with `keys` as `selective` says.
    pub secondary_keys: Vec<String>,
    /// How `secondary_keys` combine.
    pub selective: Selective,
    /// Game state that brings the entry in: every `(fact, value)` holds (a dotted name looks
    /// inside objects: `quest.silver_key`; `"*"` means the fact is set at all). The world's
    /// facts are looked up first, then the NPC's.
    pub when: Vec<(String, String)>,
    /// The text placed in the prompt.
    pub content: String,
    /// Always in (within the budget).
    pub constant: bool,
    /// Where it goes among the fired entries: lower first.
    pub order: i32,
    /// Who gets into the budget first: higher first.
    pub priority: i32,
    /// Keys match case-sensitively.
    pub case_sensitive: bool,
    /// Off: never fires.
    pub enabled: bool,
}

impl Default for LoreEntry {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            secondary_keys: Vec::new(),
            selective: Selective::AndAny,
            when: Vec::new(),
            content: String::new(),
            constant: false,
            order: 100,
            priority: 0,
            case_sensitive: false,
            enabled: true,
        }
    }
}

impl LoreEntry {
    /// An entry that fires on any of `keys`.
    pub fn new<K: Into<String>>(keys: impl IntoIterator<Item = K>, content: &str) -> Self {
        Self {
            keys: keys.into_iter().map(Into::into).collect(),
            content: content.to_owned(),
            ..Self::default()
        }
    }

    /// An entry that fires while the fact `name` has `value`.
    pub fn when_fact(name: &str, value: &str, content: &str) -> Self {
        Self {
            when: vec![(name.to_owned(), value.to_owned())],
            content: content.to_owned(),
            ..Self::default()
        }
    }

    /// Whether the entry fires for the scanned text and the facts.
    fn fires(&self, scanned: &str, scanned_lower: &str, world: &Facts, npc: &Facts) -> bool {
        if !self.enabled || self.content.trim().is_empty() {
            return false;
        }
        if self.constant {
            return true;
        }
        let facts_hold = !self.when.is_empty()
            && self
                .when
                .iter()
                .all(|(name, value)| fact_holds(world, npc, name, value));
        if facts_hold {
            return true;
        }
        let has = |key: &String| {
            let key = key.trim();
            !key.is_empty()
                && if self.case_sensitive {
                    contains_word(scanned, key)
                } else {
                    contains_word(scanned_lower, &key.to_lowercase())
                }
        };
        if !self.keys.iter().any(has) {
            return false;
        }
        let secondary: Vec<bool> = self.secondary_keys.iter().map(has).collect();
        if secondary.is_empty() {
            return true;
        }
        match self.selective {
            Selective::AndAny => secondary.iter().any(|&b| b),
            Selective::AndAll => secondary.iter().all(|&b| b),
            Selective::NotAny => !secondary.iter().any(|&b| b),
            Selective::NotAll => !secondary.iter().all(|&b| b),
        }
    }
}

/// Whether `text` has `key` starting and ending at word boundaries ("wolf" is not in
/// "wolfsbane", a phrase matches whole).
fn contains_word(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Whether the fact `name` (dotted for a path into objects) has `value` (`"*"`: is set).
fn fact_holds(world: &Facts, npc: &Facts, name: &str, value: &str) -> bool {
    let lookup = |facts: &Facts| {
        if let Some(v) = facts.get(name) {
            return Some(v.clone());
        }
        let mut parts = name.split('.');
        let mut v = facts.get(parts.next()?)?.clone();
        for part in parts {
            v = v.get(part)?.clone();
        }
        Some(v)
    };
    let Some(found) = lookup(world).or_else(|| lookup(npc)) else {
        return false;
    };
    if value == "*" {
        return !found.is_null() && found != serde_json::Value::Bool(false);
    }
    // Numbers and booleans compare by their JSON text: `("gold", "3")`, `("open", "true")`.
    let text = match found {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    text == value
}

impl Lorebook {
    /// Parses and validates a lorebook written in RON (`*.lore.ron`). `file` names it in
    /// errors.
    pub fn from_ron(text: &str, file: &str) -> Result<Self, RonFileError> {
        from_ron(text, file)
    }

    /// The entries that fire for these turns (newest last; the player's new line is one)
    /// and facts, within the budget (highest `priority` first), in `order`.
    pub fn select<'a>(&'a self, turns: &[&str], world: &Facts, npc: &Facts) -> Vec<&'a LoreEntry> {
        select(std::slice::from_ref(&self), turns, world, npc)
    }
}

/// The entries of several books (shared world lore, a character's own) that fire, within
/// each book's own budget, in `order` (then book by book).
fn select<'a>(
    books: &[&'a Lorebook],
    turns: &[&str],
    world: &Facts,
    npc: &Facts,
) -> Vec<&'a LoreEntry> {
    let mut fired = Vec::new();
    for book in books {
        let depth = book.scan_depth.max(1);
        let scanned = turns[turns.len().saturating_sub(depth)..].join("\n");
        let lower = scanned.to_lowercase();
        let mut candidates: Vec<&LoreEntry> = book
            .entries
            .iter()
            .filter(|e| e.fires(&scanned, &lower, world, npc))
            .collect();
        // Highest priority first into the budget; ties by order.
        candidates.sort_by_key(|e| (-i64::from(e.priority), e.order));
        let mut left = book.token_budget.saturating_mul(4);
        for entry in candidates {
            let cost = entry.content.trim().len();
            if cost <= left {
                left -= cost;
                fired.push(entry);
            }
        }
    }
    fired.sort_by_key(|e| e.order);
    fired
}

/// The trimmed contents of the entries of `books` that fire ([`Lorebook::select`], book by book), each once: what
/// a prompt's note next to the newest turn says.
pub fn fired_contents<'a>(
    books: &[&'a Lorebook],
    turns: &[&str],
    world: &Facts,
    npc: &Facts,
) -> Vec<&'a str> {
    let mut contents: Vec<&str> = Vec::new();
    for entry in select(books, turns, world, npc) {
        let content = entry.content.trim();
        if !contents.contains(&content) {
            contents.push(content);
        }
    }
    contents
}

/// The deepest `scan_depth` of a lorebook (turns scanned for keys).
pub const MAX_SCAN_DEPTH: usize = 64;

/// The largest `token_budget` of a lorebook, in tokens (what a character card may ask for).
pub const MAX_LORE_TOKEN_BUDGET: usize = 8192;

/// The most entries in one lorebook: each is matched against the scanned turns for every
/// request.
pub const MAX_LORE_ENTRIES: usize = 4096;

/// The most keys (and secondary keys) of one lore entry.
pub const MAX_LORE_KEYS: usize = 64;

impl Validate for Lorebook {
    /// Keys and secondary keys must not be empty strings; an entry needs content; sizes
    /// stay within [`MAX_SCAN_DEPTH`], [`MAX_LORE_TOKEN_BUDGET`], [`MAX_LORE_ENTRIES`] and
    /// [`MAX_LORE_KEYS`].
    fn validate(&self) -> Result<(), Invalid> {
        if !(1..=MAX_SCAN_DEPTH).contains(&self.scan_depth) {
            return Err(Invalid::new(
                "scan_depth",
                format!("is {}, outside 1..={MAX_SCAN_DEPTH}", self.scan_depth),
            ));
        }
        if self.token_budget > MAX_LORE_TOKEN_BUDGET {
            return Err(Invalid::new(
                "token_budget",
                format!("is {}; at most {MAX_LORE_TOKEN_BUDGET}", self.token_budget),
            ));
        }
        if self.entries.len() > MAX_LORE_ENTRIES {
            return Err(Invalid::new(
                "entries",
                format!(
                    "has {} entries; at most {MAX_LORE_ENTRIES}",
                    self.entries.len()
                ),
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.content.trim().is_empty() {
                return Err(Invalid::new(format!("entries[{i}].content"), "is empty"));
            }
            if e.keys.len() + e.secondary_keys.len() > MAX_LORE_KEYS {
                return Err(Invalid::new(
                    format!("entries[{i}].keys"),
                    format!("has more than {MAX_LORE_KEYS} keys and secondary keys"),
                ));
            }
            if e.keys
                .iter()
                .chain(&e.secondary_keys)
                .any(|k| k.trim().is_empty())
            {
                return Err(Invalid::new(
                    format!("entries[{i}].keys"),
                    "contains an empty key (it would match everything)",
                ));
            }
            if !e.constant && e.keys.is_empty() && e.when.is_empty() {
                return Err(Invalid::new(
                    format!("entries[{i}]"),
                    "has no keys, no `when` and is not constant: it can never fire",
                ));
            }
        }
        Ok(())
    }
}

/// A character card's `character_book` as a lorebook (V2 fields: `keys`, `secondary_keys`,
/// `selective`, `constant`, `insertion_order`, `priority`, `case_sensitive`, `enabled`,
/// `content`; the book's `scan_depth` and `token_budget`). Entries it cannot read are skipped.
/// V3 decorators at the top of an entry's content are dropped from it (`@@dont_activate`
/// disables the entry; the others, such as `@@depth`, are front-end placement rules this
/// crate does not follow: lore always goes next to the newest turn). Keys are matched as
/// words even where V3's `use_regex` asks for regular expressions.
pub fn from_character_book(book: &serde_json::Value) -> Lorebook {
    let defaults = Lorebook::default();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let entries = book["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    // V3 decorators (`@@depth 4`, `@@dont_activate`, ...) open the content
                    // one per line: they are instructions to front ends, not lore.
                    let raw = e["content"].as_str()?;
                    let decorators: Vec<&str> = raw
                        .lines()
                        .map(str::trim)
                        .take_while(|l| l.starts_with("@@"))
                        .collect();
                    let content = raw
                        .lines()
                        .skip(decorators.len())
                        .collect::<Vec<_>>()
                        .join("\n")
                        .trim()
                        .to_owned();
                    let dont_activate = decorators.iter().any(|d| d.starts_with("@@dont_activate"));
                    let keys = strings(&e["keys"]);
                    let constant = e["constant"].as_bool().unwrap_or(false);
                    if content.is_empty() || (keys.is_empty() && !constant) {
                        return None;
                    }
                    let selective = e["selective"].as_bool().unwrap_or(false);
                    Some(LoreEntry {
                        keys,
                        secondary_keys: if selective {
                            strings(&e["secondary_keys"])
                        } else {
                            Vec::new()
                        },
                        selective: Selective::AndAny,
                        when: Vec::new(),
                        content,
                        constant,
                        order: e["insertion_order"].as_i64().unwrap_or(100) as i32,
                        priority: e["priority"].as_i64().unwrap_or(0) as i32,
                        case_sensitive: e["case_sensitive"].as_bool().unwrap_or(false),
                        enabled: e["enabled"].as_bool().unwrap_or(true) && !dont_activate,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Lorebook {
        entries,
        scan_depth: book["scan_depth"]
            .as_u64()
            .map_or(defaults.scan_depth, |d| {
                d.clamp(1, MAX_SCAN_DEPTH as u64) as usize
            }),
        token_budget: book["token_budget"]
            .as_u64()
            .map_or(defaults.token_budget, |b| {
                b.min(MAX_LORE_TOKEN_BUDGET as u64) as usize
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lorebooks_sizes_are_bounded() {
        let book = |fields: &str| {
            Lorebook::from_ron(
                &format!(r#"(entries: [(keys: ["k"], content: "c")], {fields})"#),
                "w.lore.ron",
            )
        };
        assert!(book("scan_depth: 64, token_budget: 8192").is_ok());
        for (fields, says) in [
            ("scan_depth: 0", "`scan_depth` is 0, outside 1..=64"),
            ("scan_depth: 18446744073709551615", "outside 1..=64"),
            (
                "token_budget: 18446744073709551615",
                "`token_budget` is 18446744073709551615",
            ),
        ] {
            let e = book(fields).unwrap_err().to_string();
            assert!(e.contains(says), "{fields}: {e}");
        }
        let keys = vec!["\"k\""; MAX_LORE_KEYS + 1].join(",");
        let e = Lorebook::from_ron(
            &format!(r#"(entries: [(keys: [{keys}], content: "c")])"#),
            "w.lore.ron",
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than 64 keys"), "{e}");
    }
}
