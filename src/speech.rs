//! Lines a voice can follow: a streamed line cut into whole sentences as soon as each is
//! complete ([`SentenceSplitter`]), for text-to-speech and lip-sync, which need sentences
//! rather than tokens. The plugin sends each as a `LineSentence`.
//!
//! A sentence ends after a run of terminal punctuation (`.` `!` `?` `…`) and any closing
//! quotes or brackets, when whitespace follows; after the full-width and
//! ideographic ends of Chinese and Japanese (`。` `！` `？` `｡`), the Devanagari danda (`।`
//! `॥`), the Arabic question mark (`؟`) and the Ethiopic full stop (`።`), which need no
//! space after them; and at a line break. Decimal points (`3.5`) and dots inside words end
//! nothing; abbreviations ("Mr. Smith") do, the safe mistake for a voice (a short pause).

/// Terminal punctuation that ends a sentence when whitespace follows.
fn is_spaced_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '‼' | '⁇' | '⁈' | '⁉')
}

/// Terminal punctuation of scripts written without spaces: ends a sentence by itself.
fn is_unspaced_terminal(c: char) -> bool {
    matches!(
        c,
        '。' | '！' | '？' | '｡' | '．' | '।' | '॥' | '؟' | '۔' | '።' | '፧' | '܂' | '჻'
    )
}

/// Characters that may close a sentence after its terminal punctuation.
fn is_closing(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '”'
            | '’'
            | ')'
            | ']'
            | '»'
            | '›'
            | '*'
            | '」'
            | '』'
            | '）'
            | '】'
            | '》'
            | '〉'
            | '〕'
            | '＂'
    )
}

/// Cuts a growing text into whole sentences. Feed it each new piece with
/// [`SentenceSplitter::push`], then call [`SentenceSplitter::finish`] for what is left.
///
/// ```
/// use bevy_llm_dialogue::speech::SentenceSplitter;
///
/// let mut split = SentenceSplitter::default();
/// assert!(split.push("Hello the").is_empty());
/// assert_eq!(split.push("re. How are"), ["Hello there."]);
/// assert_eq!(split.push(" you? 「はい。」"), ["How are you?"]);
/// assert_eq!(split.finish().as_deref(), Some("「はい。」"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct SentenceSplitter {
    /// Text not yet part of a finished sentence.
    pending: String,
    /// How much of `pending` is decided: no sentence can end before this offset, so the next
    /// push scans from here (a stream pushes every token; scanning the held sentence from its
    /// start each time would be quadratic in its length).
    scanned: usize,
}

impl SentenceSplitter {
    /// Adds `text` and returns the sentences it completes, trimmed, in order (none empty).
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        let (mut taken, mut from) = (0, self.scanned);
        while let Some(end) = next_end(&self.pending[from..]) {
            let end = from + end;
            let sentence = self.pending[taken..end].trim();
            if !sentence.is_empty() {
                out.push(sentence.to_owned());
            }
            (taken, from) = (end, end);
        }
        self.pending.drain(..taken);
        // Only a run of ends and closing marks at the very end is undecided: what follows it
        // tells whether it ends a sentence.
        let open: usize = self
            .pending
            .chars()
            .rev()
            .take_while(|&c| is_spaced_terminal(c) || is_unspaced_terminal(c) || is_closing(c))
            .map(char::len_utf8)
            .sum();
        self.scanned = self.pending.len() - open;
        out
    }

    /// The rest, once the text is complete: its last sentences (even without an end), or
    /// `None` if only whitespace is left. The splitter is empty afterwards.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        self.scanned = 0;
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    /// The text held back, not yet a whole sentence.
    pub fn pending(&self) -> &str {
        &self.pending
    }
}

/// The byte offset just past the first sentence end in `text`, if it is certain: an end
/// whose closing run reaches the end of `text` may still grow, so it waits for more.
fn next_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            return Some(i + 1);
        }
        let spaced = is_spaced_terminal(c);
        if !spaced && !is_unspaced_terminal(c) {
            continue;
        }
        let mut unspaced = !spaced;
        let mut end = None;
        while let Some(&(j, next)) = chars.peek() {
            if is_spaced_terminal(next) || is_unspaced_terminal(next) || is_closing(next) {
                unspaced |= is_unspaced_terminal(next);
                chars.next();
                continue;
            }
            end = Some(j);
            break;
        }
        let end = end?;
        if unspaced || text[end..].starts_with(char::is_whitespace) {
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sentence a text gives, fed in pieces of `size` characters.
    fn split_in_pieces(text: &str, size: usize) -> Vec<String> {
        let mut split = SentenceSplitter::default();
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for piece in chars.chunks(size) {
            out.extend(split.push(&piece.iter().collect::<String>()));
        }
        out.extend(split.finish());
        out
    }

    #[test]
    fn sentences_come_out_whole_however_the_text_is_cut() {
        let text = "Well... I never! \"Are you sure?\" she asked. It costs 3.5 coins (or so). End";
        let want = [
            "Well...",
            "I never!",
            "\"Are you sure?\"",
            "she asked.",
            "It costs 3.5 coins (or so).",
            "End",
        ];
        for size in [1, 2, 3, 7, 100] {
            assert_eq!(split_in_pieces(text, size), want, "pieces of {size}");
        }
    }

    #[test]
    fn scripts_without_spaces_end_sentences_at_their_own_marks() {
        let text = "今日は晴れです。散歩に行きましょう！「本当？」はい｡ 好的。";
        let want = [
            "今日は晴れです。",
            "散歩に行きましょう！",
            "「本当？」",
            "はい｡",
            "好的。",
        ];
        for size in [1, 2, 5, 100] {
            assert_eq!(split_in_pieces(text, size), want, "pieces of {size}");
        }
        assert_eq!(
            split_in_pieces("आप कैसे हैं। मैं ठीक हूँ।", 3),
            ["आप कैसे हैं।", "मैं ठीक हूँ।"]
        );
    }

    #[test]
    fn a_line_break_ends_a_sentence_and_blank_text_gives_none() {
        assert_eq!(
            split_in_pieces("First line\n\nSecond line", 4),
            ["First line", "Second line"]
        );
        assert!(split_in_pieces("   \n  ", 2).is_empty());
        let mut split = SentenceSplitter::default();
        assert!(split.push("Not done").is_empty());
        assert_eq!(split.pending(), "Not done");
    }

    #[test]
    fn an_end_waits_for_what_follows_it() {
        let mut split = SentenceSplitter::default();
        // The quote may close the sentence: nothing until a space shows it is over.
        assert!(split.push("He said \"Go.").is_empty());
        assert!(split.push("\"").is_empty());
        assert_eq!(split.push(" Then"), ["He said \"Go.\""]);
        // A dot followed by a letter is no end.
        assert!(split.push(" e.g").is_empty());
        assert_eq!(split.finish().as_deref(), Some("Then e.g"));
    }
}
