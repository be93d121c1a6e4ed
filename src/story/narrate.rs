//! Writing a scene the way a small chat model writes well: the scene as prose first (free
//! text that ends at a line break, in whole sentences), then its choices as a plain list
//! under a grammar, one short action per line. Structure stays guaranteed (exactly the asked
//! number of choices, each a few words); the words are the model's own.

use crate::engine::{GenerateParams, Grammar};

/// The turn that asks for `n` choices after a scene.
pub fn choices_ask(n: usize) -> String {
    format!("What can the player do now? Give {n} short actions, one per line.")
}

/// The most sentences in a scene (the brief asks for two or three).
pub const SCENE_SENTENCES: usize = 3;

/// Tokens for one choice line: a dash, up to eight words, a line break.
const TOKENS_PER_CHOICE: usize = 20;

/// The grammar of `n` choices: lines `- Word word ...`, each starting with a capital
/// letter, one to eight words of letters (an apostrophe only in English endings:
/// `stranger's`, `don't`, `you'll`), no closing punctuation.
pub fn choice_list_grammar(n: usize) -> Grammar {
    let line = format!("- {}", choice_pattern());
    let n = n.max(1);
    Grammar::regex(&format!("({line}\\n){{{}}}{line}", n - 1))
}

/// One choice: a capital letter, one to eight words of letters (an apostrophe only in
/// English endings), no closing punctuation.
fn choice_pattern() -> String {
    let word = "[A-Za-z][a-z]{0,13}('(s|t|d|m|ll|re|ve))?";
    format!("[A-Z][a-z]{{1,13}}( {word}){{0,7}}")
}

/// The same `n` choices as a JSON schema, for inference servers, which constrain output by
/// schema: an array of exactly `n` strings, each one choice without its dash.
/// [`choice_list_from_json`] turns the server's answer into the list
/// [`choice_list_grammar`] describes.
pub fn choice_list_schema(n: usize) -> serde_json::Value {
    let n = n.max(1);
    serde_json::json!({
        "type": "array",
        "items": { "type": "string", "pattern": format!("^{}$", choice_pattern()) },
        "minItems": n,
        "maxItems": n,
    })
}

/// The `- Choice` lines of a [`choice_list_schema`] answer (a JSON array of strings); `None`
/// if it is not one.
pub fn choice_list_from_json(json: &str) -> Option<String> {
    let items: Vec<String> = serde_json::from_str(json).ok()?;
    Some(
        items
            .iter()
            .map(|c| format!("- {}", c.trim()))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// A scene's prose settings from the request's: its `stop` gains a line break, and it keeps
/// to at most [`SCENE_SENTENCES`] whole sentences.
pub fn prose_params(params: &GenerateParams) -> GenerateParams {
    let mut prose = params.clone();
    prose.stop.push("\n".into());
    prose.whole_sentences = true;
    prose.max_sentences = Some(SCENE_SENTENCES);
    prose
}

/// The choice list's settings: the request's sampling, a budget for `choices` lines, no
/// stop strings or sentence rules.
pub fn list_params(choices: usize, params: &GenerateParams) -> GenerateParams {
    GenerateParams {
        max_tokens: choices * TOKENS_PER_CHOICE + 8,
        stop: Vec::new(),
        max_sentences: None,
        whole_sentences: false,
        ..params.clone()
    }
}
