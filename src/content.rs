//! Content control: what characters must never say.
//!
//! A [`ContentPolicy`] lists banned words and phrases, a profanity level (through the
//! [`rustrict`] filter), and out-of-character phrases ("as an AI", chat markup). The
//! generator enforces it while it writes: a flagged phrase is caught as it forms, its tokens
//! are taken back and others sampled in their place, so it never streams out (see
//! [`Guard`]). The same rules check the player's line before the model sees it.
//!
//! ```
//! use bevy_llm_dialogue::content::{ContentPolicy, Profanity};
//!
//! let policy = ContentPolicy {
//!     banned: vec!["dragon".into(), "the old king".into()],
//!     profanity: Profanity::Mild,
//!     ..ContentPolicy::default()
//! };
//! let filter = policy.filter();
//! assert!(filter.check("Dragons sleep under the hill.").is_some()); // plural, any case
//! assert!(filter.check("The Old King's crown is lost.").is_some());
//! assert!(filter.check("As an AI, I cannot help.").is_some()); // out of character
//! assert!(filter.check("The smith mends your blade.").is_none());
//! assert_eq!(filter.censor("Those dragons again!"), "Those ******* again!");
//! ```

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::engine::{Guard, GuardHit, TextGuard};

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
    #[default]
    Off,
    /// Only the worst words.
    Severe,
    /// Moderate and severe words: a teen rating.
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
            profanity: Profanity::Off,
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

impl ContentPolicy {
    /// A policy that checks nothing.
    pub fn off() -> Self {
        Self {
            out_of_character: Vec::new(),
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
                let words: Vec<String> = words(entry).map(|(_, w)| w.to_lowercase()).collect();
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
    pub fn guard_with(&self, filter: ContentFilter) -> Option<Guard> {
        (!filter.is_empty()).then(|| Guard::new(filter, self.max_rollbacks))
    }
}

/// A banned phrase, as lowercase words.
#[derive(Clone, Debug)]
struct Phrase {
    words: Vec<String>,
    rule: String,
}

/// A [`ContentPolicy`]'s rules, ready to check text ([`ContentPolicy::filter`]). It is the
/// [`TextGuard`] the generator enforces.
#[derive(Clone, Debug)]
pub struct ContentFilter {
    phrases: Vec<Phrase>,
    /// Lowercase (ASCII) strings matched anywhere.
    literals: Vec<(String, String)>,
    profanity: Option<rustrict::Type>,
}

impl ContentFilter {
    /// Builds the profanity filter's word tables now (about 25 ms, once per process) rather
    /// than at the first check. The plugin does this on a background thread at startup, so
    /// that the first player line it checks on the main thread does not pay for it.
    pub fn warm_up() {
        rustrict::Censor::from_str("warm up").analyze();
    }

    /// Whether it checks nothing.
    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty() && self.literals.is_empty() && self.profanity.is_none()
    }

    /// The first hit in a finished text.
    pub fn check(&self, text: &str) -> Option<GuardHit> {
        self.find(text, 0, true)
    }

    /// Every hit in a finished text, by where it starts (they may overlap).
    pub fn hits(&self, text: &str) -> Vec<GuardHit> {
        let mut hits = Vec::new();
        self.collect(text, 0, true, &mut hits, true);
        hits.sort_by_key(|hit| hit.range.start);
        hits
    }

    /// `text` with every hit's characters replaced by `*` (one pass over the text).
    pub fn censor(&self, text: &str) -> String {
        let mut hidden = vec![false; text.len()];
        for hit in self.hits(text) {
            hidden[hit.range].fill(true);
        }
        text.char_indices()
            .map(|(i, c)| if hidden[i] { '*' } else { c })
            .collect()
    }

    /// Hits in `text` into `out`: all of them, or with `all` false at least the first of
    /// each kind (the earliest of `out` is then the first hit).
    fn collect(
        &self,
        text: &str,
        checked: usize,
        complete: bool,
        out: &mut Vec<GuardHit>,
        all: bool,
    ) {
        let mut spans: Vec<(Range<usize>, String)> = words(text)
            .map(|(range, word)| (range, word.to_lowercase()))
            .collect();
        // An unfinished last word is judged once it ends.
        if !complete && spans.last().is_some_and(|(r, _)| r.end == text.len()) {
            spans.pop();
        }
        // Literals: ASCII lowercasing keeps every byte offset (so their case folding is
        // ASCII only).
        if !self.literals.is_empty() {
            let lower = text.to_ascii_lowercase();
            for (lit, rule) in &self.literals {
                for (at, _) in lower.match_indices(lit.as_str()) {
                    out.push(GuardHit {
                        range: at..at + lit.len(),
                        rule: rule.clone(),
                    });
                    if !all {
                        break;
                    }
                }
            }
        }
        // Phrases: consecutive words, not across a sentence end or a line break.
        'starts: for start in 0..spans.len() {
            for phrase in &self.phrases {
                let n = phrase.words.len();
                let Some(run) = spans.get(start..start + n) else {
                    continue;
                };
                let joined = run
                    .windows(2)
                    .all(|w| !text[w[0].0.end..w[1].0.start].contains(['.', '!', '?', '\n']));
                let same = run
                    .iter()
                    .zip(&phrase.words)
                    .all(|((_, word), base)| inflects(word, base));
                if joined && same {
                    out.push(GuardHit {
                        range: run[0].0.start..run[n - 1].0.end,
                        rule: phrase.rule.clone(),
                    });
                    if !all {
                        break 'starts;
                    }
                }
            }
        }
        // Profanity: each word alone. rustrict's evasion checks, which join letters across
        // spaces and dots, read ordinary prose as rude words ("that's exactly", "forest.
        // It"); words judged before are not read again.
        if let Some(threshold) = self.profanity {
            for (r, _) in spans.iter().filter(|(r, _)| r.end > checked) {
                if rustrict::Censor::from_str(&text[r.clone()])
                    .analyze()
                    .is(threshold)
                {
                    out.push(GuardHit {
                        range: r.clone(),
                        rule: "profanity".into(),
                    });
                    if !all {
                        break;
                    }
                }
            }
        }
    }
}

