//! Generation settings as layers: every field optional, and each layer sets only what it
//! names. A line's settings are the plugin's defaults under the persona's, the story's, the
//! NPC's and the request's, merged field by field by [`LineSettings::merge`]: a request that
//! sets a seed keeps the persona's temperature.
//!
//! ```
//! use bevy_llm_dialogue::engine::GenerateParams;
//! use bevy_llm_dialogue::settings::LineSettings;
//!
//! let persona = LineSettings::default().temperature(0.9).max_tokens(60);
//! let request = LineSettings::default().seed(7);
//! let params = LineSettings::merge([&persona, &request]).applied_to(&GenerateParams::default());
//! assert_eq!((params.sampling.temperature, params.sampling.seed), (0.9, Some(7)));
//! assert_eq!(params.max_tokens, 60);
//! ```

#[cfg(feature = "bevy")]
use bevy::prelude::{ReflectComponent, ReflectDefault};
use serde::{Deserialize, Serialize};

use crate::engine::{GenerateParams, SamplingParams};

/// Generation settings of one layer (a persona, a story, an NPC, a request); `None` leaves
/// the layer below in force. In RON, name only the fields you set:
/// `(temperature: Some(0.9), seed: Some(7))`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "bevy",
    derive(bevy::ecs::component::Component, bevy::reflect::Reflect)
)]
#[cfg_attr(feature = "bevy", reflect(Component, Clone, Debug, Default, PartialEq))]
#[serde(default, deny_unknown_fields)]
pub struct LineSettings {
    /// Longest line in tokens.
    pub max_tokens: Option<usize>,
    /// Most sentences in a line.
    pub max_sentences: Option<usize>,
    /// [`SamplingParams::temperature`].
    pub temperature: Option<f32>,
    /// [`SamplingParams::top_k`].
    pub top_k: Option<usize>,
    /// [`SamplingParams::top_p`].
    pub top_p: Option<f32>,
    /// [`SamplingParams::min_p`].
    pub min_p: Option<f32>,
    /// [`SamplingParams::repeat_penalty`].
    pub repeat_penalty: Option<f32>,
    /// [`SamplingParams::repeat_last_n`].
    pub repeat_last_n: Option<usize>,
    /// [`SamplingParams::seed`]: the same seed, prompt and settings give the same text.
    pub seed: Option<u64>,
    /// Draws to keep the best of (1..=8; lines only).
    pub best_of: Option<usize>,
}

impl LineSettings {
    /// The layers merged field by field, later layers over earlier ones.
    pub fn merge<'a>(layers: impl IntoIterator<Item = &'a LineSettings>) -> LineSettings {
        let mut merged = LineSettings::default();
        for layer in layers {
            macro_rules! over {
                ($($field:ident),*) => {$(
                    if layer.$field.is_some() {
                        merged.$field = layer.$field;
                    }
                )*};
            }
            over!(
                max_tokens,
                max_sentences,
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
                repeat_last_n,
                seed,
                best_of
            );
        }
        merged
    }

    /// `base` with the fields this sets (`best_of` is not a generation parameter: read it
    /// from the merged settings).
    pub fn applied_to(&self, base: &GenerateParams) -> GenerateParams {
        let mut params = base.clone();
        let s = &mut params.sampling;
        macro_rules! set {
            ($target:expr, $($field:ident),*) => {$(
                if let Some(v) = self.$field {
                    $target.$field = v;
                }
            )*};
        }
        set!(
            s,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n
        );
        if self.seed.is_some() {
            s.seed = self.seed;
        }
        set!(params, max_tokens);
        if self.max_sentences.is_some() {
            params.max_sentences = self.max_sentences;
        }
        params
    }

    /// Longest line in tokens.
    pub fn max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Most sentences in a line.
    pub fn max_sentences(mut self, n: usize) -> Self {
        self.max_sentences = Some(n);
        self
    }

    /// Randomness: 0 is greedy.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// A fixed seed, keeping every other setting of the layers below.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Draws to keep the best of.
    pub fn best_of(mut self, n: usize) -> Self {
        self.best_of = Some(n);
        self
    }
}

impl From<&SamplingParams> for LineSettings {
    /// Every sampling field set: a whole [`SamplingParams`] replaces the sampling of the
    /// layers below, but for a `seed` of `None`, which leaves theirs.
    fn from(s: &SamplingParams) -> Self {
        Self {
            temperature: Some(s.temperature),
            top_k: Some(s.top_k),
            top_p: Some(s.top_p),
            min_p: Some(s.min_p),
            repeat_penalty: Some(s.repeat_penalty),
            repeat_last_n: Some(s.repeat_last_n),
            seed: s.seed,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_seed_keeps_the_persona_temperature_and_length() {
        let defaults = GenerateParams::default();
        let persona = LineSettings::from(&SamplingParams {
            temperature: 1.1,
            top_k: 12,
            ..SamplingParams::default()
        })
        .max_tokens(50);
        let npc = LineSettings::default().max_sentences(2);
        let request = LineSettings::default().seed(42);
        let merged = LineSettings::merge([&persona, &npc, &request]);
        let params = merged.applied_to(&defaults);
        assert_eq!(params.sampling.temperature, 1.1);
        assert_eq!(params.sampling.top_k, 12);
        assert_eq!(params.sampling.seed, Some(42));
        assert_eq!(params.max_tokens, 50);
        assert_eq!(params.max_sentences, Some(2));
        // Fields no layer sets keep the defaults.
        assert_eq!(params.sampling.top_p, defaults.sampling.top_p);
        assert_eq!(params.stop, defaults.stop);
    }

    #[test]
    fn later_layers_win_field_by_field() {
        let low = LineSettings::default().temperature(0.2).seed(1).best_of(3);
        let high = LineSettings::default().temperature(0.9);
        let merged = LineSettings::merge([&low, &high]);
        assert_eq!(merged.temperature, Some(0.9));
        assert_eq!(merged.seed, Some(1));
        assert_eq!(merged.best_of, Some(3));
        assert_eq!(LineSettings::merge([]), LineSettings::default());
    }

    #[test]
    fn a_layer_reads_from_ron_naming_only_its_fields() {
        let layer: LineSettings = ron::from_str("(temperature: Some(0.5), seed: Some(9))").unwrap();
        assert_eq!(layer, LineSettings::default().temperature(0.5).seed(9));
        assert!(ron::from_str::<LineSettings>("(temprature: Some(0.5))").is_err());
    }
}
