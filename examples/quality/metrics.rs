//! What the suite counts. Each metric is a plain function of the text, so that its definition
//! is the code (and [`DEFINITIONS`] says the same in words for `QUALITY.md`). The checks that
//! best-of-n also scores by live in the library's `score` module, so that both count the
//! same thing.

use bevy_llm_dialogue::score;

/// The metrics in words, as `QUALITY.md` prints them.
pub(crate) const DEFINITIONS: &[(&str, &str)] = &[
    (
        "mid-sentence",
        "a line whose text, trimmed, does not end with `.`, `!`, `?` or `…` (closing quotes allowed)",
    ),
    (
        "trailed off",
        "a line that the engine ended with `…` because the budget ran out before any sentence end",
    ),
    (
        "leakage",
        "chat roles or markup in a line (`User:`, `Assistant:`, `<|`, `|>`, `im_start`) or AI talk (`as an AI`, `language model`)",
    ),
    (
        "wrong name",
        "the NPC introduces itself by another name (`my name is X`, `I am X`, `I'm X`, `call me X`, `name's X` with a capitalised X that is not the persona's name)",
    ),
    (
        "knowledge used",
        "answers to the probe questions about a persona's `knowledge` that contain one of the probe's expected words",
    ),
    (
        "rule broken",
        "a line containing a word the persona's `speaking_style` says it never says",
    ),
    (
        "not prose",
        "a scene with `/ \\ { } [ ] < > _ # | ` or a backtick, a camel-case run (`aB`), a word of over 20 letters, `http` or `.json`",
    ),
    (
        "title-like",
        "a scene with no sentence end, or of under 12 words",
    ),
    (
        "premise in opening",
        "generated opening scenes containing one of the premise's keywords",
    ),
    (
        "action choices",
        "choices of 1 to 8 words, without `?`, whose first word is not a pronoun, article or determiner, not a substring of the scene, and distinct from the others",
    ),
    (
        "well-formed sets",
        "choice sets with exactly the story's number of non-empty, pairwise distinct choices",
    ),
];

/// Whether a line stops in the middle of a sentence.
pub(crate) fn mid_sentence(text: &str) -> bool {
    !bevy_llm_dialogue::engine::ends_sentence(text)
}

/// Chat roles, markup or AI talk in a line ([`score::leaks`]).
pub(crate) fn leaks(text: &str) -> bool {
    score::leaks(text)
}

/// The other name an NPC gives itself, if any ([`score::other_name`]).
pub(crate) fn wrong_name(text: &str, name: &str) -> Option<String> {
    score::other_name(text, name)
}

/// Whether an answer uses one of the expected words.
pub(crate) fn uses_knowledge(text: &str, expect: &[String]) -> bool {
    let lower = text.to_lowercase();
    expect.iter().any(|w| lower.contains(&w.to_lowercase()))
}

/// Whether a line contains a word the persona never says.
pub(crate) fn breaks_rule(text: &str, never_says: &[String]) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(str::to_lowercase)
        .collect();
    never_says
        .iter()
        .any(|w| words.iter().any(|x| *x == w.to_lowercase()))
}

/// Whether a scene is something other than prose ([`score::not_prose`]).
pub(crate) fn not_prose(text: &str) -> bool {
    score::not_prose(text)
}

/// Whether a scene reads as a title rather than a scene ([`score::title_like`]).
pub(crate) fn title_like(text: &str) -> bool {
    score::title_like(text)
}

/// Whether a scene mentions one of the premise's keywords.
pub(crate) fn mentions(text: &str, keywords: &[String]) -> bool {
    uses_knowledge(text, keywords)
}

/// Whether a choice reads as something the player does.
pub(crate) fn is_action(choice: &str, scene: &str, others: &[String]) -> bool {
    let words: Vec<&str> = choice.split_whitespace().collect();
    let not_verbs = [
        "the", "a", "an", "you", "i", "he", "she", "it", "they", "we", "this", "that", "there",
        "your", "my", "his", "her", "their", "its", "our", "what", "who", "why", "how", "when",
        "where", "is", "are", "was", "were",
    ];
    let first = words
        .first()
        .map(|w| w.trim_matches(|c: char| !c.is_alphabetic()).to_lowercase())
        .unwrap_or_default();
    let copied = scene.to_lowercase().contains(&choice.to_lowercase());
    let repeated = others
        .iter()
        .filter(|o| o.to_lowercase() == choice.to_lowercase())
        .count()
        > 1;
    (1..=8).contains(&words.len())
        && !choice.contains('?')
        && !first.is_empty()
        && !not_verbs.contains(&first.as_str())
        && !copied
        && !repeated
}

/// Whether a choice set has exactly `n` non-empty, pairwise distinct choices.
pub(crate) fn well_formed(choices: &[String], n: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    choices.len() == n
        && choices.iter().all(|c| !c.trim().is_empty())
        && choices.iter().all(|c| seen.insert(c.trim().to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_catch_what_they_describe() {
        assert!(mid_sentence("Steel and fire, and I've"));
        assert!(!mid_sentence("Steel and fire.\""));
        assert!(leaks("User: hello"));
        assert_eq!(
            wrong_name("My name is Zephyre, a bard.", "Mira").as_deref(),
            Some("Zephyre")
        );
        assert_eq!(wrong_name("I'm Mira. I am tired.", "Mira"), None);
        assert!(not_prose("Title2018_Scene1.json"));
        assert!(!not_prose("You stand at the gate. Rain falls."));
        assert!(title_like("The Silver Key"));
        assert!(is_action(
            "Open the door",
            "A door.",
            &["Open the door".into()]
        ));
        assert!(!is_action("The door is open", "A door.", &[]));
    }
}
