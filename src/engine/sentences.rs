//! Where sentences end, so that a line can stop after a number of sentences and never stop in
//! the middle of one.
//!
//! A sentence ends after `.`, `!`, `?` or `…` (a run of them, then any closing quotes or
//! brackets) when whitespace follows. At the very end of a finished text no whitespace is
//! needed. Abbreviations ("Mr.") count as ends: for a game line that is the safe mistake.

/// Characters that end a sentence.
fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

/// Characters that may close a sentence after its terminal punctuation.
fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '»' | '*')
}

/// Byte offsets just past each sentence end in `text`. With `finished`, the end of the text
/// counts as followed by whitespace.
pub(crate) fn sentence_ends(text: &str, finished: bool) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if !is_terminal(c) {
            continue;
        }
        let mut end = text.len();
        while let Some(&(i, next)) = chars.peek() {
            if is_terminal(next) || is_closing(next) {
                chars.next();
                continue;
            }
            end = i;
            break;
        }
        let followed_by_space = text[end..].starts_with(char::is_whitespace);
        if followed_by_space || (end == text.len() && finished) {
            ends.push(end);
        }
    }
    ends
}

/// The sentence ends of a growing text, as [`sentence_ends`] finds them without `finished`,
/// each character scanned once however often the text grows: a stream asks after every
/// token, and a scan of the whole text each time is quadratic in the line's length.
#[derive(Clone, Debug, Default)]
pub(crate) struct SentenceEnds {
    ends: Vec<usize>,
    /// Where the next scan starts: no sentence's closing run reaches back before it.
    scanned: usize,
}

impl SentenceEnds {
    /// The ends in `text`: the text of the last call with more at its end, or one cut by
    /// [`SentenceEnds::truncate`] since.
    pub(crate) fn update(&mut self, text: &str) -> &[usize] {
        if self.scanned > text.len() || !text.is_char_boundary(self.scanned) {
            self.truncate(text.len());
        }
        let from = self.scanned;
        let mut resume = text.len();
        let mut chars = text[from..].char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if !is_terminal(c) {
                continue;
            }
            let mut end = None;
            while let Some(&(i, next)) = chars.peek() {
                if is_terminal(next) || is_closing(next) {
                    chars.next();
                    continue;
                }
                end = Some(from + i);
                break;
            }
            // A run that reaches the end may still grow: scan it again next time.
            let Some(end) = end else {
                resume = from + start;
                break;
            };
            if text[end..].starts_with(char::is_whitespace) {
                self.ends.push(end);
            }
        }
        self.scanned = resume;
        &self.ends
    }

    /// The ends found so far (as of the last [`SentenceEnds::update`]).
    pub(crate) fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// The text was cut to `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        // An end at the cut no longer has whitespace after it.
        self.ends.retain(|&end| end < len);
        // The last end kept is followed by whitespace: no run reaches back past it.
        self.scanned = self.scanned.min(self.ends.last().copied().unwrap_or(0));
    }
}

/// Whether `text`, trimmed, ends a sentence.
pub fn ends_sentence(text: &str) -> bool {
    let text = text.trim_end();
    !text.is_empty() && sentence_ends(text, true).last() == Some(&text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_need_whitespace_unless_the_text_is_finished() {
        let text = "Steel bends. Does it? \"Aye!\" Mr. Smith… And then";
        let ends: Vec<&str> = sentence_ends(text, false)
            .into_iter()
            .map(|e| &text[..e])
            .collect();
        assert_eq!(
            ends,
            [
                "Steel bends.",
                "Steel bends. Does it?",
                "Steel bends. Does it? \"Aye!\"",
                "Steel bends. Does it? \"Aye!\" Mr.",
                "Steel bends. Does it? \"Aye!\" Mr. Smith…",
            ]
        );
        assert_eq!(sentence_ends("It is 3.5 feet.", false), Vec::<usize>::new());
        assert_eq!(sentence_ends("It is 3.5 feet.", true), vec![15]);
    }

    #[test]
    fn ends_found_as_the_text_grows_are_the_ends_of_the_whole_text() {
        let text = "Steel bends. Does it?! \"Aye!\" Mr. Smith…  And 3.5 feet?) Then… x.";
        // Every split into a growing text, one or two characters at a time, and cuts back.
        for step in 1..=3 {
            let mut ends = SentenceEnds::default();
            let mut grown = String::new();
            for (i, c) in text.chars().enumerate() {
                grown.push(c);
                if i % step == 0 {
                    assert_eq!(
                        ends.update(&grown),
                        sentence_ends(&grown, false),
                        "{grown:?}"
                    );
                }
                if i % 11 == 10 {
                    let cut = grown.char_indices().nth(i / 2).map_or(0, |(at, _)| at);
                    grown.truncate(cut);
                    ends.truncate(cut);
                    assert_eq!(
                        ends.update(&grown),
                        sentence_ends(&grown, false),
                        "{grown:?}"
                    );
                    grown = text.chars().take(i + 1).collect();
                }
            }
            assert_eq!(ends.update(&grown), sentence_ends(text, false));
        }
    }

    #[test]
    fn a_line_ends_a_sentence_only_with_its_punctuation() {
        assert!(ends_sentence("Go home, friend.  "));
        assert!(ends_sentence("\"Go home!\""));
        assert!(ends_sentence("Well…"));
        assert!(!ends_sentence("Go home and I've"));
        assert!(!ends_sentence(""));
    }
}
