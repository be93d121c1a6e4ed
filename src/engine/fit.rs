//! Fitting a conversation into the context window: the oldest history turns are dropped
//! until the prompt leaves room for the reply.

use super::error::{EngineError, Result};
use super::load::Engine;
use super::template::{ChatMessage, Role};
use super::tokenizer::TokenId;

/// A conversation cut down to fit the context, and its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FittedPrompt {
    /// The messages kept: the system message and the newest turn always, then as much of the
    /// most recent history as fits.
    pub messages: Vec<ChatMessage>,
    /// `messages` rendered with the chat template and tokenized, as
    /// [`Engine::chat_tokens`] gives them: the prompt to generate from.
    pub tokens: Vec<TokenId>,
}

impl Engine {
    /// Tokenizes the messages, dropping the oldest history turns until the prompt leaves room
    /// for a reply of `max_tokens` (or half the context, if that is less). The system message
    /// and the newest turn are never dropped; when they alone leave less room, the prompt is
    /// kept as long as it fits at all, and [`EngineError::ContextOverflow`] is returned when
    /// it does not.
    ///
    /// How many turns to drop is found by bisection: a long history costs a few renders, not
    /// one per dropped turn.
    pub fn fit_chat(&self, messages: Vec<ChatMessage>, max_tokens: usize) -> Result<FittedPrompt> {
        let n_ctx = self.info().n_ctx;
        let room = max_tokens.min(n_ctx / 2);
        let pinned = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
        let droppable = messages.len().saturating_sub(pinned + 1);
        // The prompt without the `k` oldest turns; a history left starting with the NPC's
        // reply to a dropped question loses that reply too.
        let without = |k: usize| -> Result<FittedPrompt> {
            let mut start = pinned + k;
            if k > 0 && start + 1 < messages.len() && messages[start].role == Role::Assistant {
                start += 1;
            }
            let kept: Vec<ChatMessage> = messages[..pinned]
                .iter()
                .chain(&messages[start..])
                .cloned()
                .collect();
            let tokens = self.chat_tokens(&kept)?;
            Ok(FittedPrompt {
                messages: kept,
                tokens,
            })
        };
        let fits = |p: &FittedPrompt| p.tokens.len() + room <= n_ctx;
        let all = without(0)?;
        if fits(&all) {
            return Ok(all);
        }
        let least = without(droppable)?;
        if !fits(&least) {
            // No history left to drop; generate what fits.
            if least.tokens.len() < n_ctx {
                return Ok(least);
            }
            return Err(EngineError::ContextOverflow {
                tokens: least.tokens.len(),
                n_ctx,
            });
        }
        // The fewest turns to drop: `hi` fits, `lo` does not.
        let (mut lo, mut hi, mut best) = (0, droppable, least);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let p = without(mid)?;
            if fits(&p) {
                hi = mid;
                best = p;
            } else {
                lo = mid;
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::EngineConfig;
    use super::*;

    const MODEL: &str = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";

    #[test]
    fn old_turns_go_first_and_the_system_message_and_newest_turn_stay() {
        let config = EngineConfig {
            n_ctx: Some(160),
            ..EngineConfig::default()
        };
        let engine = Engine::load(MODEL, config).expect("run scripts/fetch-model");
        let mut messages = vec![ChatMessage::system("You are Mira, a blacksmith.")];
        for i in 0..20 {
            messages.push(ChatMessage::user(format!(
                "Question number {i} about swords?"
            )));
            messages.push(ChatMessage::assistant(format!(
                "Answer number {i} about swords."
            )));
        }
        messages.push(ChatMessage::user("And the newest question?"));

        let fitted = engine.fit_chat(messages.clone(), 32).expect("fits");
        assert!(
            fitted.messages.len() < messages.len(),
            "history was dropped"
        );
        assert_eq!(fitted.messages[0], messages[0]);
        assert_eq!(fitted.messages.last(), messages.last());
        assert_eq!(
            fitted.messages[1].role,
            Role::User,
            "no orphaned reply first"
        );
        assert!(
            messages.ends_with(&fitted.messages[1..]),
            "the most recent turns are kept"
        );
        assert_eq!(
            fitted.tokens,
            engine.chat_tokens(&fitted.messages).expect("tokenizes")
        );
        assert!(fitted.tokens.len() + 32 <= 160);

        let huge = vec![
            ChatMessage::system("word ".repeat(400)),
            ChatMessage::user("Hello?"),
        ];
        assert!(matches!(
            engine.fit_chat(huge, 32),
            Err(EngineError::ContextOverflow { n_ctx: 160, .. })
        ));
    }
}
