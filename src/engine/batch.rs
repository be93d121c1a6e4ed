//! Generations in progress, advanced together: every step runs one forward pass for all of
//! them (a prompt chunk for those still reading their prompt, one token for the others), so
//! many NPCs share each pass over the weights instead of queueing behind one another.
//!
//! [`Engine::generate`] is a batch of one over the same code, so a line generated alone and
//! one generated among others are the same line.

use std::time::{Duration, Instant};

use super::error::{EngineError, Result};
use super::grammar::{self, Grammar};
use super::guard::GuardHit;
use super::load::Engine;
use super::model::{Fed, exp};
use super::params::{
    CancelToken, Delta, GenerateParams, Generation, GenerationStats, Session, StopReason,
};
use super::sampling::Sampler;
use super::stream::{Mark, TextStream};
use super::tokenizer::TokenId;

/// Prompt tokens one sequence computes per step; bounds memory and lets a cancel (and the
/// other sequences' next tokens) land mid-prompt.
pub(crate) const PREFILL_CHUNK: usize = 256;

/// Tokens one step computes for all its sequences together: each generating sequence takes
/// one, the prompts share the rest. Bounds the time of a step, so a long prompt joining
/// delays the others' next token by at most one chunk's compute.
const STEP_TOKENS: usize = 256;

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
pub struct Decoding {
    session: Session,
    prompt: Vec<TokenId>,
    params: GenerateParams,
    cancel: CancelToken,
    sampler: Option<Sampler>,
    matcher: Option<Box<llguidance::Matcher>>,
    stream: TextStream,
    whole_sentences: bool,
    /// Past this many generated tokens, only whole sentences stream.
    hold_from: usize,
    stats: GenerationStats,
    generated: Vec<TokenId>,
    started: Instant,
    first_token_at: Option<Instant>,
    /// The token sampled last, fed in the next step.
    next: Option<TokenId>,
    /// The last logits as the model gave them.
    raw: Vec<f32>,
    /// Per generated token: where the stream stood after it, and its log-probability.
    marks: Vec<(Mark, f64)>,
    /// Tokens taken back by the guard, by the position they may not be sampled at again.
    banned: Vec<(usize, TokenId)>,
    /// The rules of the guard's hits.
    filtered: Vec<String>,
    outcome: Option<Result<Generation>>,
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

    fn fail(&mut self, error: EngineError) {
        self.outcome = Some(Err(error));
    }

