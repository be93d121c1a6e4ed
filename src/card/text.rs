//! The text of a card as a persona's: `{{user}}`/`{{char}}` macros, sentences of a
//! description as phrases, and `mes_example` blocks as example exchanges and lines.

use crate::persona::ExampleExchange;

/// `text` with `{{user}}` and `<USER>` replaced by `player`.
pub fn resolve_user(text: &str, player: &str) -> String {
    replace_macro(text, &["{{user}}", "<USER>"], player)
}

/// `text` with `{{char}}` and `<BOT>` replaced by `name`.
pub(super) fn resolve_char(text: &str, name: &str) -> String {
    replace_macro(text, &["{{char}}", "<BOT>"], name)
}

/// Replaces each macro, case-insensitively (`{{Char}}` is common).
pub(super) fn replace_macro(text: &str, macros: &[&str], with: &str) -> String {
    let mut out = text.to_owned();
    for m in macros {
        let mut result = String::with_capacity(out.len());
        let lower = out.to_ascii_lowercase();
        let target = m.to_ascii_lowercase();
        let mut last = 0;
        for (at, _) in lower.match_indices(&target) {
            result.push_str(&out[last..at]);
            result.push_str(with);
            last = at + m.len();
        }
        result.push_str(&out[last..]);
        out = result;
    }
    out
}

/// The sentences of `text`, trimmed (a line break ends one too).
pub(super) fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            push_sentence(&mut sentences, &mut current);
            continue;
        }
        current.push(c);
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| n.is_whitespace()) {
            push_sentence(&mut sentences, &mut current);
        }
    }
    push_sentence(&mut sentences, &mut current);
    sentences
}

pub(super) fn push_sentence(sentences: &mut Vec<String>, current: &mut String) {
    let s = current.trim();
    if !s.is_empty() {
        sentences.push(s.to_owned());
    }
    current.clear();
}

/// The persona's description phrase from a card's first sentence: "Mira is the blacksmith
/// of Elmsbrook." → "the blacksmith of Elmsbrook"; a sentence in another shape is kept, its
/// end mark dropped.
pub(super) fn as_phrase(sentence: &str, name: &str) -> String {
    let s = sentence.trim().trim_end_matches(['.', '!', '?']);
    for lead in [
        format!("{name} is "),
        format!("{name} was "),
        "The ".to_owned(),
    ] {
        if let Some(rest) = s.strip_prefix(&lead) {
            return if lead == "The " {
                format!("the {rest}")
            } else {
                rest.to_owned()
            };
        }
    }
    s.to_owned()
}

/// A card's example conversations, in order: the character's lines that answer a
/// `{{user}}:` line (or `<USER>:`) of the same `<START>` block as exchanges, with what was
/// said (two such lines in a row are joined by a line break); its other lines alone. Lines
/// of neither speaker are skipped.
pub(super) fn examples(mes_example: &str, name: &str) -> (Vec<ExampleExchange>, Vec<String>) {
    let text = resolve_char(mes_example, name);
    let prefix = format!("{name}:");
    let user_line = |line: &str| {
        ["{{user}}:", "<user>:"].iter().find_map(|p| {
            line.get(..p.len())
                .filter(|head| head.eq_ignore_ascii_case(p))
                .map(|_| line[p.len()..].trim().to_owned())
        })
    };
    let (mut exchanges, mut lines) = (Vec::new(), Vec::new());
    let mut said: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line
            .get(..7)
            .is_some_and(|h| h.eq_ignore_ascii_case("<start>"))
        {
            said = None;
        } else if let Some(words) = user_line(line) {
            said = match said.take() {
                Some(before) if !words.is_empty() => Some(format!("{before}\n{words}")),
                Some(before) => Some(before),
                None => Some(words),
            };
        } else if let Some(reply) = line.strip_prefix(&prefix).map(str::trim) {
            if reply.is_empty() {
                continue;
            }
            match said.take().filter(|s| !s.is_empty()) {
                Some(said) => exchanges.push(ExampleExchange {
                    said,
                    reply: reply.to_owned(),
                }),
                None => lines.push(reply.to_owned()),
            }
        }
    }
    (exchanges, lines)
}

/// How many `{{char}}` and `<BOT>` macros the strings of `value` hold, as [`resolve_char`]
/// finds them (case-insensitively).
pub(super) fn macro_count(value: &serde_json::Value) -> usize {
    let mut count = 0usize;
    let mut todo = vec![value];
    while let Some(value) = todo.pop() {
        match value {
            serde_json::Value::String(s) => {
                let lower = s.to_ascii_lowercase();
                count += lower.matches("{{char}}").count() + lower.matches("<bot>").count();
            }
            serde_json::Value::Array(items) => todo.extend(items),
            serde_json::Value::Object(map) => todo.extend(map.values()),
            _ => {}
        }
    }
    count
}
