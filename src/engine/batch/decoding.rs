//! One generation in progress, [`Decoding`]: its prompt, sampler, stream and statistics, how
//! it ends, and how it takes back tokens the guard flagged.

use std::time::{Duration, Instant};

use super::super::error::{EngineError, Result};
use super::super::guard::GuardHit;
use super::super::params::{
    CancelToken, Delta, GenerateParams, Generation, GenerationStats, Session, StopReason,
};
use super::super::sampling::Sampler;
use super::super::stream::{Mark, TextStream};
use super::super::tokenizer::TokenId;
use super::PREFILL_CHUNK;

/// One generation in progress: a prompt being computed, then tokens sampled one at a time.
///
/// Start one with [`Engine::begin`], advance any number together with [`Engine::step`], and
/// take the session and result back with [`Decoding::finish`] once
/// [`is_finished`](Decoding::is_finished):
///
/// ```no_run
/// use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams};
///
/// let mut engine = Engine::load("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf", EngineConfig::default())?;
/// let mut lines = Vec::new();
/// for question in ["Who are you?", "Where is the inn?", "Any news?"] {
///     let prompt = engine.chat_tokens(&[ChatMessage::user(question)])?;
///     let session = engine.new_session();
///     lines.push(engine.begin(session, &prompt, &GenerateParams::default(), None, CancelToken::new()));
/// }
/// let mut shown = vec![String::new(); lines.len()]; // each NPC's dialogue box
/// while lines.iter().any(|d| !d.is_finished()) {
///     engine.step(&mut lines, |i, delta| shown[i].push_str(delta.text))?;
/// }
/// for (line, text) in lines.into_iter().zip(&shown) {
///     let (_session, generation) = line.finish();
///     assert_eq!(&generation?.text, text);
/// }
/// # Ok::<(), bevy_llm_dialogue::engine::EngineError>(())
/// ```
///
/// [`Engine::begin`]: crate::engine::Engine::begin
/// [`Engine::step`]: crate::engine::Engine::step
pub struct Decoding {
    pub(super) session: Session,
    pub(super) prompt: Vec<TokenId>,
    pub(super) params: GenerateParams,
    pub(super) cancel: CancelToken,
    pub(super) sampler: Option<Sampler>,
    pub(super) matcher: Option<Box<llguidance::Matcher>>,
    pub(super) stream: TextStream,
    pub(super) whole_sentences: bool,
    /// Past this many generated tokens, only whole sentences stream.
    pub(super) hold_from: usize,
    pub(super) stats: GenerationStats,
    pub(super) generated: Vec<TokenId>,
    pub(super) started: Instant,
    pub(super) first_token_at: Option<Instant>,
    /// The token sampled last, fed in the next step.
    pub(super) next: Option<TokenId>,
    /// The last logits as the model gave them.
    pub(super) raw: Vec<f32>,
    /// Per generated token: where the stream stood after it, and its log-probability.
    pub(super) marks: Vec<(Mark, f64)>,
    /// Tokens taken back by the guard, by the position they may not be sampled at again.
    pub(super) banned: Vec<(usize, TokenId)>,
    /// The rules of the guard's hits.
    pub(super) filtered: Vec<String>,
    /// Tokens sampled and then taken back by the guard, over the whole generation.
    pub(super) taken_back: usize,
    pub(super) outcome: Option<Result<Generation>>,
}

