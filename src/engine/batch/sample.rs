//! Choosing each next token of a [`Decoding`]: banned and grammar-masked tokens, the
//! token's log-probability, streaming it, the guard's verdict, and every reason to stop.

use std::time::Instant;

use super::super::error::EngineError;
use super::super::grammar;
use super::super::guard::GuardHit;
use super::super::load::Engine;
use super::super::model::exp;
use super::super::params::{Delta, StopReason};
use super::super::tokenizer::TokenId;
use super::Decoding;

impl Engine {
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
    pub(super) fn sample(
        &self,
        d: &mut Decoding,
        logits: &mut [f32],
        on_delta: &mut dyn FnMut(&Delta<'_>),
    ) {
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
