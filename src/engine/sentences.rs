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
    fn a_line_ends_a_sentence_only_with_its_punctuation() {
        assert!(ends_sentence("Go home, friend.  "));
        assert!(ends_sentence("\"Go home!\""));
        assert!(ends_sentence("Well…"));
        assert!(!ends_sentence("Go home and I've"));
        assert!(!ends_sentence(""));
    }
}
