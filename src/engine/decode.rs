//! Running the model: chat, free and constrained generation, alternatives, raw logits and
//! perplexity, all on the engine's thread pool.

use std::time::{Duration, Instant};

use super::error::{EngineError, Result};
use super::generate::{
    CancelToken, Delta, GenerateParams, Generation, GenerationStats, Session, StopReason,
};
use super::grammar::{self, Grammar};
use super::load::Engine;
use super::sampling::Sampler;
use super::stream::TextStream;
use super::template::ChatMessage;
use super::tokenizer::TokenId;

/// Prompt tokens computed per forward pass; bounds memory and lets a cancel land mid-prompt.
const PREFILL_CHUNK: usize = 256;

impl Engine {
    /// Chat: renders `messages`, then generates the assistant's reply. See [`Engine::generate`].
    pub fn chat(
        &mut self,
        session: &mut Session,
        messages: &[ChatMessage],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        let prompt = self.chat_tokens(messages)?;
        self.generate(session, &prompt, params, cancel, on_delta)
    }

    /// Generates a continuation of `prompt` in `session`, calling `on_delta` after every
    /// token with the text that became safe to show.
    ///
    /// The longest prefix of `prompt` already cached in `session` is reused. A prompt that
    /// does not leave room for one generated token fails with
    /// [`EngineError::ContextOverflow`] before any compute.
    pub fn generate(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        self.run(session, prompt, params, None, cancel, on_delta)
    }

    /// Like [`generate`](Self::generate), but every token is masked so that the output
    /// follows `grammar`: it ends when the structure is complete (stop reason
    /// [`StopReason::Eos`]) and always parses. Output that `max_tokens` cuts off before the
    /// structure is complete is an [`EngineError::Grammar`] error, never a partial result.
    /// Stop strings are ignored.
    pub fn generate_constrained(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: &Grammar,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        self.run(session, prompt, params, Some(grammar), cancel, on_delta)
    }

