//! [`IdentityCheck`]: a character that stays who it is. A small model playing a persona
//! often introduces itself under another name ("I'm Kaida, a sailor…"), opens a line with a
//! speaker label ("Megabele Blackjack: …") or writes the player's turn ("Player: …"). As a
//! [`TextGuard`] the generator enforces, such text is caught as it forms and written again,
//! as a banned word is: the name or the label never reaches the player.
//!
//! ```
//! use bevy_llm_dialogue::content::IdentityCheck;
//!
//! let tamsin = IdentityCheck::new(["Tamsin Vell", "the lamplighter"]);
//! assert!(tamsin.check("Hello! I'm Kaida, a sailor.").is_some());
//! assert!(tamsin.check("Lady of the Library: \"Welcome.\"").is_some());
//! assert!(tamsin.check("I'm Tamsin. My name is Tamsin Vell.").is_none());
//! assert!(tamsin.check("I'm sorry, Aria is my sister.").is_none());
//! ```

use std::collections::HashSet;
use std::ops::Range;

use crate::engine::{GuardHit, TextGuard};

/// The longest speaker label, in characters ("Lady of the Library").
const MAX_LABEL_CHARS: usize = 40;
/// The most words of a speaker label.
const MAX_LABEL_WORDS: usize = 4;
/// Lowercase words a name may hold ("Lady of the Library", "Jan van Dyke").
const NAME_PARTICLES: &[&str] = &[
    "of", "the", "de", "van", "von", "da", "al", "la", "le", "du",
];
/// One-word openings that end in a colon without naming a speaker ("Listen: …").
const NOT_SPEAKERS: &[&str] = &[
    "listen",
    "look",
    "note",
    "remember",
    "warning",
    "answer",
    "question",
    "well",
    "yes",
    "no",
    "okay",
    "ok",
    "so",
    "hint",
    "tip",
    "first",
    "second",
    "third",
    "finally",
    "rule",
    "example",
    "reminder",
    "hey",
    "behold",
    "attention",
    "careful",
    "lesson",
    "now",
    "see",
    "truth",
];
/// Capitalized words that follow "I'm" without being a name ("I'm Sorry", "I am The one").
const NOT_NAMES: &[&str] = &[
    "i",
    "sorry",
    "not",
    "the",
    "a",
    "an",
    "here",
    "just",
    "so",
    "glad",
    "fine",
    "ok",
    "okay",
    "afraid",
    "sure",
    "no",
    "yes",
    "only",
    "still",
    "always",
    "never",
    "also",
    "really",
    "very",
    // Openings of "X here." that are not names.
    "everyone",
    "everybody",
    "nobody",
    "someone",
    "somebody",
    "anyone",
    "nothing",
    "everything",
    "something",
    "all",
    "none",
    "it",
    "this",
    "that",
    "they",
    "we",
    "you",
    "he",
    "she",
    "life",
    "things",
    "people",
    "folk",
    "folks",
    "home",
    "work",
];
/// What comes before a character's name when it gives one, lowercase, ending in a space.
const INTRODUCTIONS: &[&str] = &[
    "i'm ",
    "i am ",
    "my name is ",
    "call me ",
    "name's ",
    "i’m ",
];

/// A persona's names, and the check that the character keeps them: no self-introduction
/// under another name ("I'm X", "I am X", "my name is X", "call me X", "the name's X",
/// "I'm a sailor named X", "X here."), no line opening with a speaker label ("Name:") and
/// none after a sentence end or a line break (a character writing someone else's turn, the
/// player's included).
///
/// Names are compared word by word, ignoring case: "Sister Ilse" allows "I'm Sister Ilse"
/// and "call me Ilse".
#[derive(Clone, Debug)]
pub struct IdentityCheck {
    /// The words of every name the character may use, lowercase.
    names: HashSet<String>,
}

