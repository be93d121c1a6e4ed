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
        "speaker label",
        "a line with a speaker label where a turn could start (at its start, after a line break or a sentence end): one to four capitalised words (`of`, `the` inside) and a colon, other than an opening word such as `Listen:`",
    ),
    (
        "identity probes",
        "answers to \"Hello, who are you?\" and \"Tell me about yourself.\" asked of a new NPC: **names itself** counts those that contain the persona's name, **other name** those with a wrong name (as above)",
    ),
    (
        "profane",
        "a line that the profanity filter (rustrict) flags at `Profanity::Mild`, the strictest level",
    ),
    (
        "distinct-2",
        "distinct word pairs over all word pairs in each persona's lines, averaged over personas (higher: less repetition)",
    ),
    (
        "first delta",
        "mean seconds from the request to the line's first `LineDelta` (what the player waits for)",
    ),
    (
        "example echoes",
        "generated scenes whose prose or choices hold a word of the narrator's built-in example (`stranger`, `letter`, `inn`, `hooded`, `roadside`) that the story's premise does not use, in stories without pinned scenes",
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

/// Whether a line has a speaker label where a turn could start.
pub(crate) fn speaker_label(text: &str) -> bool {
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
    let mut starts = vec![0];
    for (i, c) in text.char_indices() {
        if c == '\n' || (matches!(c, '.' | '!' | '?') && text[i + 1..].starts_with(' ')) {
            starts.push(i + 1);
        }
    }
    starts.into_iter().any(|s| {
        let rest = text[s..].trim_start().trim_start_matches(['"', '*', '(']);
        let Some((label, _)) = rest.split_once(':') else {
            return false;
        };
        let words: Vec<&str> = label.split(' ').collect();
        (1..=4).contains(&words.len())
            && label.len() <= 40
            && words.iter().enumerate().all(|(i, w)| {
                w.chars().next().is_some_and(char::is_uppercase)
                    && w.chars()
                        .all(|c| c.is_alphanumeric() || c == '\'' || c == '-')
                    || (i > 0 && ["of", "the", "de", "van", "von"].contains(w))
            })
            && !(words.len() == 1 && NOT_SPEAKERS.contains(&words[0].to_lowercase().as_str()))
    })
}

/// Whether `text` holds one of `words` as a word (or its plural).
pub(crate) fn echoes(text: &str, words: &[String]) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .any(|w| words.iter().any(|e| w == *e || w == format!("{e}s")))
}

/// Whether the profanity filter flags a line at its strictest level.
pub(crate) fn profane(text: &str) -> bool {
    use bevy_llm_dialogue::content::{ContentPolicy, Profanity};
    thread_local! {
        static FILTER: bevy_llm_dialogue::content::ContentFilter = ContentPolicy {
            profanity: Profanity::Mild,
            ..ContentPolicy::off()
        }
        .filter();
    }
    FILTER.with(|f| f.check(text).is_some())
}

/// Distinct word pairs over all word pairs of `lines`.
pub(crate) fn distinct_2<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<f64> {
    let mut all = 0usize;
    let mut seen = std::collections::HashSet::new();
    for line in lines {
        let words: Vec<String> = line
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for pair in words.windows(2) {
            all += 1;
            seen.insert((pair[0].clone(), pair[1].clone()));
        }
    }
    (all > 0).then(|| seen.len() as f64 / all as f64)
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
        assert!(speaker_label(
            "Megabele Blackjack: A well-known politician."
        ));
        assert!(speaker_label("Fine. Lady of the Library: \"Sister Ilse\""));
        assert!(!speaker_label("Listen: the river floods in spring."));
        assert!(!speaker_label("Here is the rule: pay first."));
        assert!(profane("Some asshole with a gun."));
        assert!(!profane("Some fellow with a gun."));
        assert_eq!(distinct_2(["a b a b"]), Some(2.0 / 3.0));
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
