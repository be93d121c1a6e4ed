//! Incremental detokenization for streaming: valid UTF-8 only, stop strings never leaked.

/// Turns token bytes into text deltas.
///
/// Like llama.cpp's server, it holds back bytes that do not yet form a whole UTF-8 character
/// and any tail of the text that could be the start of a stop string. It also drops leading
/// whitespace and holds back trailing whitespace, so a line never starts or ends with blanks.
/// The deltas it returns always add up to [`TextStream::text`].
#[derive(Debug, Default)]
pub(crate) struct TextStream {
    pending: Vec<u8>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
}

/// What one push produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Push {
    /// Text safe to show now (may be empty).
    pub delta: String,
    /// A stop string was completed; the text ends before it.
    pub stopped: bool,
}

impl TextStream {
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Adds the bytes of one token.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Push {
        self.pending.extend_from_slice(bytes);
        self.drain_utf8();
        if self.text.is_empty() {
            // Nothing shown yet: leading whitespace is dropped.
            return Push {
                delta: String::new(),
                stopped: false,
            };
        }
        if let Some(at) = self.find_stop() {
            self.text.truncate(at);
            let delta = self.flush_to(self.text.trim_end().len());
            self.text.truncate(self.emitted);
            return Push {
                delta,
                stopped: true,
            };
        }
        let safe = self.safe_end();
        Push {
            delta: self.flush_to(safe),
            stopped: false,
        }
    }

    /// Ends the stream: returns what was held back, minus trailing whitespace and any
    /// incomplete UTF-8.
    pub(crate) fn finish(&mut self) -> String {
        self.pending.clear();
        let end = self.text.trim_end().len();
        let delta = self.flush_to(end);
        self.text.truncate(end);
        delta
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

    fn find_stop(&self) -> Option<usize> {
        let search_from = self.emitted;
        self.stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min()
    }

    /// The end of the text that can be shown: before any suffix that starts a stop string,
    /// and before trailing whitespace.
    fn safe_end(&self) -> usize {
        let mut end = self.text.len();
        for stop in &self.stops {
            for (i, _) in self.text[self.emitted..].char_indices() {
                let at = self.emitted + i;
                let tail = &self.text[at..];
                if stop.starts_with(tail) {
                    end = end.min(at);
                    break;
                }
            }
        }
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
}