impl std::fmt::Debug for Decoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoding")
            .field("prompt_tokens", &self.prompt.len())
            .field("cached_tokens", &self.session.tokens.len())
            .field("generated_tokens", &self.stats.generated_tokens)
            .field("constrained", &self.matcher.is_some())
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl Decoding {
    /// Whether it has ended (its result is ready for [`finish`](Self::finish)).
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// Whether it is still computing its prompt (nothing sampled yet).
    pub fn is_prefilling(&self) -> bool {
        self.outcome.is_none() && self.next.is_none()
    }

    /// Bytes held by its session's key/value cache.
    pub fn cache_bytes(&self) -> usize {
        self.session.cache_bytes()
    }

    /// Tokens sampled so far.
    pub fn generated_tokens(&self) -> usize {
        self.stats.generated_tokens
    }

    /// The session (holding the prompt and what was generated) and the result. A decoding
    /// that has not finished ends as [`StopReason::Cancelled`].
    pub fn finish(mut self) -> (Session, Result<Generation>) {
        if self.outcome.is_none() {
            self.end(StopReason::Cancelled, &mut |_| {});
        }
        let outcome = self.outcome.take().expect("ended above");
        (self.session, outcome)
    }

    pub(super) fn fail(&mut self, error: EngineError) {
        self.outcome = Some(Err(error));
    }

    /// Ends with `reason`: flushes what the stream held back and builds the result.
    pub(super) fn end(&mut self, reason: StopReason, on_delta: &mut dyn FnMut(&Delta<'_>)) {
        if self.next.is_none() && self.stats.prefill_time.is_zero() {
            self.stats.prefill_time = self.started.elapsed();
        }
        self.stats.decode_time = self.first_token_at.map_or(Duration::ZERO, |t| t.elapsed());
        // A text cut by its budget or its guard, or one the model ended without ending its
        // sentence.
        let cut = matches!(
            reason,
            StopReason::MaxTokens
                | StopReason::ContextFull
                | StopReason::Eos
                | StopReason::Filtered
        );
        let rest = if self.whole_sentences && cut {
            self.stream.finish_whole()
        } else {
            self.stream.finish()
        };
        if !rest.is_empty() {
            on_delta(&Delta {
                text: &rest,
                token: None,
                generated: self.generated.len(),
            });
        }
        self.stats.guard_time = self.stream.guard_time();
        self.outcome = Some(Ok(Generation {
            text: self.stream.text().to_owned(),
            tokens: std::mem::take(&mut self.generated),
            stop_reason: reason,
            stats: self.stats.clone(),
            filtered: std::mem::take(&mut self.filtered),
        }));
    }

    /// Takes back the tokens that made the guard's `hit` and bans the first of them at its
    /// position, so the next step samples another in its place. `false` when it cannot: the
    /// rollback budget is spent (in rollbacks, or in tokens: once a line's worth of
    /// `max_tokens` was taken back, so that a line's forward passes stay under three times
    /// its `max_tokens`), or the hit starts inside a token that was partly shown.
    pub(super) fn roll_back(&mut self, hit: GuardHit) -> bool {
        self.filtered.push(hit.rule);
        let budget = self.params.guard.as_ref().map_or(0, |g| g.max_rollbacks());
        if self.stats.rollbacks >= budget
            || self.taken_back >= self.params.max_tokens
            || self.generated.is_empty()
        {
            return false;
        }
        let at = hit.range.start.max(self.stream.emitted());
        // The first token whose text reaches past `at` (the newest has no mark yet).
        // (A token whose unfinished character begins the hit counts too.)
        let k = self
            .marks
            .iter()
            .position(|(mark, _)| mark.len > at || (mark.len == at && !mark.pending_is_empty()))
            .unwrap_or(self.marks.len())
            .min(self.generated.len() - 1);
        let before = k.checked_sub(1).map(|i| self.marks[i].0.clone());
        if before.as_ref().map_or(0, |m| m.len) < self.stream.emitted() {
            return false;
        }
        if let Some(m) = self.matcher.as_deref_mut()
            && m.rollback(self.generated.len() - k).is_err()
        {
            return false;
        }
        self.stream.rewind(&before.unwrap_or_default());
        // Bans at this position stay: they share the prefix kept.
        self.banned.retain(|&(at, _)| at <= k);
        self.banned.push((k, self.generated[k]));
        self.taken_back += self.generated.len() - k;
        self.generated.truncate(k);
        self.marks.truncate(k);
        self.stats.logprob = self.marks.iter().map(|(_, lp)| lp).sum();
        self.stats.generated_tokens = k;
        self.stats.rollbacks += 1;
        // The cache keeps everything before the token to sample again; the token before it
        // is fed again for its logits.
        let (keep, feed) = match k.checked_sub(1) {
            Some(last) => (self.prompt.len() + last, self.generated[last]),
            None => (self.prompt.len() - 1, self.prompt[self.prompt.len() - 1]),
        };
        self.session.tokens.truncate(keep);
        self.next = Some(feed);
        true
    }

    /// The tokens to run in the next step, at most `budget` of a prompt.
    pub(super) fn input(&self, budget: usize) -> &[TokenId] {
        match self.next {
            Some(ref token) => std::slice::from_ref(token),
            None => {
                let done = self.session.tokens.len();
                let take = (self.prompt.len() - done).min(PREFILL_CHUNK).min(budget);
                &self.prompt[done..done + take]
            }
        }
    }
}
