//! Word forms: the words of a text, normalized the way evasions are undone, with their byte
//! ranges; and whether one word is another's regular inflection. Both the policy (splitting
//! an entry) and the filter use them.
//!
//! A word is a run of letters and digits, lowercased, where
//! - format characters (a zero-width space, a soft hyphen, a joiner) count for nothing:
//!   `dra\u{200b}gon` is `dragon`;
//! - look-alike letters (Cyrillic, Greek, full-width, accented) are their Latin letter:
//!   `drаgon` with a Cyrillic `а` is `dragon`;
//! - `*`, `@` and `$` inside a word, and digits in a word with letters, are the letters they
//!   stand for (`@` a, `$` s, `0` o, `1` i, `3` e, `4` a, `5` s, `7` t; `*` any letter);
//! - three or more single letters joined by single spaces, dots, hyphens, underscores or
//!   stars are one word: `f u c k`, `d.r.a.g.o.n`.

use std::ops::Range;

/// The words of `text`, normalized (see the module), with the byte ranges they cover.
pub(super) fn words(text: &str) -> Vec<(Range<usize>, String)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut raw: Vec<(Range<usize>, String)> = Vec::new();
    let mut current: Option<(Range<usize>, String)> = None;
    for (k, &(i, c)) in chars.iter().enumerate() {
        if is_format(c) {
            continue;
        }
        let end = i + c.len_utf8();
        let letter = fold(c);
        let next_is_word = chars[k + 1..]
            .iter()
            .find(|(_, n)| !is_format(*n))
            .is_some_and(|(_, n)| fold(*n).is_some());
        // A masking symbol belongs to a word it is inside of (or that it starts).
        let masked = matches!(c, '*' | '@' | '$') && (current.is_some() || next_is_word);
        match (letter, masked, &mut current) {
            (Some(l), _, Some((range, word))) => {
                range.end = end;
                word.push(l);
            }
            (Some(l), _, None) => current = Some((i..end, l.to_string())),
            (None, true, Some((range, word))) => {
                range.end = end;
                word.push(c);
            }
            (None, true, None) => current = Some((i..end, c.to_string())),
            (None, false, _) => raw.extend(current.take()),
        }
    }
    raw.extend(current);
    for (_, word) in &mut raw {
        if word.chars().any(|c| c.is_alphabetic()) {
            *word = word.chars().map(unleet).collect();
        }
        // A star at the end is punctuation more often than a hidden letter.
        while word.len() > 1 && word.ends_with('*') {
            word.pop();
        }
    }
    join_spelled_out(text, raw)
}

/// Runs of three or more one-letter words, each joined to the next by one separator, as
/// one word.
fn join_spelled_out(text: &str, words: Vec<(Range<usize>, String)>) -> Vec<(Range<usize>, String)> {
    let single = |w: &(Range<usize>, String)| w.1.chars().count() == 1;
    let joined = |a: &(Range<usize>, String), b: &(Range<usize>, String)| {
        let gap: String = text[a.0.end..b.0.start]
            .chars()
            .filter(|c| !is_format(*c))
            .collect();
        gap.len() == 1 && SEPARATORS.contains(gap.as_str())
    };
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        while j < words.len()
            && single(&words[j - 1])
            && single(&words[j])
            && joined(&words[j - 1], &words[j])
        {
            j += 1;
        }
        if j - i >= 3 {
            let word: String = words[i..j].iter().map(|(_, w)| w.as_str()).collect();
            // "a d r a g o n": the article may lead the spelled-out word.
            if j - i >= 4 && (word.starts_with('a') || word.starts_with('i')) {
                out.push(words[i].clone());
                out.push((
                    words[i + 1].0.start..words[j - 1].0.end,
                    word[1..].to_owned(),
                ));
            }
            out.push((words[i].0.start..words[j - 1].0.end, word));
            i = j;
        } else {
            out.push(words[i].clone());
            i += 1;
        }
    }
    out
}

/// What may stand between the letters of a word spelled out.
const SEPARATORS: &str = " .-_*";

/// Where a text that may still grow could be spelling out a word (single letters joined
/// by separators at its end): the start of that run, if any.
pub(super) fn spelling_from(text: &str) -> Option<usize> {
    let chars: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| !is_format(*c))
        .collect();
    let separator = |c: char| SEPARATORS.contains(c);
    let mut k = chars.len();
    if k > 0 && separator(chars[k - 1].1) {
        k -= 1;
    }
    let mut start = None;
    while k > 0 {
        let (i, c) = chars[k - 1];
        // A letter alone: no letter or digit right before it.
        if fold(c).is_none() || (k >= 2 && fold(chars[k - 2].1).is_some()) {
            break;
        }
        start = Some(i);
        if k >= 2 && separator(chars[k - 2].1) {
            k -= 2;
        } else {
            break;
        }
    }
    start
}

/// Unicode format characters (category Cf) and variation selectors: invisible, and no
/// word break.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// A letter or digit, lowercased, with look-alikes folded to their Latin letter; `None`
/// for anything else.
fn fold(c: char) -> Option<char> {
    if c.is_ascii_alphanumeric() {
        return Some(c.to_ascii_lowercase());
    }
    if !c.is_alphanumeric() {
        return None;
    }
    // Full-width Latin letters and digits.
    if ('\u{ff10}'..='\u{ff5a}').contains(&c) {
        let ascii = char::from_u32(c as u32 - 0xfee0).filter(char::is_ascii_alphanumeric);
        if let Some(a) = ascii {
            return Some(a.to_ascii_lowercase());
        }
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    let latin = match lower {
        // Cyrillic.
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' | 'є' => 'e',
        'к' => 'k',
        'м' => 'm',
        'н' | 'һ' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' | 'ў' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'і' | 'ї' | 'ӏ' => 'i',
        'ј' => 'j',
        'ԁ' => 'd',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ɡ' => 'g',
        // Greek.
        'α' | 'ά' => 'a',
        'β' => 'b',
        'ε' | 'έ' => 'e',
        'η' | 'ή' => 'n',
        'ι' | 'ί' => 'i',
        'κ' => 'k',
        'μ' => 'u',
        'ν' => 'v',
        'ο' | 'ό' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' | 'ύ' => 'u',
        'χ' => 'x',
        'ζ' => 'z',
        // Latin with accents.
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' => 'i',
        'ñ' | 'ń' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' => 'u',
        'ý' | 'ÿ' => 'y',
        'ś' | 'š' => 's',
        'ž' | 'ź' => 'z',
        other => other,
    };
    Some(latin)
}

/// A digit or masking symbol in a word with letters, as the letter it stands for.
fn unleet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        other => other,
    }
}

/// Whether `word` (normalized, perhaps with `*` for hidden letters) is `base` or one of its
/// regular inflections (`dragons`, `baking`, `stabbed`, `cried`); a word with stars is
/// `base` when it has its length and the letters it shows are in place.
pub(super) fn matches(word: &str, base: &str) -> bool {
    if word.contains('*') {
        return word.chars().count() == base.chars().count()
            && word.chars().any(|c| c != '*')
            && word
                .chars()
                .zip(base.chars())
                .all(|(w, b)| w == '*' || w == b);
    }
    inflects(word, base)
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