    /// `n` different continuations of one prompt, computing the prompt once: each
    /// alternative starts from a copy of the prompt's cache, with seed `seed + i` (a fresh
    /// random base seed when the params have none). Alternatives whose text repeats an earlier one are drawn
    /// again with a new seed, a few times at most, so the results are distinct unless the
    /// model keeps producing the same text. `on_delta` gets the alternative's index.
    /// `session` ends holding the prompt.
    #[expect(
        clippy::too_many_arguments,
        reason = "generate's arguments plus n and a grammar"
    )]
    pub fn generate_alternatives(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
        n: usize,
        cancel: &CancelToken,
        mut on_delta: impl FnMut(usize, &Delta<'_>) + Send,
    ) -> Result<Vec<Generation>> {
        if !(1..=16).contains(&n) {
            return Err(EngineError::InvalidParameter {
                name: "n",
                reason: format!("{n} alternatives is outside 1..=16"),
            });
        }
        if prompt.len() > 1 {
            // The shared prefill: all but the last prompt token, which each alternative
            // computes itself to get its own first logits.
            let reuse = session.common_prefix(prompt).min(prompt.len() - 1);
            session.tokens.truncate(reuse);
            if reuse < prompt.len() - 1 {
                self.logits(session, &prompt[reuse..prompt.len() - 1])?;
            }
        }
        // Like a single generation, no seed means a fresh draw every time (it was seed 0, so
        // every playthrough got the same "random" scenes).
        let base = params.sampling.seed.unwrap_or_else(rand::random);
        let mut results: Vec<Generation> = Vec::with_capacity(n);
        let mut draws = 0u64;
        while results.len() < n {
            let i = results.len();
            let mut p = params.clone();
            p.sampling.seed = Some(base.wrapping_add(draws));
            draws += 1;
            let mut fork = session.fork()?;
            // The first alternative streams as it goes (it cannot repeat anything); the
            // others are held until they are known to be new.
            let mut deltas = Vec::new();
            let g = self.run(&mut fork, prompt, &p, grammar, cancel, |d| {
                if i == 0 {
                    on_delta(0, d);
                } else {
                    deltas.push((d.text.to_owned(), d.token, d.generated));
                }
            })?;
            let repeated = results.iter().any(|r| r.text == g.text);
            if repeated && draws < (n as u64) * 4 && g.stop_reason != StopReason::Cancelled {
                continue;
            }
            for (text, token, generated) in deltas {
                on_delta(
                    i,
                    &Delta {
                        text: &text,
                        token,
                        generated,
                    },
                );
            }
            results.push(g);
        }
        Ok(results)
    }

    fn run(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
        cancel: &CancelToken,
        mut on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
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
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let mut matcher = match grammar {
            Some(g) => {
                if self.constraints.is_none() {
                    self.constraints = Some(grammar::Constraints::new(&self.tokenizer)?);
                }
                let constraints = self.constraints.as_ref().expect("just built");
                Some(constraints.matcher(g)?)
            }
            None => None,
        };
        self.on_pool(|engine| {
            engine.generate_inner(
                session,
                prompt,
                params,
                cancel,
                &mut sampler,
                matcher.as_mut(),
                &mut on_delta,
            )
        })
    }

    /// Runs `f` on the engine's thread pool (when [`EngineConfig::threads`] built one), so
    /// that candle's and the kernels' rayon work stays within the thread budget.
    ///
    /// [`EngineConfig::threads`]: super::EngineConfig::threads
    fn on_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        // Taken out for the call: the pool cannot be borrowed while `f` borrows the engine.
        let pool = self.pool.take();
        let result = match &pool {
            Some(pool) => pool.install(|| f(self)),
            None => f(self),
        };
        self.pool = pool;
        result
    }

    /// Feeds `tokens` after what `session` already holds and returns the scores (logits) for
    /// the token that would come next, for custom decoding and for testing.
    pub fn logits(&mut self, session: &mut Session, tokens: &[TokenId]) -> Result<Vec<f32>> {
        let total = session.tokens.len() + tokens.len();
        if tokens.is_empty() || total > self.info.n_ctx {
            return Err(EngineError::ContextOverflow {
                tokens: total,
                n_ctx: self.info.n_ctx,
            });
        }
        let pos = session.tokens.len();
        let result = self.on_pool(|engine| engine.model.forward(tokens, pos, &mut session.cache));
        // A failed forward leaves the cache in an unknown state: the session forgets it all
        // rather than claim tokens it may not hold.
        match &result {
            Ok(_) => session.tokens.extend_from_slice(tokens),
            Err(_) => session.clear(),
        }
        result
    }

    /// Perplexity of the model on `tokens` (the first predicts the second, and so on):
    /// `exp` of the mean negative log-likelihood. For checking that a kernel or
    /// quantization change keeps the model the same; it runs one token at a time.
    pub fn perplexity(&mut self, tokens: &[TokenId]) -> Result<f64> {
        if tokens.len() < 2 || tokens.len() > self.info.n_ctx {
            return Err(EngineError::InvalidParameter {
                name: "tokens",
                reason: format!("need 2..={} tokens, got {}", self.info.n_ctx, tokens.len()),
            });
        }
        let mut session = self.new_session();
        self.on_pool(|engine| {
            let mut nll = 0f64;
            for (i, pair) in tokens.windows(2).enumerate() {
                let logits = engine.model.forward(&pair[..1], i, &mut session.cache)?;
                nll -= log_probability(&logits, pair[1]);
            }
            Ok((nll / (tokens.len() - 1) as f64).exp())
        })
    }

    #[expect(clippy::too_many_arguments, reason = "run's state, passed down once")]
    fn generate_inner(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        cancel: &CancelToken,
        sampler: &mut Sampler,
        mut matcher: Option<&mut llguidance::Matcher>,
        on_delta: &mut (dyn FnMut(&Delta<'_>) + Send),
    ) -> Result<Generation> {
        let started = Instant::now();
        let n_ctx = self.info.n_ctx;
        // At least one prompt token is computed, to get logits to sample from.
        let reuse = session.common_prefix(prompt).min(prompt.len() - 1);
        session.tokens.truncate(reuse);
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: reuse,
            ..Default::default()
        };
        let no_stops: &[String] = &[];
        let free = matcher.is_none();
        let mut stream = TextStream::new(if free { &params.stop } else { no_stops })
            .with_max_sentences(params.max_sentences.filter(|_| free));
        let whole_sentences = params.whole_sentences && free;
        // The last third of the budget (at least 8 tokens) streams whole sentences only.
        let hold_from = params
            .max_tokens
            .saturating_sub((params.max_tokens / 3).max(8));
        let mut generated = Vec::new();
        let finish = |stream: &mut TextStream,
                      generated: Vec<TokenId>,
                      stop_reason,
                      stats,
                      on_delta: &mut (dyn FnMut(&Delta<'_>) + Send)| {
            // A text cut by its budget, or one the model ended without ending its sentence.
            let cut = matches!(
                stop_reason,
                StopReason::MaxTokens | StopReason::ContextFull | StopReason::Eos
            );
            let rest = if whole_sentences && cut {
                stream.finish_whole()
            } else {
                stream.finish()
            };
            let n = generated.len();
            if !rest.is_empty() {
                on_delta(&Delta {
                    text: &rest,
                    token: None,
                    generated: n,
                });
            }
            Generation {
                text: stream.text().to_owned(),
                tokens: generated,
                stop_reason,
                stats,
            }
        };

        let mut logits = Vec::new();
        {
            let _span = tracing::trace_span!("prefill", tokens = prompt.len() - reuse).entered();
            for chunk in prompt[reuse..].chunks(PREFILL_CHUNK) {
                if cancel.is_cancelled() {
                    stats.prefill_time = started.elapsed();
                    return Ok(finish(
                        &mut stream,
                        generated,
                        StopReason::Cancelled,
                        stats,
                        on_delta,
                    ));
                }
                let pos = session.tokens.len();
                logits = self.model.forward(chunk, pos, &mut session.cache)?;
                session.tokens.extend_from_slice(chunk);
            }
        }
        stats.prefill_time = started.elapsed();

        let mut first_token_at = None;
        // The raw scores, kept for the sampled token's log-probability (sampling rewrites them).
        let mut raw = Vec::with_capacity(logits.len());
        let stop_reason = loop {
            raw.clear();
            raw.extend_from_slice(&logits);
            let token = match matcher.as_deref_mut() {
                None => {
                    let _span = tracing::trace_span!("sample").entered();
                    sampler.sample(&mut logits, &session.tokens, None)
                }
                Some(m) => {
                    let _span = tracing::trace_span!("sample_constrained").entered();
                    let masked = Instant::now();
                    let mask = m.compute_mask().map_err(grammar::grammar_error)?;
                    stats.constraint_time += masked.elapsed();
                    if mask.is_zero() {
                        return Err(grammar::grammar_error(
                            m.get_error()
                                .unwrap_or_else(|| "no token can continue the output".into()),
                        ));
                    }
                    let token =
                        sampler.sample(&mut logits, &session.tokens, Some(&|t| mask.is_allowed(t)));
                    let consumed = Instant::now();
                    if !self.tokenizer.is_end_of_generation(token) {
                        m.consume_token(token).map_err(grammar::grammar_error)?;
                    }
                    stats.constraint_time += consumed.elapsed();
                    token
                }
            };
            stats.generated_tokens += 1;
            stats.logprob += log_probability(&raw, token);
            if stats.generated_tokens == 1 {
                stats.time_to_first_token = started.elapsed();
                first_token_at = Some(Instant::now());
            }
            if !params.ignore_eos && self.tokenizer.is_end_of_generation(token) {
                break StopReason::Eos;
            }
            let structure_done = matcher.as_deref().is_some_and(|m| m.is_stopped());
            generated.push(token);
            if whole_sentences && stats.generated_tokens > hold_from {
                stream.hold_partial_sentences();
            }
            let push = stream.push(self.tokenizer.token_bytes(token));
            on_delta(&Delta {
                text: &push.delta,
                token: Some(token),
                generated: stats.generated_tokens,
            });
            if push.stopped {
                break StopReason::StopString;
            }
            if push.sentences_done {
                break StopReason::SentenceLimit;
            }
            if structure_done {
                break StopReason::Eos;
            }
            if stats.generated_tokens >= params.max_tokens {
                if matcher.is_some() {
                    return Err(grammar::grammar_error(format!(
                        "max_tokens ({}) ran out before the structured output was complete",
                        params.max_tokens
                    )));
                }
                break StopReason::MaxTokens;
            }
            if session.tokens.len() + 1 >= n_ctx {
                if matcher.is_some() {
                    return Err(grammar::grammar_error(
                        "the context filled up before the structured output was complete",
                    ));
                }
                break StopReason::ContextFull;
            }
            if cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            let _span = tracing::trace_span!("decode").entered();
            let pos = session.tokens.len();
            logits = self.model.forward(&[token], pos, &mut session.cache)?;
            session.tokens.push(token);
        };
        stats.decode_time = first_token_at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(finish(&mut stream, generated, stop_reason, stats, on_delta))
    }
}

/// The natural-log probability of `token` under the softmax of `logits`; non-finite scores
/// count as impossible.
fn log_probability(logits: &[f32], token: TokenId) -> f64 {
    let max = logits
        .iter()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let Some(&chosen) = logits.get(token as usize).filter(|l| l.is_finite()) else {
        return f64::NEG_INFINITY;
    };
    let log_sum = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&v| f64::from(v - max).exp())
        .sum::<f64>()
        .ln();
    f64::from(chosen - max) - log_sum
}

#[cfg(test)]
mod tests {
    use super::log_probability;

    #[test]
    fn log_probability_is_a_log_softmax() {
        let logits = [0.0f32, 2.0_f32.ln(), f32::NAN];
        // Probabilities 1/3 and 2/3; the NaN counts as impossible.
        assert!((log_probability(&logits, 0) - (1.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!((log_probability(&logits, 1) - (2.0f64 / 3.0).ln()).abs() < 1e-6);
        assert_eq!(log_probability(&logits, 2), f64::NEG_INFINITY);
        assert_eq!(log_probability(&logits, 9), f64::NEG_INFINITY);
    }
}