impl TextGuard for ContentFilter {
    fn find(&self, text: &str, checked: usize, complete: bool) -> Option<GuardHit> {
        let mut hits = Vec::new();
        self.collect(text, checked, complete, &mut hits, false);
        hits.into_iter().min_by_key(|hit| hit.range.start)
    }

    fn settled(&self, text: &str) -> usize {
        let spans: Vec<(Range<usize>, String)> = words(text)
            .map(|(range, word)| (range, word.to_lowercase()))
            .collect();
        let open = spans.last().is_some_and(|(r, _)| r.end == text.len());
        let mut settled = text.len();
        if open {
            settled = spans.last().map_or(settled, |(r, _)| r.start);
        }
        // The start of a phrase that the next words could finish.
        for phrase in self.phrases.iter().filter(|p| p.words.len() > 1) {
            // Trailing words that could be the phrase's first ones (all of them while the
            // last word is unfinished).
            let most = phrase.words.len() - usize::from(!open);
            for j in 1..=most.min(spans.len()) {
                let tail = &spans[spans.len() - j..];
                let matches =
                    tail.iter()
                        .zip(&phrase.words)
                        .enumerate()
                        .all(|(i, ((_, word), base))| {
                            if open && i == j - 1 {
                                base.starts_with(word.as_str()) || inflects(word, base)
                            } else {
                                inflects(word, base)
                            }
                        });
                if matches {
                    settled = settled.min(tail[0].0.start);
                }
            }
        }
        // The start of a literal still being written.
        if !self.literals.is_empty() {
            let lower = text.to_ascii_lowercase();
            for (lit, _) in &self.literals {
                let from = lower.len().saturating_sub(lit.len() - 1);
                if let Some(at) = (from..lower.len())
                    .filter(|&i| lower.is_char_boundary(i))
                    .find(|&i| lit.starts_with(&lower[i..]))
                {
                    settled = settled.min(at);
                }
            }
        }
        settled
    }
}

