//! Running the model: chat, free and constrained generation, alternatives, raw logits and
//! perplexity, all on the engine's thread pool and
//! over the batched steps of [`super::batch`].

use super::batch::log_probability;
use super::error::{EngineError, Result};
use super::grammar::Grammar;
use super::load::Engine;
use super::model::KvCache;
use super::params::{CancelToken, Delta, GenerateParams, Generation, Session, StopReason};
use super::template::ChatMessage;
use super::tokenizer::TokenId;

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
        let mut results: Vec<Option<Generation>> = (0..n).map(|_| None).collect();
        // The first alternative streams as it goes (it cannot repeat anything); the others
        // are held until they are known to be new.
        let mut held: Vec<Vec<(String, Option<TokenId>, usize)>> = vec![Vec::new(); n];
        let mut draws = 0u64;
        let mut pending: Vec<usize> = (0..n).collect();
        // Every alternative still to draw runs in one batch; a repeated one is drawn again
        // with the next seed, a few times at most, in the next round.
        while !pending.is_empty() {
            let mut batch = Vec::with_capacity(pending.len());
            for _ in &pending {
                let mut p = params.clone();
                p.sampling.seed = Some(base.wrapping_add(draws));
                draws += 1;
                let fork = session.fork()?;
                batch.push(self.begin(fork, prompt, &p, grammar, cancel.clone()));
            }
            for &i in &pending {
                held[i].clear();
            }
            while batch.iter().any(|d| !d.is_finished()) {
                self.step(&mut batch, |k, d| {
                    let i = pending[k];
                    if i == 0 {
                        on_delta(0, d);
                    } else {
                        held[i].push((d.text.to_owned(), d.token, d.generated));
                    }
                })?;
            }
            let mut again = Vec::new();
            for (&i, decoding) in pending.iter().zip(batch) {
                let g = decoding.finish().1?;
                let repeated = results.iter().flatten().any(|r| r.text == g.text);
                if repeated && draws < (n as u64) * 4 && g.stop_reason != StopReason::Cancelled {
                    again.push(i);
                    continue;
                }
                if i != 0 {
                    for (text, token, generated) in held[i].drain(..) {
                        on_delta(
                            i,
                            &Delta {
                                text: &text,
                                token,
                                generated,
                            },
                        );
                    }
                }
                results[i] = Some(g);
            }
            pending = again;
        }
        Ok(results.into_iter().flatten().collect())
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
        // A batch of one: the same steps as a line generated among others.
        let taken = std::mem::replace(session, Session::new(KvCache::new()));
        let mut decoding = self.begin(taken, prompt, params, grammar, cancel.clone());
        let mut failed = Ok(());
        while !decoding.is_finished() && failed.is_ok() {
            failed = self.step([&mut decoding], |_, d| on_delta(d));
        }
        let (taken, result) = decoding.finish();
        *session = taken;
        result
    }

    /// Runs `f` on the engine's thread pool (when [`EngineConfig::threads`] built one), so
    /// that candle's and the kernels' rayon work stays within the thread budget.
    ///
    /// [`EngineConfig::threads`]: super::EngineConfig::threads
    pub(crate) fn on_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
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
}
