//! Generation requests, their results, conversations (sessions) and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};
use super::model::KvCache;
use super::sampling::SamplingParams;
use super::tokenizer::TokenId;

/// What to generate and when to stop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(default, deny_unknown_fields)]
pub struct GenerateParams {
    /// The most tokens to generate. Range `1..=65536`.
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Strings that end the text when they appear; they are not part of the result.
    pub stop: Vec<String>,
    /// Keep going past end-of-turn tokens until `max_tokens` (benchmarks, like llama.cpp's
    /// `ignore_eos`). Off by default.
    pub ignore_eos: bool,
    /// End the text after this many sentences (stop reason [`StopReason::SentenceLimit`]).
    /// `None`: no limit. Ignored under a grammar.
    pub max_sentences: Option<usize>,
    /// Never end in the middle of a sentence: in the last third of `max_tokens` only whole
    /// sentences are streamed, and a text that runs out of tokens (or that the model ends
    /// without ending its sentence) ends at its last sentence end, or, if nothing shown so far
    /// ends one, trails off with `…`. Ignored under a grammar. Off by default in the engine; the plugin turns it on for lines and scenes.
    pub whole_sentences: bool,
    /// A content check enforced while generating: text it flags is taken back (the key/value
    /// cache with it) and other tokens are sampled in its place, so no flagged text reaches a
    /// [`Delta`]. Past its rollback budget the text ends before the hit
    /// ([`StopReason::Filtered`]). `None`: nothing is checked. Not saved with the parameters.
    #[serde(skip)]
    #[cfg_attr(feature = "bevy", reflect(ignore))]
    pub guard: Option<super::guard::Guard>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            max_sentences: None,
            whole_sentences: false,
            guard: None,
        }
    }
}

impl GenerateParams {
    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=65_536).contains(&self.max_tokens) {
            return Err(EngineError::InvalidParameter {
                name: "max_tokens",
                reason: format!("{} is outside 1..=65536", self.max_tokens),
            });
        }
        if self.max_sentences == Some(0) {
            return Err(EngineError::InvalidParameter {
                name: "max_sentences",
                reason: "0 sentences leaves nothing to say (use None for no limit)".into(),
            });
        }
        self.sampling.validate()
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[non_exhaustive]
pub enum StopReason {
    /// The model ended its turn (end-of-sequence or end-of-turn token).
    Eos,
    /// One of the caller's stop strings appeared.
    StopString,
    /// [`GenerateParams::max_sentences`] sentences were written.
    SentenceLimit,
    /// `max_tokens` were generated (with [`GenerateParams::whole_sentences`], the text still
    /// ends at a sentence end).
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The caller cancelled.
    Cancelled,
    /// [`GenerateParams::guard`] flagged the text more times than its rollback budget allows:
    /// the text ends before the last hit (at its last sentence end, with
    /// [`GenerateParams::whole_sentences`]).
    Filtered,
}

/// Figures for one generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached and were not computed again.
    pub cached_tokens: usize,
    /// Tokens sampled, including the one that ended the turn.
    pub generated_tokens: usize,
    /// From the call to the first sampled token.
    pub time_to_first_token: Duration,
    /// Time spent computing the uncached part of the prompt.
    pub prefill_time: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
    /// Time spent computing grammar masks (constrained generation only).
    pub constraint_time: Duration,
    /// The sum of the natural-log probabilities the model gave each sampled token (the one
    /// that ended the turn included), from its raw scores: before temperature, repetition
    /// penalty, top-k/top-p or a grammar's mask. Closer to zero means the model was surer.
    pub logprob: f64,
    /// Times [`GenerateParams::guard`] flagged the text and it was taken back and sampled
    /// again.
    #[serde(default)]
    pub rollbacks: usize,
    /// Time spent in [`GenerateParams::guard`]'s checks.
    #[serde(default)]
    pub guard_time: Duration,
}

impl GenerationStats {
    /// Prompt tokens that were computed (not reused from the cache).
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens
    }

    /// Prompt tokens computed per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(self.prefilled_tokens(), self.prefill_time)
    }

    /// Tokens generated per second after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.generated_tokens.saturating_sub(1), self.decode_time)
    }

    /// [`logprob`](Self::logprob) per sampled token; 0 when nothing was sampled.
    pub fn mean_logprob(&self) -> f64 {
        if self.generated_tokens == 0 {
            0.0
        } else {
            self.logprob / self.generated_tokens as f64
        }
    }
}

fn per_second(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// The result of a generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated text, without stop strings or surrounding whitespace. Equal to the
    /// concatenation of every streamed delta.
    pub text: String,
    /// The generated tokens, without the end-of-turn token.
    pub tokens: Vec<TokenId>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timing and token counts.
    pub stats: GenerationStats,
    /// The rule of each hit [`GenerateParams::guard`] found, in order (a hit that was taken
    /// back, and the last one if it ended the text).
    #[serde(default)]
    pub filtered: Vec<String>,
}

/// One step of a streaming generation, passed to the caller's callback.
#[derive(Clone, Copy, Debug)]
pub struct Delta<'a> {
    /// New text to show (may be empty while bytes or a possible stop string are held back).
    pub text: &'a str,
    /// The token just sampled; `None` for the final flush.
    pub token: Option<TokenId>,
    /// Tokens sampled so far.
    pub generated: usize,
}

/// Cancels a generation from any thread. Checked before every forward pass, so a
/// generation stops within one token of [`CancelToken::cancel`].
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One conversation's state in the engine: the tokens whose keys and values are cached.
///
/// Keep one session per NPC (llama.cpp calls them slots): a new prompt that starts with the
/// tokens already cached (the persona, earlier turns) only computes what is new.
#[derive(Debug)]
pub struct Session {
    pub(crate) tokens: Vec<TokenId>,
    pub(crate) cache: KvCache,
}

impl Session {
    pub(crate) fn new(cache: KvCache) -> Self {
        Self {
            tokens: Vec::new(),
            cache,
        }
    }

    /// The tokens currently cached, in order.
    pub fn cached_tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Bytes held by this session's key/value cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// An independent copy (the cache is copied, not shared).
    pub(crate) fn fork(&self) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.clone(),
            cache: self.cache.deep_copy()?,
        })
    }

    /// Keeps only the first `len` cached tokens.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
    }

    /// Forgets the cached tokens (memory is kept for reuse).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.cache.truncate(0);
    }

    /// Length of the common prefix of the cache and `prompt`.
    pub fn common_prefix(&self, prompt: &[TokenId]) -> usize {
        self.tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    }
}
