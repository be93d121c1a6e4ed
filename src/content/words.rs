//! Word forms: the words of a text with their byte ranges, and whether one word is another's
//! regular inflection. Both the policy (splitting an entry) and the filter use them.

use std::ops::Range;

/// The words of `text`: runs of letters and digits, with their byte ranges.
pub(super) fn words(text: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
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
pub(super) fn inflects(word: &str, base: &str) -> bool {
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
