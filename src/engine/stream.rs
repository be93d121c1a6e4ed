//! Incremental detokenization for streaming: valid UTF-8 only, stop strings never leaked.

use std::time::{Duration, Instant};

use super::guard::{Guard, GuardHit};
use super::sentences::{SentenceEnds, ends_sentence, sentence_ends};

/// How far before the shown text a guard looks again, in bytes: a banned phrase may start in
/// text already shown and end in new text.
const GUARD_LOOKBACK: usize = 96;

/// Turns token bytes into text deltas.
///
/// Like llama.cpp's server, it holds back bytes that do not yet form a whole UTF-8 character
/// and any tail of the text that could be the start of a stop string. It also drops leading
/// whitespace and holds back trailing whitespace, so a line never starts or ends with blanks.
/// The deltas it returns always add up to [`TextStream::text`].
///
/// With a sentence limit it ends the text after that many sentences; while holding partial
/// sentences (near the end of a line's budget) it shows only whole sentences, so that
/// [`TextStream::finish_whole`] can end the text at a sentence end without taking back
/// anything already shown.
///
/// With a [`Guard`] it also holds back what the guard has not settled, and a push whose text
/// the guard flags shows nothing and reports the hit, for the caller to
/// [`rewind`](TextStream::rewind) to before it.
#[derive(Debug, Default)]
pub(crate) struct TextStream {
    pending: Vec<u8>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    max_sentences: Option<usize>,
    hold_partial: bool,
    guard: Option<Guard>,
    guard_time: Duration,
    /// How much would have been shown without the guard's holding back: at the end, that
    /// much stands (once checked), so a guard that finds nothing changes no text.
    unguarded: usize,
    /// The end of the text the guard has judged and settled: its words need no second look.
    judged: usize,
    /// The text's sentence ends, scanned as it grows.
    sentences: SentenceEnds,
    /// The length of the text when stop strings were last searched: only what is new (and
    /// a stop string's length before it) is searched again.
    stop_searched: usize,
}

/// Where a stream stood after a token: [`TextStream::mark`], for [`TextStream::rewind`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Mark {
    /// Length of the text.
    pub(crate) len: usize,
    /// Bytes of an unfinished character.
    pending: Vec<u8>,
}

impl Mark {
    /// Whether no unfinished character waits.
    pub(crate) fn pending_is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What one push produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Push {
    /// Text safe to show now (may be empty).
    pub delta: String,
    /// A stop string was completed; the text ends before it.
    pub stopped: bool,
    /// The sentence limit was reached; the text ends after the last sentence.
    pub sentences_done: bool,
    /// The guard flagged the text: nothing was shown and the text stays as it was, for the
    /// caller to rewind to before the hit.
    pub hit: Option<GuardHit>,
}

impl TextStream {
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Ends the text after `n` sentences.
    pub(crate) fn with_max_sentences(mut self, n: Option<usize>) -> Self {
        self.max_sentences = n.filter(|&n| n > 0);
        self
    }

    /// Checks the text with `guard` as it grows.
    pub(crate) fn with_guard(mut self, guard: Option<Guard>) -> Self {
        self.guard = guard;
        self
    }

    /// From now on, shows only whole sentences.
    pub(crate) fn hold_partial_sentences(&mut self) {
        self.hold_partial = true;
    }

    /// Bytes of text shown so far.
    pub(crate) fn emitted(&self) -> usize {
        self.emitted
    }

    /// Time spent in the guard's checks.
    pub(crate) fn guard_time(&self) -> Duration {
        self.guard_time
    }