impl IdentityCheck {
    /// The check for a character called by any of `names` (its name, titles, nicknames).
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let names = names
            .into_iter()
            .flat_map(|n| {
                n.as_ref()
                    .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
            })
            .collect();
        Self { names }
    }

    /// The first hit in a finished text.
    pub fn check(&self, text: &str) -> Option<GuardHit> {
        self.find(text, 0, true)
    }

    /// Whether `word` is one of the character's names.
    fn allowed(&self, word: &str) -> bool {
        let lower = word.to_lowercase();
        let lower = lower
            .strip_suffix("'s")
            .or_else(|| lower.strip_suffix("’s"))
            .unwrap_or(&lower);
        self.names.contains(lower)
    }

    /// A self-introduction under another name in `text`: the name's range.
    fn wrong_name(&self, text: &str, complete: bool) -> Option<Range<usize>> {
        // ASCII lowercasing keeps byte offsets; the introductions are ASCII.
        let lower = &text.to_ascii_lowercase();
        let mut hits = Vec::new();
        for intro in INTRODUCTIONS {
            for (at, _) in lower.match_indices(intro) {
                if at > 0
                    && lower[..at]
                        .chars()
                        .next_back()
                        .is_some_and(char::is_alphanumeric)
                {
                    continue;
                }
                let start = at + intro.len();
                let mut name = self.name_at(text, start, complete);
                // "I'm a sailor named Kaida": a few words on, `named` or `called`.
                if name.is_none() && intro.starts_with('i') {
                    name = self.named_after(text, lower, start, complete);
                }
                hits.extend(name);
            }
        }
        // "Kaida here." opening a line.
        let open = text.len() - text.trim_start().len();
        if let Some(word) = word_at(text, open)
            && lower[word.end..].starts_with(" here")
            && lower[word.end + 5..]
                .chars()
                .next()
                .is_some_and(|c| matches!(c, '.' | ',' | '!' | ';'))
            && self.is_foreign_name(&text[word.clone()])
        {
            hits.push(word);
        }
        hits.into_iter().min_by_key(|r| r.start)
    }

    /// The capitalized word starting at `start`, if it is a finished name the character
    /// does not have.
    fn name_at(&self, text: &str, start: usize, complete: bool) -> Option<Range<usize>> {
        let word = word_at(text, start)?;
        let finished = complete || word.end < text.len();
        (finished && self.is_foreign_name(&text[word.clone()])).then_some(word)
    }

    /// "named X" or "called X" within a few words after `start`.
    fn named_after(
        &self,
        text: &str,
        lower: &str,
        start: usize,
        complete: bool,
    ) -> Option<Range<usize>> {
        let mut at = start;
        for _ in 0..=MAX_LABEL_WORDS {
            let word = word_at(text, at)?;
            let w = &lower[word.clone()];
            if w == "named" || w == "called" {
                return self
                    .name_at(text, word.end + 1, complete)
                    .filter(|_| text[word.end..].starts_with(' '));
            }
            if !text[word.end..].starts_with(' ') {
                return None;
            }
            at = word.end + 1;
        }
        None
    }

    fn is_foreign_name(&self, word: &str) -> bool {
        word.chars().next().is_some_and(char::is_uppercase)
            && !self.allowed(word)
            && !NOT_NAMES.contains(&word.to_lowercase().as_str())
    }

    /// A speaker label where a turn could start (the text's start, after a line break or a
    /// sentence end): its range, colon included.
    fn label(&self, text: &str) -> Option<Range<usize>> {
        turn_starts(text).find_map(|start| {
            let (words, end) = label_words(text, start)?;
            text[end..].starts_with(':').then_some(())?;
            // One ordinary word and a colon opens a sentence ("Listen: …"), not a turn.
            if words == 1 {
                let word = text[start..end].trim_start_matches(['"', '\'', '*', '(']);
                if NOT_SPEAKERS.contains(&word.to_lowercase().as_str()) {
                    return None;
                }
            }
            Some(start..end + 1)
        })
    }
}

impl TextGuard for IdentityCheck {
    fn find(&self, text: &str, _checked: usize, complete: bool) -> Option<GuardHit> {
        let label = self.label(text).map(|range| GuardHit {
            range,
            rule: "identity: speaker label".into(),
        });
        let name = self.wrong_name(text, complete).map(|range| GuardHit {
            rule: format!("identity: calls itself {}", &text[range.clone()]),
            range,
        });
        [label, name]
            .into_iter()
            .flatten()
            .min_by_key(|h| h.range.start)
    }

    fn settled(&self, text: &str) -> usize {
        let mut settled = text.len();
        // A turn start that could still become a label ("Lady of the Lib…").
        if let Some(start) = turn_starts(text).last()
            && let Some((_, end)) = label_words(text, start)
            && end == text.len()
        {
            settled = start;
        }
        // "Kaida here" opening a line, before its punctuation.
        let lower = text.to_ascii_lowercase();
        let open = text.len() - text.trim_start().len();
        if let Some(word) = word_at(text, open)
            && " here".starts_with(&lower[word.end..])
            && self.is_foreign_name(&text[word.clone()])
        {
            settled = settled.min(open);
        }
        // An introduction whose name is still to come or unfinished.
        for intro in INTRODUCTIONS {
            if let Some(at) = lower.rfind(intro) {
                let start = at + intro.len();
                let rest = &text[start..];
                if rest.chars().all(is_word_char) {
                    settled = settled.min(start);
                }
            }
        }
        for trigger in [" named ", " called "] {
            if let Some(at) = lower.rfind(trigger) {
                let start = at + trigger.len();
                if text[start..].chars().all(is_word_char) {
                    settled = settled.min(start);
                }
            }
        }
        settled
    }
}

/// Whether `c` may be part of a name: a letter, a digit, an apostrophe, a hyphen.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '\'' | '’' | '-')
}

