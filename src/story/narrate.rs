//! Writing a scene the way a small chat model writes well: the scene as prose first (free
//! text that ends at a line break, in whole sentences), then its choices as a plain list
//! under a grammar, one short action per line. Structure stays guaranteed (exactly the asked
//! number of choices, each a few words); the words are the model's own.

use crate::engine::{
    CancelToken, ChatMessage, Delta, Engine, EngineError, FittedPrompt, GenerateParams, Generation,
    Grammar, Session,
};
use crate::score;

/// The turn that asks for `n` choices after a scene.
pub fn choices_ask(n: usize) -> String {
    format!("What can the player do now? Give {n} short actions, one per line.")
}

/// A scene as generated: the prose and the raw choice list.
/// [`Scene::from_prose`](super::Scene::from_prose) checks and splits them.
#[derive(Clone, Debug)]
pub struct SceneDraft {
    /// The scene's generation (its text is the prose).
    pub scene: Generation,
    /// The choice list's generation: `- Open the door` lines.
    pub choices: Generation,
}

/// The most sentences in a scene (the brief asks for two or three).
pub const SCENE_SENTENCES: usize = 3;

/// Tokens for one choice line: a dash, up to eight words, a line break.
const TOKENS_PER_CHOICE: usize = 20;

/// The grammar of `n` choices: lines `- Word word ...`, each starting with a capital
/// letter, one to eight words of letters (an apostrophe only in English endings:
/// `stranger's`, `don't`, `you'll`), no closing punctuation.
pub fn choice_list_grammar(n: usize) -> Grammar {
    let word = "[A-Za-z][a-z]{0,13}('(s|t|d|m|ll|re|ve))?";
    let line = format!("- [A-Z][a-z]{{1,13}}( {word}){{0,7}}");
    let n = n.max(1);
    Grammar::regex(&format!("({line}\\n){{{}}}{line}", n - 1))
}

/// How many scenes [`write_scenes`] writes, and what each has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SceneShape {
    /// Choices after each scene.
    pub choices: usize,
    /// Scenes returned, best first.
    pub alternatives: usize,
    /// Prose drafts per returned scene: `alternatives * best_of` are drawn (16 at most)
    /// and the best `alternatives` by [`score::scene_score`] are kept.
    pub best_of: usize,
}

/// Writes `shape.alternatives` scenes after `prompt` (a conversation that ends with the
/// player's turn, fitted to the context by [`Engine::fit_chat`]): every draw of the prose
/// shares one prefill; with `best_of` 1 the first streams through `on_delta` as it is
/// written, otherwise the best draw is sent whole once the draws are ranked. Then each kept
/// scene gets its `choices` as a constrained list, asked for as the next turn. `params` is
/// for the prose (its `stop` gains a line break and it keeps to whole sentences); the list
/// gets the same sampling and a budget of its own.
pub fn write_scenes(
    engine: &mut Engine,
    session: &mut Session,
    prompt: &FittedPrompt,
    shape: &SceneShape,
    params: &GenerateParams,
    cancel: &CancelToken,
    mut on_delta: impl FnMut(&Delta<'_>) + Send,
) -> Result<Vec<SceneDraft>, EngineError> {
    let SceneShape {
        choices,
        alternatives,
        best_of,
    } = *shape;
    let mut prose = params.clone();
    prose.stop.push("\n".into());
    prose.whole_sentences = true;
    prose.max_sentences = Some(SCENE_SENTENCES);
    let live = best_of <= 1;
    let draws = engine.generate_alternatives(
        session,
        &prompt.tokens,
        &prose,
        None,
        alternatives * best_of.max(1),
        cancel,
        |i, d| {
            if live && i == 0 {
                on_delta(d);
            }
        },
    )?;
    let scenes: Vec<Generation> = if live {
        draws
    } else {
        let scores: Vec<f64> = draws.iter().map(score::scene_score).collect();
        let order = score::ranked(&scores);
        let mut draws: Vec<Option<Generation>> = draws.into_iter().map(Some).collect();
        let kept: Vec<Generation> = order
            .into_iter()
            .take(alternatives)
            .filter_map(|i| draws[i].take())
            .collect();
        if let Some(best) = kept.first() {
            on_delta(&Delta {
                text: &best.text,
                token: None,
                generated: best.stats.generated_tokens,
            });
        }
        kept
    };
    let list = GenerateParams {
        max_tokens: choices * TOKENS_PER_CHOICE + 8,
        stop: Vec::new(),
        max_sentences: None,
        whole_sentences: false,
        ..params.clone()
    };
    let grammar = choice_list_grammar(choices);
    let mut drafts = Vec::with_capacity(scenes.len());
    for scene in scenes {
        let mut turns = prompt.messages.clone();
        turns.push(ChatMessage::assistant(scene.text.clone()));
        turns.push(ChatMessage::user(choices_ask(choices)));
        let tokens = engine.fit_chat(turns, list.max_tokens)?.tokens;
        let choices =
            engine.generate_constrained(session, &tokens, &list, &grammar, cancel, |_| {})?;
        drafts.push(SceneDraft { scene, choices });
    }
    Ok(drafts)
}