    /// Where the stream stands now.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.text.len(),
            pending: self.pending.clone(),
        }
    }

    /// Goes back to `mark` (taken earlier, at or after the end of what was shown).
    pub(crate) fn rewind(&mut self, mark: &Mark) {
        debug_assert!(mark.len >= self.emitted && mark.len <= self.text.len());
        self.cut(mark.len.max(self.emitted));
        self.pending.clone_from(&mark.pending);
        self.unguarded = self.unguarded.min(self.text.len()).max(self.emitted);
        self.judged = self.judged.min(self.text.len());
    }

    /// The guard's first hit in the text up to `end`, ignoring hits that lie wholly in what
    /// was already shown (nothing can be done about those).
    fn check(&mut self, end: usize, complete: bool) -> Option<GuardHit> {
        let guard = self.guard.as_ref()?;
        let started = Instant::now();
        let mut from = self.lookback();
        let seen = self.judged.max(self.emitted);
        let mut hit = None;
        // A hit wholly in shown text (a word cut by the view's start) is passed over; the
        // search goes on after it.
        while from < end {
            let checked = seen.saturating_sub(from).min(end - from);
            let Some(found) = guard.check().find(&self.text[from..end], checked, complete) else {
                break;
            };
            let range = found.range.start + from..found.range.end + from;
            if range.end > self.emitted {
                hit = Some(GuardHit { range, ..found });
                break;
            }
            from = range.end;
        }
        self.guard_time += started.elapsed();
        hit
    }

    /// Where the guard's view starts: a little before the shown text, at a word start.
    fn lookback(&self) -> usize {
        let mut from = self.emitted.saturating_sub(GUARD_LOOKBACK);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        if from > 0
            && let Some((i, space)) = self.text[from..self.emitted]
                .char_indices()
                .find(|(_, c)| c.is_whitespace())
        {
            from += i + space.len_utf8();
        }
        from
    }

    /// The end of what the guard has settled.
    fn guard_settled(&mut self) -> usize {
        let Some(guard) = self.guard.as_ref() else {
            return self.text.len();
        };
        let started = Instant::now();
        let from = self.lookback();
        let settled = from + guard.check().settled(&self.text[from..]);
        self.guard_time += started.elapsed();
        settled
    }

    /// Ends the text before the guard's first hit in it, now that no more text follows.
    /// Returns the hit.
    fn cut_final_hit(&mut self) -> Option<GuardHit> {
        let hit = self.check(self.text.len(), true)?;
        self.cut(hit.range.start.max(self.emitted));
        Some(hit)
    }

    /// The guard's hit in the whole text, as it would end now (before an end of turn).
    pub(crate) fn final_hit(&mut self) -> Option<GuardHit> {
        let end = self.text.trim_end().len().max(self.emitted);
        self.check(end, true)
    }

    /// Adds the bytes of one token.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Push {
        self.pending.extend_from_slice(bytes);
        self.drain_utf8();
        let mut push = Push {
            delta: String::new(),
            stopped: false,
            sentences_done: false,
            hit: None,
        };
        if self.text.is_empty() {
            // Nothing shown yet: leading whitespace is dropped.
            return push;
        }
        if let Some(at) = self.find_stop() {
            let end = self.text[..at].trim_end().len().max(self.emitted);
            if let Some(hit) = self.check(end, true) {
                push.hit = Some(hit);
                return push;
            }
            self.cut(at);
            push.delta = self.flush_to(self.text.trim_end().len());
            self.cut(self.emitted);
            push.stopped = true;
            return push;
        }
        // The sentence ends serve both the limit and the holding back; only the new text is
        // scanned for them.
        if self.max_sentences.is_some() || self.hold_partial {
            self.sentences.update(&self.text);
        }
        if let Some(n) = self.max_sentences
            && let Some(&end) = self.sentences.ends().get(n - 1)
        {
            let end = end.max(self.emitted);
            if let Some(hit) = self.check(end, true) {
                push.hit = Some(hit);
                return push;
            }
            self.cut(end);
            push.delta = self.flush_to(end);
            push.sentences_done = true;
            return push;
        }
        // A hit inside the start of a stop string is not shown either way: the stop cuts it
        // (a stop such as `</s>` holds out-of-character markup).
        if let Some(hit) = self
            .check(self.text.len(), false)
            .filter(|hit| hit.range.start < self.stop_prefix_start())
        {
            push.hit = Some(hit);
            return push;
        }
        // What the guard has not settled is held back like a stop string's start (and so is
        // the whitespace before it).
        let settled = self.guard_settled();
        let mut safe = self.safe_end();
        if self.hold_partial {
            let whole = self.sentences.ends().last().copied().unwrap_or(0);
            safe = safe.min(whole).max(self.emitted);
        }
        self.unguarded = self.unguarded.max(safe);
        self.judged = self.judged.max(settled);
        if settled < safe {
            safe = if self.hold_partial {
                // Still whole sentences only: the last one that ends before the held part.
                self.sentences
                    .ends()
                    .iter()
                    .copied()
                    .rfind(|&e| e <= settled)
                    .unwrap_or(0)
                    .max(self.emitted)
            } else {
                self.text[..settled].trim_end().len().max(self.emitted)
            };
        }
        push.delta = self.flush_to(safe);
        push
    }

    /// Ends the stream at the last sentence end: a partial sentence that was held back is
    /// dropped. If what was already shown ends mid-sentence (no sentence ended while partial
    /// sentences were held), the text trails off with `…` instead. Returns the last delta.
    pub(crate) fn finish_whole(&mut self) -> String {
        self.pending.clear();
        self.cut_final_hit();
        let whole = sentence_ends(&self.text, true).last().copied().unwrap_or(0);
        let end = whole
            .max(self.emitted)
            .max(self.unguarded.min(self.text.len()));
        self.cut(end);
        let mut delta = self.finish();
        if !self.text.is_empty() && !ends_sentence(&self.text) {
            self.text.push('…');
            delta.push_str(&self.flush_to(self.text.len()));
        }
        delta
    }

    /// Ends the stream: returns what was held back, minus trailing whitespace and any
    /// incomplete UTF-8.
    pub(crate) fn finish(&mut self) -> String {
        self.pending.clear();
        self.cut_final_hit();
        let end = self.text.trim_end().len();
        let delta = self.flush_to(end);
        self.cut(end);
        delta
    }

    /// Cuts the text to `len` bytes, and what is known about it.
    fn cut(&mut self, len: usize) {
        self.text.truncate(len);
        self.sentences.truncate(self.text.len());
        self.stop_searched = self.stop_searched.min(self.text.len());
    }

    /// All text emitted so far.
    pub(crate) fn text(&self) -> &str {
        &self.text[..self.emitted]
    }

    fn flush_to(&mut self, end: usize) -> String {
        if end <= self.emitted {
            return String::new();
        }
        let delta = self.text[self.emitted..end].to_owned();
        self.emitted = end;
        delta
    }

    /// Moves the longest valid UTF-8 prefix of `pending` into `text`; invalid bytes become
    /// U+FFFD, an incomplete character at the end waits for the next token.
    fn drain_utf8(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    let s = if self.text.is_empty() {
                        s.trim_start()
                    } else {
                        s
                    };
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let s = std::str::from_utf8(&self.pending[..valid]).unwrap_or_default();
                    let s = if self.text.is_empty() {
                        s.trim_start()
                    } else {
                        s
                    };
                    self.text.push_str(s);
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The first stop string in the text not yet shown. A stop string found earlier would
    /// have ended the text: one can only end in what is new since the last search.
    fn find_stop(&mut self) -> Option<usize> {
        let longest = self.longest_stop();
        let mut search_from = self
            .stop_searched
            .saturating_sub(longest.saturating_sub(1))
            .max(self.emitted)
            .min(self.text.len());
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        self.stop_searched = self.text.len();
        self.stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min()
    }

    /// Bytes of the longest stop string.
    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Where a suffix that may be the start of a stop string begins (the text's end if none).
    fn stop_prefix_start(&self) -> usize {
        let mut start = self.text.len();
        // Such a suffix is shorter than the stop string: only the text's tail is looked at.
        let mut from = self
            .text
            .len()
            .saturating_sub(self.longest_stop())
            .max(self.emitted);
        while !self.text.is_char_boundary(from) {
            from += 1;
        }
        for stop in &self.stops {
            for (i, _) in self.text[from..].char_indices() {
                let at = from + i;
                if stop.starts_with(&self.text[at..]) {
                    start = start.min(at);
                    break;
                }
            }
        }
        start
    }

    /// The end of the text that can be shown: before any suffix that starts a stop string,
    /// and before trailing whitespace.
    fn safe_end(&self) -> usize {
        let end = self.stop_prefix_start();
        end.min(self.text[..end].trim_end().len()).max(self.emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], stops: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let mut deltas = Vec::new();
        let mut stopped = false;
        for c in chunks {
            let p = s.push(c);
            deltas.push(p.delta);
            if p.stopped {
                stopped = true;
                break;
            }
        }
        deltas.push(s.finish());
        assert_eq!(deltas.concat(), s.text());
        (deltas, s.text().to_owned(), stopped)
    }

    #[test]
    fn split_emoji_is_held_until_complete() {
        let crab = "🦀".as_bytes();
        let (deltas, text, _) = run(&[b"a", &crab[..2], &crab[2..], b"b"], &[]);
        assert_eq!(text, "a🦀b");
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        assert_eq!(deltas[1], "");
    }

    #[test]
    fn partial_stop_string_is_held_then_released() {
        let (deltas, text, stopped) = run(&[b"Hi ", b"EN", b"Dless"], &["ENDX"]);
        assert!(!stopped);
        assert_eq!(text, "Hi ENDless");
        assert!(!deltas[1].contains("EN"));
    }

    #[test]
    fn stop_string_ends_the_text_before_it() {
        let (deltas, text, stopped) =
            run(&[b"Hello", b" wor", b"ld\nPl", b"ayer: hi"], &["\nPlayer:"]);
        assert!(stopped);
        assert_eq!(text, "Hello world");
        assert!(deltas.iter().all(|d| !d.contains('\n')));
    }

    #[test]
    fn whitespace_is_trimmed_at_both_ends() {
        let (_, text, _) = run(&[b"  ", b"\n hi", b" there", b"  \n"], &[]);
        assert_eq!(text, "hi there");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (_, text, _) = run(&[b"a\xff", b"b"], &[]);
        assert_eq!(text, "a\u{FFFD}b");
    }

    #[test]
    fn a_sentence_limit_ends_the_text_after_that_sentence() {
        let mut s = TextStream::new(&[]).with_max_sentences(Some(2));
        let mut shown = String::new();
        let mut done = false;
        for piece in ["Steel", " bends.", " Fire", " burns!", " And", " then"] {
            let push = s.push(piece.as_bytes());
            shown.push_str(&push.delta);
            if push.sentences_done {
                done = true;
                break;
            }
        }
        assert!(done);
        assert_eq!(shown, "Steel bends. Fire burns!");
        assert_eq!(s.text(), shown);
    }

    #[test]
    fn a_long_stream_is_scanned_once_not_once_a_token() {
        // 100,000 parts (a server that streams far past its `max_tokens`): scanning the
        // whole text for sentence ends and stop strings after each part took tens of
        // seconds; each byte once takes milliseconds.
        let mut s = TextStream::new(&["\nPlayer:".into()]).with_max_sentences(Some(1 << 20));
        s.hold_partial_sentences();
        let started = Instant::now();
        let mut shown = String::new();
        for _ in 0..50_000 {
            shown.push_str(&s.push(b"Aye, ").delta);
            shown.push_str(&s.push(b"done. ").delta);
        }
        shown.push_str(&s.push(b"And a").delta);
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "{elapsed:?} for 100,000 parts"
        );
        assert_eq!(
            shown.len(),
            50_000 * 11 - 1,
            "whole sentences shown, the last held"
        );
        shown.push_str(&s.finish_whole());
        assert_eq!(s.text(), shown);
        assert!(
            shown.ends_with("Aye, done."),
            "{}",
            &shown[shown.len() - 20..]
        );
    }

    #[test]
    fn stop_strings_split_across_parts_are_found_after_a_long_text() {
        let mut s = TextStream::new(&["\nPlayer:".into()]);
        let mut shown = String::new();
        for _ in 0..1_000 {
            shown.push_str(&s.push("Ça va. ".as_bytes()).delta);
        }
        let mut stopped = false;
        for piece in ["Fin.\nPl", "ay", "er: no"] {
            let push = s.push(piece.as_bytes());
            shown.push_str(&push.delta);
            stopped |= push.stopped;
        }
        assert!(stopped);
        assert!(
            shown.ends_with("Ça va. Fin."),
            "{}",
            &shown[shown.len() - 20..]
        );
        assert_eq!(s.text(), shown);
    }

    #[test]
    fn holding_partial_sentences_lets_the_end_drop_them() {
        let mut s = TextStream::new(&[]);
        let mut shown = String::new();
        shown.push_str(&s.push(b"Steel bends.").delta);
        s.hold_partial_sentences();
        for piece in [" Fire", " burns", " and"] {
            shown.push_str(&s.push(piece.as_bytes()).delta);
        }
        assert_eq!(shown, "Steel bends.", "the partial sentence is held back");
        shown.push_str(&s.finish_whole());
        assert_eq!(shown, "Steel bends.");
        assert_eq!(s.text(), shown);

        // Nothing whole to fall back on: what was shown trails off.
        let mut s = TextStream::new(&[]);
        let mut shown = s.push(b"Steel and fire and").delta;
        shown.push_str(&s.finish_whole());
        assert_eq!(shown, "Steel and fire and…");
        assert_eq!(s.text(), shown);
    }
}