/// The word (letters, digits, apostrophes, hyphens) starting exactly at `start`.
fn word_at(text: &str, start: usize) -> Option<Range<usize>> {
    let rest = text.get(start..)?;
    let len = rest
        .char_indices()
        .find(|(_, c)| !is_word_char(*c))
        .map_or(rest.len(), |(i, _)| i);
    (len > 0).then_some(start..start + len)
}

/// Where a turn could start in `text`: its start, after a line break, after a sentence end
/// and its spaces.
fn turn_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let starts = text.char_indices().filter_map(move |(i, c)| {
        let after = i + c.len_utf8();
        match c {
            '\n' => Some(after),
            '.' | '!' | '?' if text[after..].starts_with(' ') => Some(after),
            _ => None,
        }
    });
    std::iter::once(0)
        .chain(starts)
        .map(move |s| s + (text[s..].len() - text[s..].trim_start().len()))
}

/// The words of a possible speaker label at `start` (capitalized words and name particles,
/// single spaces, at most [`MAX_LABEL_WORDS`] and [`MAX_LABEL_CHARS`]): how many, and where
/// they end (the text's end while it could still go on). `None` when the text there cannot
/// be a label.
fn label_words(text: &str, start: usize) -> Option<(usize, usize)> {
    let rest = &text[start..];
    let body = rest.trim_start_matches(['"', '\'', '*', '(']);
    let mut at = start + (rest.len() - body.len());
    let mut words = 0;
    loop {
        if at == text.len() {
            return Some((words, at));
        }
        let word = word_at(text, at)?;
        let w = &text[word.clone()];
        let capital = w.chars().next().is_some_and(char::is_uppercase);
        let particle = words > 0 && NAME_PARTICLES.contains(&w);
        if !(capital || particle) || word.end - start > MAX_LABEL_CHARS {
            return None;
        }
        words += 1;
        at = word.end;
        if at == text.len() || words == MAX_LABEL_WORDS || !text[at..].starts_with(' ') {
            return Some((words, at));
        }
        at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tamsin() -> IdentityCheck {
        IdentityCheck::new(["Tamsin", "Lamplighter Tamsin"])
    }

    #[test]
    fn another_name_is_caught_and_its_own_names_pass() {
        let t = tamsin();
        for (line, name) in [
            ("I'm Kaida, a sailor on a ship.", "Kaida"),
            ("Hello! My name is Aria.", "Aria"),
            ("Call me Quill.", "Quill"),
            ("I am a mischievous elf named Quilleygoth.", "Quilleygoth"),
            ("Aria here. What do you need?", "Aria"),
            ("The name's Bones.", "Bones"),
        ] {
            let hit = t.check(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(&line[hit.range.clone()], name, "{line}");
            assert_eq!(hit.rule, format!("identity: calls itself {name}"));
        }
        for line in [
            "I'm Tamsin. Lamplighter Tamsin, if you like.",
            "I'm sorry, I am not sure. Aria is my sister.",
            "I'm the lamplighter of Blackvell.",
            "I am Tamsin's lamp, you could say.",
            "Nobody here lights lamps but me.",
            "Everyone here. Come in!",
            "My sister is named Aria.",
        ] {
            assert!(t.check(line).is_none(), "{line}");
        }
    }

    #[test]
    fn speaker_labels_are_caught_where_a_turn_starts() {
        let t = tamsin();
        for (line, label) in [
            (
                "Megabele Blackjack: A well-known politician.",
                "Megabele Blackjack:",
            ),
            (
                "Lady of the Library: \"Sister Ilse, …\"",
                "Lady of the Library:",
            ),
            ("Tamsin: Good evening.", "Tamsin:"),
            ("Good evening. Player: Hello.", "Player:"),
            ("Good evening.\nAnn: And to you.", "Ann:"),
        ] {
            let hit = t.check(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(&line[hit.range.clone()], label, "{line}");
        }
        for line in [
            "Listen: the lamps go out at nine.",
            "Here is what I know: the lamps go out at nine.",
            "The rule is simple: light them all.",
        ] {
            assert!(t.check(line).is_none(), "{line}");
        }
    }

    #[test]
    fn what_could_still_become_a_hit_is_held() {
        let t = tamsin();
        // A line's first capitalized words wait for their end; a lowercase word frees them.
        assert_eq!(t.settled("Lady of the"), 0);
        assert_eq!(t.settled("Good evening"), 12);
        assert_eq!(t.settled("Good evening, friend"), 20);
        // An introduction waits for its name.
        assert_eq!(t.settled("Well, I'm "), 10);
        assert_eq!(t.settled("Well, I'm Kai"), 10);
        assert!(t.find("Well, I'm Kai", 0, false).is_none(), "unfinished");
        assert!(t.find("Well, I'm Kaida,", 0, false).is_some());
        assert_eq!(t.settled("Well, I'm Tamsin, the"), 21);
        assert_eq!(t.settled("My name is Yer-"), 11);
    }
}
