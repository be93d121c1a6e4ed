//! Generations in progress, advanced together: every step runs one forward pass for all of
//! them (a prompt chunk for those still reading their prompt, one token for the others), so
//! many NPCs share each pass over the weights instead of queueing behind one another.
//!
//! [`Engine::generate`] is a batch of one over the same code, so a line generated alone and
//! one generated among others are the same line.
//!
//! This file starts decodings and runs the shared step; `decoding` holds one generation's
//! state (and takes tokens back for the guard), `sample` picks each next token and decides
//! where a generation ends.

mod decoding;
mod sample;

use std::time::Instant;

use super::error::{EngineError, Result};
use super::grammar::{self, Grammar};
use super::load::Engine;
use super::model::Fed;
use super::params::{CancelToken, Delta, GenerateParams, GenerationStats, Session, StopReason};
use super::sampling::Sampler;
use super::stream::TextStream;
use super::tokenizer::TokenId;

pub use decoding::Decoding;
pub(crate) use sample::log_probability;

/// Prompt tokens one sequence computes per step; bounds memory and lets a cancel (and the
/// other sequences' next tokens) land mid-prompt.
pub(crate) const PREFILL_CHUNK: usize = 256;

/// Tokens one step computes for all its sequences together: each generating sequence takes
/// one, the prompts share the rest. Bounds the time of a step, so a long prompt joining
/// delays the others' next token by at most one chunk's compute.
const STEP_TOKENS: usize = 256;

impl Engine {
    /// Starts generating a continuation of `prompt` in `session` (and, with a `grammar`, as
    /// [`Engine::generate_constrained`] does). Nothing is computed until [`Engine::step`].
    ///
    /// The longest prefix of `prompt` already cached in `session` is reused. Bad parameters
    /// or a prompt that does not fit give a decoding that is already finished with the error,
    /// its session untouched.
    pub fn begin(
        &mut self,
        session: Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
        cancel: CancelToken,
    ) -> Decoding {
        let free = grammar.is_none();
        let no_stops: &[String] = &[];
        let mut decoding = Decoding {
            session,
            prompt: prompt.to_vec(),
            params: params.clone(),
            cancel,
            sampler: None,
            matcher: None,
            stream: TextStream::new(if free { &params.stop } else { no_stops })
                .with_max_sentences(params.max_sentences.filter(|_| free))
                .with_guard(params.guard.clone()),
            whole_sentences: params.whole_sentences && free,
            // The last third of the budget (at least 8 tokens) streams whole sentences only.
            hold_from: params
                .max_tokens
                .saturating_sub((params.max_tokens / 3).max(8)),
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            generated: Vec::new(),
            started: Instant::now(),
            first_token_at: None,
            next: None,
            raw: Vec::new(),
            marks: Vec::new(),
            banned: Vec::new(),
            filtered: Vec::new(),
            taken_back: 0,
            outcome: None,
        };
        match self.prepare(prompt, params, grammar) {
            Ok((sampler, matcher)) => {
                decoding.sampler = Some(sampler);
                decoding.matcher = matcher.map(Box::new);
                // At least one prompt token is computed, to get logits to sample from.
                let reuse = decoding.session.common_prefix(prompt).min(prompt.len() - 1);
                decoding.session.tokens.truncate(reuse);
                decoding.stats.cached_tokens = reuse;
            }
            Err(e) => decoding.fail(e),
        }
        decoding
    }

    /// Checks a request and builds its sampler and grammar matcher.
    fn prepare(
        &mut self,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
    ) -> Result<(Sampler, Option<llguidance::Matcher>)> {
        params.validate()?;
        let n_ctx = self.info.n_ctx;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                name: "prompt",
                reason: "the prompt is empty".to_owned(),
            });
        }
        if prompt.len() >= n_ctx {
            return Err(EngineError::ContextOverflow {
                tokens: prompt.len(),
                n_ctx,
            });
        }
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.tokenizer.vocab_size())
        {
            return Err(EngineError::InvalidParameter {
                name: "prompt",
                reason: format!("token {bad} is outside the vocabulary"),
            });
        }
        let sampler = Sampler::new(params.sampling.clone())?;
        let matcher = match grammar {
            Some(g) => {
                if self.constraints.is_none() {
                    self.constraints = Some(grammar::Constraints::new(&self.tokenizer)?);
                }
                let constraints = self.constraints.as_ref().expect("just built");
                Some(constraints.matcher(g)?)
            }
            None => None,
        };
        Ok((sampler, matcher))
    }

    /// Advances every unfinished decoding in `batch` by one forward pass shared by all of
    /// them: a generating one by one token, one still reading its prompt by a chunk of it.
    /// `on_delta` gets each decoding's position in `batch` and its new text. A cancelled
    /// decoding ends before the pass, within one token of the cancel.
    ///
    /// Errors of one decoding (a grammar that cannot continue) end that decoding only. An
    /// error of the pass itself ends every decoding in it with that error, their sessions
    /// cleared, and is returned.
    pub fn step<'a>(
        &mut self,
        batch: impl IntoIterator<Item = &'a mut Decoding>,
        mut on_delta: impl FnMut(usize, &Delta<'_>),
    ) -> Result<()> {
        let mut live: Vec<(usize, &mut Decoding)> = batch
            .into_iter()
            .enumerate()
            .filter(|(_, d)| !d.is_finished())
            .collect();
        for (i, d) in &mut live {
            if d.cancel.is_cancelled() {
                d.end(StopReason::Cancelled, &mut |delta| on_delta(*i, delta));
            }
        }
        live.retain(|(_, d)| !d.is_finished());
        if live.is_empty() {
            return Ok(());
        }
        // Generating sequences first, one token each; prompts share what is left in order.
        live.sort_by_key(|(_, d)| d.next.is_none());
        let mut budget =
            STEP_TOKENS.saturating_sub(live.iter().filter(|(_, d)| d.next.is_some()).count());
        let mut fed = Vec::with_capacity(live.len());
        for (i, d) in live {
            let input = d.input(budget).to_vec();
            if input.is_empty() {
                continue;
            }
            if d.next.is_none() {
                budget -= input.len();
            }
            fed.push((i, d, input));
        }

        let result = {
            let _span = tracing::trace_span!("step", sequences = fed.len()).entered();
            let mut batch: Vec<Fed<'_>> = fed
                .iter_mut()
                .map(|(_, d, tokens)| {
                    let pos = d.session.tokens.len();
                    d.session.cache.truncate(pos);
                    Fed {
                        tokens,
                        cache: &mut d.session.cache,
                    }
                })
                .collect();
            self.on_pool(|engine| engine.model.forward_batch(&mut batch))
        };
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                // A failed pass leaves the caches in an unknown state: their sessions forget
                // everything rather than claim tokens they may not hold.
                for (_, d, _) in &mut fed {
                    d.session.clear();
                    d.fail(EngineError::Compute(candle_core::Error::Msg(e.to_string())));
                }
                return Err(e);
            }
        };
        for ((i, d, input), mut logits) in fed.into_iter().zip(logits) {
            d.session.tokens.extend_from_slice(&input);
            if d.next.is_none() {
                if d.session.tokens.len() < d.prompt.len() {
                    continue;
                }
                d.stats.prefill_time = d.started.elapsed();
            }
            self.sample(d, &mut logits, &mut |delta| on_delta(i, delta));
        }
        Ok(())
    }
}