    /// Ends with `reason`: flushes what the stream held back and builds the result.
    fn end(&mut self, reason: StopReason, on_delta: &mut dyn FnMut(&Delta<'_>)) {
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
    /// rollback budget is spent, or the hit starts inside a token that was partly shown.
    fn roll_back(&mut self, hit: GuardHit) -> bool {
        self.filtered.push(hit.rule);
        let budget = self.params.guard.as_ref().map_or(0, |g| g.max_rollbacks());
        if self.stats.rollbacks >= budget || self.generated.is_empty() {
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
    fn input(&self, budget: usize) -> &[TokenId] {
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

    /// The guard flagged `d`'s text: it goes back to before the hit, or, past its budget,
    /// ends before it (a structured output fails: its structure would be cut).
    fn filtered(&self, d: &mut Decoding, hit: GuardHit, on_delta: &mut dyn FnMut(&Delta<'_>)) {
        if d.roll_back(hit) {
            return;
        }
        if d.matcher.is_some() {
            let rule = d.filtered.last().cloned().unwrap_or_default();
            return d.fail(EngineError::Filtered {
                rule,
                rollbacks: d.stats.rollbacks,
            });
        }
        d.end(StopReason::Filtered, on_delta);
    }

    /// Samples the next token of `d` from `logits`, streams it and decides whether `d` ends.
    fn sample(&self, d: &mut Decoding, logits: &mut [f32], on_delta: &mut dyn FnMut(&Delta<'_>)) {
        // The raw scores, kept for the sampled token's log-probability (sampling rewrites
        // them), in a buffer the decoding keeps from token to token.
        d.raw.clear();
        d.raw.extend_from_slice(logits);
        let position = d.generated.len();
        for &(_, token) in d.banned.iter().filter(|(at, _)| *at == position) {
            if let Some(l) = logits.get_mut(token as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let sampler = d
            .sampler
            .as_mut()
            .expect("a started decoding has a sampler");
        let token = match d.matcher.as_deref_mut() {
            None => {
                let _span = tracing::trace_span!("sample").entered();
                sampler.sample(logits, &d.session.tokens, None)
            }
            Some(m) => {
                let _span = tracing::trace_span!("sample_constrained").entered();
                let masked = Instant::now();
                let mask = match m.compute_mask() {
                    Ok(mask) => mask,
                    Err(e) => return d.fail(grammar::grammar_error(e)),
                };
                d.stats.constraint_time += masked.elapsed();
                if mask.is_zero() {
                    let why = m
                        .get_error()
                        .unwrap_or_else(|| "no token can continue the output".into());
                    return d.fail(grammar::grammar_error(why));
                }
                let token =
                    sampler.sample(logits, &d.session.tokens, Some(&|t| mask.is_allowed(t)));
                let consumed = Instant::now();
                if !self.tokenizer.is_end_of_generation(token)
                    && let Err(e) = m.consume_token(token)
                {
                    return d.fail(grammar::grammar_error(e));
                }
                d.stats.constraint_time += consumed.elapsed();
                token
            }
        };
        d.stats.generated_tokens += 1;
        let logprob = log_probability(&d.raw, token);
        d.stats.logprob += logprob;
        if d.stats.time_to_first_token.is_zero() {
            d.stats.time_to_first_token = d.started.elapsed();
            d.first_token_at = Some(Instant::now());
        }
        d.next = Some(token);
        if !d.params.ignore_eos && self.tokenizer.is_end_of_generation(token) {
            // The text as it would end must pass the guard first.
            if let Some(hit) = d.stream.final_hit() {
                return self.filtered(d, hit, on_delta);
            }
            return d.end(StopReason::Eos, on_delta);
        }
        let structure_done = d.matcher.as_deref().is_some_and(|m| m.is_stopped());
        d.generated.push(token);
        if d.whole_sentences && d.stats.generated_tokens > d.hold_from {
            d.stream.hold_partial_sentences();
        }
        let push = d.stream.push(self.tokenizer.token_bytes(token));
        if let Some(hit) = push.hit {
            return self.filtered(d, hit, on_delta);
        }
        d.marks.push((d.stream.mark(), logprob));
        on_delta(&Delta {
            text: &push.delta,
            token: Some(token),
            generated: d.stats.generated_tokens,
        });
        let constrained = d.matcher.is_some();
        let reason = if push.stopped {
            Some(StopReason::StopString)
        } else if push.sentences_done {
            Some(StopReason::SentenceLimit)
        } else if structure_done {
            Some(StopReason::Eos)
        } else if d.stats.generated_tokens >= d.params.max_tokens {
            if constrained {
                return d.fail(grammar::grammar_error(format!(
                    "max_tokens ({}) ran out before the structured output was complete",
                    d.params.max_tokens
                )));
            }
            Some(StopReason::MaxTokens)
        } else if d.session.tokens.len() + 1 >= self.info.n_ctx {
            if constrained {
                return d.fail(grammar::grammar_error(
                    "the context filled up before the structured output was complete",
                ));
            }
            Some(StopReason::ContextFull)
        } else {
            None
        };
        if let Some(reason) = reason {
            // A budget end judges the last word too: a hit there is taken back (freeing
            // tokens to write on) or ends the text as filtered.
            if matches!(reason, StopReason::MaxTokens | StopReason::ContextFull)
                && let Some(hit) = d.stream.final_hit()
            {
                return self.filtered(d, hit, on_delta);
            }
            d.end(reason, on_delta);
        }
    }
}

/// The natural-log probability of `token` under the softmax of `logits`; non-finite scores
/// count as impossible.
pub(crate) fn log_probability(logits: &[f32], token: TokenId) -> f64 {
    // Every decoded token pays for this over the whole vocabulary (262,144 entries on Gemma 3),
    // so both passes are written for the compiler to vectorize: eight independent lanes, a
    // select instead of a branch, and the crate's f32 exponential (`f64::exp` per entry was a
    // library call each).
    const LANES: usize = 8;
    let finite = |v: f32| v.is_finite();
    let mut top = [f32::NEG_INFINITY; LANES];
    let mut eights = logits.chunks_exact(LANES);
    for eight in &mut eights {
        for (t, &v) in top.iter_mut().zip(eight) {
            *t = if finite(v) && v > *t { v } else { *t };
        }
    }
    let max = eights
        .remainder()
        .iter()
        .chain(&top)
        .filter(|v| finite(**v))
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let Some(&chosen) = logits.get(token as usize).filter(|l| l.is_finite()) else {
        return f64::NEG_INFINITY;
    };
    // Each term is at most 1: f32 lanes over a chunk, the chunks summed in f64.
    let mut sum = 0f64;
    for chunk in logits.chunks(1024) {
        let mut lanes = [0f32; LANES];
        let mut eights = chunk.chunks_exact(LANES);
        for eight in &mut eights {
            for (lane, &v) in lanes.iter_mut().zip(eight) {
                let e = exp(v - max);
                *lane += if finite(v) { e } else { 0.0 };
            }
        }
        for &v in eights.remainder() {
            sum += if finite(v) {
                f64::from(exp(v - max))
            } else {
                0.0
            };
        }
        sum += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
    }
    f64::from(chosen - max) - sum.ln()
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

    #[test]
    fn log_probability_over_a_large_vocabulary_matches_f64() {
        // Longer than a chunk and not a multiple of the lanes, with masked and NaN scores
        // spread through it.
        let logits: Vec<f32> = (0..5003u32)
            .map(|i| match i % 97 {
                0 => f32::NEG_INFINITY,
                1 => f32::NAN,
                _ => ((i * 7919) % 1000) as f32 / 40.0 - 12.0,
            })
            .collect();
        let finite = || logits.iter().filter(|l| l.is_finite());
        let max = finite().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let log_sum = finite()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln();
        for token in [2, 1000, 4999, 5002] {
            let exact = f64::from(logits[token] - max) - log_sum;
            let ours = log_probability(&logits, token as u32);
            assert!((ours - exact).abs() < 1e-5, "{token}: {ours} vs {exact}");
        }
        assert_eq!(log_probability(&logits, 97), f64::NEG_INFINITY);
    }
}
