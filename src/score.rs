//! Judging generated text: the checks the quality suite counts, and the score that
//! best-of draws (`RequestLine::best_of`, the worker's [`Output::Text`]) are ranked by.
//!
//! [`Output::Text`]: crate::worker::Output::Text
//!
//! Each check is a plain function of the text, so its definition is the code. A line's
//! score is its mean token log-probability ([`GenerationStats::mean_logprob`]) minus
//! [`FLAW_PENALTY`] for each flaw it has: any draw without flaws beats any draw with one, and
//! among equals the one the model was surer of wins. [`scene_flaws`] is the same check for a
//! scene's prose, for a game that wants to ask again.
//!
//! ```
//! use bevy_llm_dialogue::score;
//!
//! assert!(score::leaks("User: hello"));
//! assert_eq!(score::other_name("My name is Zephyre.", "Mira").as_deref(), Some("Zephyre"));
//! assert!(score::not_prose("Title2018_Scene1.json"));
//! assert!(score::title_like("The Silver Key"));
//! ```
//!
//! [`GenerationStats::mean_logprob`]: crate::engine::GenerationStats::mean_logprob

use crate::engine::{Generation, ends_sentence};

/// What one flaw costs a draw's score: more than any difference in mean log-probability
/// a small model shows between fluent draws (they differ by about 1).
pub const FLAW_PENALTY: f64 = 10.0;

/// Chat roles, markup or AI talk: `User:`, `Assistant:`, `System:`, `<|`, `|>`,
/// `im_start`, `im_end`, "as an AI", "language model".
pub fn leaks(text: &str) -> bool {
    let lower = text.to_lowercase();
    [
        "user:",
        "assistant:",
        "system:",
        "<|",
        "|>",
        "im_start",
        "im_end",
        "as an ai",
        "language model",
        "i'm an ai",
        "i am an ai",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// The other name a speaker gives itself, if any: `my name is X`, `I am X`, `I'm X`,
/// `call me X` or `name's X`, with a capitalised X that is not `name` (and not a common word
/// such as "Not" or "Sorry").
pub fn other_name(text: &str, name: &str) -> Option<String> {
    const COMMON: &[&str] = &[
        "I", "A", "An", "The", "Not", "Just", "No", "Here", "Sure", "Sorry",
    ];
    // Lowercasing keeps byte offsets only for ASCII; elsewhere the text is searched as is.
    let lower = text.to_ascii_lowercase();
    let own = name.to_lowercase();
    for intro in ["my name is ", "i am ", "i'm ", "call me ", "name's "] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(intro) {
            let start = from + at + intro.len();
            from = start;
            let word: String = text[start..]
                .chars()
                .take_while(|c| c.is_alphabetic() || *c == '-')
                .collect();
            let capitalised = word.chars().next().is_some_and(char::is_uppercase);
            if capitalised && !COMMON.contains(&word.as_str()) && word.to_lowercase() != own {
                return Some(word);
            }
        }
    }
    None
}

/// Whether a text is something other than prose: any of `/ \ { } [ ] < > _ # |` or a
/// backtick, a camel-case run (`aB`), a word of over 20 letters, `http` or `.json`.
pub fn not_prose(text: &str) -> bool {
    let symbols = text.chars().any(|c| "/\\{}[]<>_#|`".contains(c));
    let camel = text
        .as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
    let long_word = text
        .split_whitespace()
        .any(|w| w.chars().filter(|c| c.is_alphabetic()).count() > 20);
    let lower = text.to_lowercase();
    symbols || camel || long_word || lower.contains("http") || lower.contains(".json")
}

/// Whether a scene reads as a title rather than a scene: no sentence end, or under 12
/// words.
pub fn title_like(text: &str) -> bool {
    let words = text.split_whitespace().count();
    let has_sentence = text.contains(['.', '!', '?', '…']);
    words < 12 || !has_sentence
}

/// Whether a text trails off: it ends with `…` (what the engine writes when the budget ran
/// out before any sentence end) or does not end a sentence at all.
pub fn trails_off(text: &str) -> bool {
    let text = text.trim_end_matches(['"', '\'', '”', '’', ')']);
    !ends_sentence(text) || text.ends_with('…') || text.ends_with("...")
}

/// The flaws of an NPC line spoken by `speaker`: empty, trailing off, leaking chat markup,
/// or the speaker calling itself by another name.
pub fn line_flaws(text: &str, speaker: &str) -> usize {
    if text.trim().is_empty() {
        return 4;
    }
    usize::from(trails_off(text))
        + usize::from(leaks(text))
        + usize::from(other_name(text, speaker).is_some())
}

/// The flaws of a scene's prose: empty, trailing off, leaking chat markup, not prose, or
/// title-like.
pub fn scene_flaws(text: &str) -> usize {
    if text.trim().is_empty() {
        return 4;
    }
    usize::from(trails_off(text))
        + usize::from(leaks(text))
        + usize::from(not_prose(text))
        + usize::from(title_like(text))
}

/// The score best-of-n ranks a line by: mean token log-probability minus
/// [`FLAW_PENALTY`] per [`line_flaws`]. Higher is better.
pub fn line_score(generation: &Generation, speaker: &str) -> f64 {
    generation.stats.mean_logprob() - FLAW_PENALTY * line_flaws(&generation.text, speaker) as f64
}

/// The indices of `scores` from best to worst (stable: equal scores keep their order; a
/// NaN counts as worst).
pub fn ranked(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f64::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_catch_what_they_describe() {
        assert!(leaks("As an AI, I cannot."));
        assert!(!leaks("Steel and fire."));
        assert_eq!(other_name("I'm Mira. I am tired.", "Mira"), None);
        assert_eq!(other_name("Ünd I'm Bob.", "Mira").as_deref(), Some("Bob"));
        assert!(!not_prose("You stand at the gate. Rain falls."));
        assert!(trails_off("Steel and fire, and I've…"));
        assert!(trails_off("Steel and fire, and I've"));
        assert!(!trails_off("Steel and fire.\""));
    }

    #[test]
    fn a_flawless_line_outranks_a_surer_flawed_one() {
        assert_eq!(line_flaws("I am Mira. Welcome.", "Mira"), 0);
        assert_eq!(line_flaws("My name is Zephyre, and I", "Mira"), 2);
        assert!(line_flaws("  ", "Mira") > 2);
        assert_eq!(scene_flaws("The Silver Key"), 2);
        let clean = -3.0 - FLAW_PENALTY * 0.0;
        let flawed = -0.1 - FLAW_PENALTY * 1.0;
        assert_eq!(ranked(&[flawed, clean, f64::NAN]), vec![1, 0, 2]);
    }
}
