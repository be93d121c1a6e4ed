//! [`ContentFilter`]: a policy's rules, ready to check text, finished or still streaming
//! (the [`TextGuard`] the generator enforces), and to censor it.

use super::words::{matches, spelling_from, words};
use crate::engine::{GuardHit, TextGuard};

/// A banned phrase, as lowercase words.
#[derive(Clone, Debug)]
pub(super) struct Phrase {
    pub(super) words: Vec<String>,
    pub(super) rule: String,
}

/// A [`ContentPolicy`]'s rules, ready to check text ([`ContentPolicy::filter`]). It is the
/// [`TextGuard`] the generator enforces.
///
/// [`ContentPolicy`]: crate::content::ContentPolicy
/// [`ContentPolicy::filter`]: crate::content::ContentPolicy::filter
#[derive(Clone, Debug)]
pub struct ContentFilter {
    pub(super) phrases: Vec<Phrase>,
    /// Lowercase (ASCII) strings matched anywhere.
    pub(super) literals: Vec<(String, String)>,
    pub(super) profanity: Option<rustrict::Type>,
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
        let mut spans = words(text);
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
                    .all(|((_, word), base)| matches(word, base));
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
        // Profanity: each word alone, as written and normalized (a word spelled out with
        // spaces, look-alike letters, hidden characters). rustrict's evasion checks across
        // words read ordinary prose as rude words ("that's exactly", "forest. It"); words
        // judged before are not read again.
        if let Some(threshold) = self.profanity {
            let rude = |word: &str| rustrict::Censor::from_str(word).analyze().is(threshold);
            for (r, word) in spans.iter().filter(|(r, _)| r.end > checked) {
                if rude(&text[r.clone()]) || rude(word) {
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
        let spans = words(text);
        let open = spans.last().is_some_and(|(r, _)| r.end == text.len());
        let mut settled = text.len();
        if open {
            settled = spans.last().map_or(settled, |(r, _)| r.start);
        }
        // Single letters that more could join into a spelled-out word.
        if let Some(from) = spelling_from(text) {
            settled = settled.min(from);
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
                                base.starts_with(word.as_str()) || matches(word, base)
                            } else {
                                matches(word, base)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{ContentPolicy, Profanity};

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
    fn evasions_are_undone_before_matching() {
        let f = banned(&["dragon"]);
        for evasion in [
            "a d r a g o n!",
            "d.r.a.g.o.n",
            "d-r-a-g-o-n",
            "dra\u{200b}gon",
            "dra\u{ad}gon",
            "dr\u{430}gon",
            "DR\u{391}GON",
            "dr@gon",
            "dr4g0n",
            "dr*gon",
            "\u{ff44}\u{ff52}\u{ff41}\u{ff47}\u{ff4f}\u{ff4e}",
        ] {
            assert!(f.check(evasion).is_some(), "{evasion:?}");
        }
        // An entry written with look-alikes is the same word.
        assert!(banned(&["dr\u{430}gon"]).check("a dragon").is_some());
        for clean in [
            "I'm a bard, and I am at a loss.",
            "A. B. Smith came by.",
            "It is 4 o'clock; the drag racing starts.",
            "Options: a, b, c.",
        ] {
            assert!(f.check(clean).is_none(), "{clean:?}");
        }
        assert_eq!(f.censor("a d r a g o n!"), "a ***********!");
        // Letters spelling a word out are held while more could join them.
        assert_eq!(f.settled("Look, d r a"), 6);
        assert_eq!(f.settled("Look, d r a "), 6);
        assert_eq!(f.settled("Look, a dog. "), 13);
        let mild = ContentPolicy {
            profanity: Profanity::Mild,
            ..ContentPolicy::off()
        }
        .filter();
        for evasion in [
            "Oh, f*ck.",
            "Oh, f.u.c.k.",
            "Oh, f u c k!",
            "Oh, fu\u{200b}ck.",
            "Oh, fu\u{441}k.",
            "Oh, sh1t.",
        ] {
            assert!(mild.check(evasion).is_some(), "{evasion:?}");
        }
        assert!(mild.check("Oh, fudge. Such luck.").is_none());
    }

    #[test]
    fn censoring_hides_every_hit() {
        let f = banned(&["dragon", "gold"]);
        assert_eq!(f.censor("Gold! Dragons' gold!"), "****! *******' ****!");
        assert_eq!(f.censor("nothing here"), "nothing here");
    }
}
