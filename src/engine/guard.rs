//! Checks on generated text that the decoder enforces while it generates: a hit is caught
//! as it forms, the tokens that made it are taken back and others are sampled instead, so
//! the text that streams out never holds it.
//!
//! The engine knows only the [`TextGuard`] trait; [`crate::content::ContentFilter`] is the
//! implementation games use (banned phrases, profanity, out-of-character phrases).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A check on text as it is generated.
///
/// The decoder calls [`find`](TextGuard::find) after every token on the text not yet shown
/// (and a little before it) and shows only what [`settled`](TextGuard::settled) allows, so
/// a hit is found before any of it reaches a [`Delta`](super::Delta).
pub trait TextGuard: Send + Sync + fmt::Debug {
    /// The first hit in `text`, if any. While `complete` is false more text may follow, so a
    /// word at the very end may be unfinished; it is judged once it ends. The first
    /// `checked` bytes were judged before (the decoder has shown them): a check whose rules
    /// look at one word at a time may skip the words that end there.
    fn find(&self, text: &str, checked: usize, complete: bool) -> Option<GuardHit>;

    /// The length of the start of `text` that no text added after it can turn into a hit:
    /// the rest (an unfinished word, the start of a banned phrase) is held back.
    fn settled(&self, text: &str) -> usize;
}

/// Two checks as one: the first hit of either, and what both have settled.
impl<A: TextGuard, B: TextGuard> TextGuard for (A, B) {
    fn find(&self, text: &str, checked: usize, complete: bool) -> Option<GuardHit> {
        let a = self.0.find(text, checked, complete);
        let b = self.1.find(text, checked, complete);
        [a, b]
            .into_iter()
            .flatten()
            .min_by_key(|hit| hit.range.start)
    }

    fn settled(&self, text: &str) -> usize {
        self.0.settled(text).min(self.1.settled(text))
    }
}

/// Where a [`TextGuard`] found something, and which of its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardHit {
    /// Byte range of the offending text.
    pub range: Range<usize>,
    /// The rule, for logs and [`LineFiltered`](crate::plugin::LineFiltered): `banned: dragon`.
    pub rule: String,
}

/// The most times one generation may take text back ([`Guard::new`] clamps to it; each
/// rollback costs about one forward pass, and all of them together at most `max_tokens`).
pub const MAX_ROLLBACKS: usize = 16;

/// A [`TextGuard`] and how many times one generation may take text back before it ends
/// ([`StopReason::Filtered`](super::StopReason::Filtered)). Set it in
/// [`GenerateParams::guard`](super::GenerateParams::guard).
#[derive(Clone)]
pub struct Guard {
    check: Arc<dyn TextGuard>,
    max_rollbacks: usize,
}

impl Guard {
    /// Enforces `check`, taking text back at most `max_rollbacks` times per generation
    /// ([`MAX_ROLLBACKS`] at most: more is clamped).
    pub fn new(check: impl TextGuard + 'static, max_rollbacks: usize) -> Self {
        Self {
            check: Arc::new(check),
            max_rollbacks: max_rollbacks.min(MAX_ROLLBACKS),
        }
    }

    /// The check.
    pub fn check(&self) -> &dyn TextGuard {
        &*self.check
    }

    /// How many times one generation may take text back.
    pub fn max_rollbacks(&self) -> usize {
        self.max_rollbacks
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("check", &self.check)
            .field("max_rollbacks", &self.max_rollbacks)
            .finish()
    }
}

/// Two guards are equal when they share one check (parameters compare by identity).
impl PartialEq for Guard {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.check, &other.check) && self.max_rollbacks == other.max_rollbacks
    }
}