/// The words of `text`: runs of letters and digits, with their byte ranges.
fn words(text: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        let (start, _) = rest.by_ref().find(|(_, c)| c.is_alphanumeric())?;
        let mut end = text.len();
        while let Some(&(i, c)) = rest.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            rest.next();
        }
        Some((start..end, &text[start..end]))
    })
}

/// Whether `word` is `base` or one of its regular inflections (`dragons`, `baking`,
/// `stabbed`, `cried`).
fn inflects(word: &str, base: &str) -> bool {
    const SUFFIXES: &[&str] = &["s", "es", "ed", "ing", "er", "ers", "est", "ly"];
    if word == base {
        return true;
    }
    // Short words inflect into other words (`ai`, `aid`; `on`, `only`): exact only.
    if base.chars().count() <= 2 {
        return false;
    }
    if let Some(rest) = word.strip_prefix(base) {
        if SUFFIXES.contains(&rest) {
            return true;
        }
        // A doubled last consonant: stab, stabbed.
        if let Some(last) = base.chars().last()
            && let Some(rest) = rest.strip_prefix(last)
        {
            return ["ed", "ing", "er", "ers"].contains(&rest);
        }
        return false;
    }
    // A dropped final e (bake, baking) or y (cry, cried).
    for (end, suffixes) in [
        ('e', &["ing", "ed", "er", "ers", "est"][..]),
        ('y', &["ies", "ied", "ier", "iest"][..]),
    ] {
        if let Some(stem) = base.strip_suffix(end)
            && !stem.is_empty()
            && let Some(rest) = word.strip_prefix(stem)
            && suffixes.contains(&rest)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banned(words: &[&str]) -> ContentFilter {
        ContentPolicy {
            banned: words.iter().map(|w| (*w).to_owned()).collect(),
            ..ContentPolicy::off()
        }
        .filter()
    }

    #[test]
    fn words_match_whole_in_any_case_and_inflection() {
        let f = banned(&["dragon", "bake", "stab", "cry"]);
        for hit in [
            "DRAGONS!",
            "She was baking.",
            "He stabbed it",
            "It cried out",
        ] {
            assert!(f.check(hit).is_some(), "{hit}");
        }
        for clean in ["Dragonfly", "snapdragon", "stable", "crypt"] {
            assert!(f.check(clean).is_none(), "{clean}");
        }
        let hit = f.check("Beware the dragon's lair").expect("a hit");
        assert_eq!(hit.range, 11..17);
        assert_eq!(hit.rule, "banned: dragon");
    }

    #[test]
    fn phrases_need_their_words_in_order() {
        let f = banned(&["the old king"]);
        assert!(f.check("Long live the old king.").is_some());
        assert!(f.check("The king is old.").is_none());
        assert!(f.check("the old, old king").is_none());
        // Not across a sentence end; short words are not inflected.
        let ooc = ContentPolicy::default().filter();
        assert!(
            ooc.check("They speak their own language. Model ships sail.")
                .is_none()
        );
        assert!(ooc.check("She came as an aid to the king.").is_none());
        assert!(ooc.check("Speak as an AI would.").is_some());
    }

    #[test]
    fn an_unfinished_word_is_held_and_judged_when_it_ends() {
        let f = banned(&["dragon", "the old king"]);
        // "drag" may become "dragon": it is not a hit yet, and not settled.
        assert!(f.find("Here be drag", 0, false).is_none());
        assert_eq!(f.settled("Here be drag"), 8);
        assert!(f.find("Here be dragon", 0, false).is_none());
        assert!(f.find("Here be dragon", 0, true).is_some());
        assert!(f.find("Here be dragon.", 0, false).is_some());
        // A phrase's first words wait for the rest.
        assert_eq!(f.settled("Hail the old "), 5);
        assert_eq!(f.settled("Hail the old k"), 5);
        assert_eq!(f.settled("Hail the cold "), 14);
    }

    #[test]
    fn markup_matches_anywhere_and_its_start_is_held() {
        let f = ContentPolicy::default().filter();
        assert!(f.check("Fine.<|im_end|>").is_some());
        assert_eq!(f.settled("Fine.<"), 5);
        assert!(f.check("As an AI language model, I").is_some());
        assert_eq!(
            f.check("I'm an AI.").map(|h| h.rule),
            Some("out of character: i'm an ai".into())
        );
        assert!(f.check("Aim at the <b>bold</b> man").is_none());
    }

    #[test]
    fn profanity_follows_the_level() {
        let mild = ContentPolicy {
            profanity: Profanity::Mild,
            ..ContentPolicy::off()
        }
        .filter();
        let severe = ContentPolicy {
            profanity: Profanity::Severe,
            ..ContentPolicy::off()
        }
        .filter();
        let hit = mild.check("Well, shit, the cart broke.").expect("profane");
        assert_eq!(hit.range, 6..10);
        assert!(
            mild.check("The smith mends your class assignment.")
                .is_none()
        );
        assert!(severe.check("Damn the rain.").is_none());
        assert!(mild.check("Damn the rain.").is_some());
        // The filter's evasion check reads "forest. It" as a rude word while the text could
        // still end there; it is judged once the word goes on.
        let moderate = ContentPolicy {
            profanity: Profanity::Moderate,
            ..ContentPolicy::off()
        }
        .filter();
        let text = "a long and dark forest. It's said to be cursed.";
        assert!(moderate.check(text).is_none());
        for end in (1..text.len()).filter(|&e| text.is_char_boundary(e)) {
            assert!(
                moderate.find(&text[..end], 0, false).is_none(),
                "{:?}",
                &text[..end]
            );
            assert!(moderate.settled(&text[..end]) <= end);
        }
        assert!(moderate.check("But that's exactly what I offer.").is_none());
        assert!(moderate.censor("Well, shit.").contains("****"));
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

    /// A stream under the default policy, pushing `pieces`; what it showed and whether a
    /// hit was reported or a stop string ended it.
    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool, bool) {
        use crate::engine::stream::TextStream;
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut s = TextStream::new(&stops).with_guard(ContentPolicy::default().guard());
        let (mut shown, mut hit, mut stopped) = (String::new(), false, false);
        for piece in pieces {
            let push = s.push(piece.as_bytes());
            shown.push_str(&push.delta);
            hit |= push.hit.is_some();
            stopped |= push.stopped;
            if hit || stopped {
                break;
            }
        }
        (shown, hit, stopped)
    }

    #[test]
    fn a_stop_string_holding_markup_still_stops() {
        let (shown, hit, stopped) = stream(&["</s>"], &["Fine", " then.", "</", "s", ">"]);
        assert!(stopped && !hit, "the stop ended the line, no rollback");
        assert_eq!(shown, "Fine then.");
    }

    #[test]
    fn wide_spaces_before_the_view_do_not_split_a_character() {
        // Past the lookback, the first whitespace is a narrow no-break space (3 bytes).
        let long = format!("{}\u{202f}et puis encore", "a".repeat(90));
        let words: Vec<String> = long.split_inclusive(' ').map(str::to_owned).collect();
        let mut pieces: Vec<&str> = words.iter().map(String::as_str).collect();
        pieces.extend([" la", " forge", " brille."]);
        let (shown, hit, _) = stream(&[], &pieces);
        assert!(!hit);
        assert!(shown.contains("la forge"), "{shown:?}");
    }

    #[test]
    fn censoring_hides_every_hit() {
        let f = banned(&["dragon", "gold"]);
        assert_eq!(f.censor("Gold! Dragons' gold!"), "****! *******' ****!");
        assert_eq!(f.censor("nothing here"), "nothing here");
    }
}
