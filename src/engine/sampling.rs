//! Token sampling: repetition penalty, top-k, top-p, min-p, temperature, seeded randomness.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};
use super::tokenizer::TokenId;

/// How the next token is chosen. The defaults suit short in-character lines.
///
/// Filters apply in llama.cpp's order: repetition penalty, top-k, top-p, min-p, then
/// temperature. A temperature of 0 picks the most likely token (greedy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Randomness: 0 is greedy, 0.7 is lively, above 1.5 is incoherent. Range `0..=5`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide the odds of tokens seen in the last `repeat_last_n` tokens by this; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for reproducible output: the same seed, prompt and parameters give the same text.
    /// `None` draws a fresh seed for every generation.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// The same parameters with a fixed seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(EngineError::InvalidParameter { name, reason });
        if !(0.0..=5.0).contains(&self.temperature) {
            return bad(
                "temperature",
                format!("{} is outside 0..=5", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is outside [0, 1)", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return bad(
                "repeat_penalty",
                format!("{} is outside (0, 10]", self.repeat_penalty),
            );
        }
        Ok(())
    }
}

/// Draws tokens from logits according to [`SamplingParams`].
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<(TokenId, f32)>,
}

impl Sampler {
    /// A sampler; its random stream starts from `params.seed` (or from entropy).
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self {
            params,
            rng,
            candidates: Vec::new(),
        })
    }

    /// Picks the next token. `recent` is the token history the repetition penalty sees;
    /// `allowed`, if given, masks out every token for which it returns false.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        recent: &[TokenId],
        allowed: Option<&dyn Fn(TokenId) -> bool>,
    ) -> TokenId {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let window = &recent[recent.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::with_capacity(window.len());
            for &t in window {
                if seen.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if let Some(allowed) = allowed {
            for (id, l) in logits.iter_mut().enumerate() {
                if !allowed(id as TokenId) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }

        let cands = &mut self.candidates;
        cands.clear();
        // A `+inf` score is a certainty, not an error: it becomes the largest finite score
        // (it was dropped with the NaNs).
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan() && **l != f32::NEG_INFINITY)
                .map(|(i, &l)| (i as TokenId, l.min(f32::MAX))),
        );
        if cands.is_empty() {
            // Every token is masked or NaN: fall back to the raw argmax.
            return argmax(logits);
        }
        let by_logit = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1);
        if p.temperature <= 0.0 {
            return cands
                .iter()
                .min_by(|a, b| by_logit(a, b))
                .map_or(0, |c| c.0);
        }
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit);
            cands.truncate(p.top_k);
        }
        cands.sort_unstable_by(by_logit);

        // Probabilities at temperature 1 for top-p and min-p, as llama.cpp does.
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = cands.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        cands.truncate(keep);

        let weights: Vec<f32> = cands
            .iter()
            .map(|c| ((c.1 - max) / p.temperature).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (c, w) in cands.iter().zip(&weights) {
            r -= w;
            if r <= 0.0 {
                return c.0;
            }
        }
        cands[cands.len() - 1].0
    }
}

fn argmax(logits: &[f32]) -> TokenId {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as TokenId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, -1.0]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[], None), 1);
    }

    #[test]
    fn an_infinite_score_is_a_certainty_not_dropped() {
        let params = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        }
        .with_seed(3);
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..20 {
            let mut l = vec![5.0, f32::INFINITY, 4.0, f32::NAN];
            assert_eq!(s.sample(&mut l, &[], None), 1);
        }
    }

    #[test]
    fn repetition_penalty_can_change_the_choice() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params).unwrap();
        assert_eq!(s.sample(&mut logits(), &[1], None), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_mask_is_respected() {
        let params = SamplingParams {
            top_k: 1,
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[], None), 1);
            assert_eq!(s.sample(&mut logits(), &[], Some(&|t| t == 3)), 3);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let params = SamplingParams {
            min_p: 0.3,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        }
        .with_seed(7);
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[], None);
            // p(2)/p(1) = e^-1 = 0.37 >= 0.3; p(0)/p(1) = e^-2 = 0.14 < 0.3
            assert!(t == 1 || t == 2, "sampled {t}");
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let params = SamplingParams::default().with_seed(3);
        let draw = || {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&mut logits(), &[], None))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn absurd_parameters_are_rejected() {
        let bad = SamplingParams {
            temperature: -3.0,
            ..SamplingParams::default()
        };
        assert!(matches!(
            Sampler::new(bad),
            Err(EngineError::InvalidParameter {
                name: "temperature",
                ..
            })
        ));
        let nan = SamplingParams {
            top_p: f32::NAN,
            ..SamplingParams::default()
        };
        assert!(nan.validate().is_err());
    }
}
