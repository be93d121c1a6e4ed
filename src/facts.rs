//! Facts from the game: what prompt templates and lorebooks read (`world`, `npc`). Below
//! both `prompt` and `lore`, which use it; re-exported as `prompt::Facts`.

use std::collections::BTreeMap;

#[cfg(feature = "bevy")]
use bevy::prelude::ReflectDefault;

/// Facts from the game that templates can use: `{{ world.time_of_day }}`,
/// `{% if npc.quest_given %}`. Values are JSON-like (strings, numbers, booleans, lists).
/// A map from name to value (it derefs to a `BTreeMap`); it reflects as one opaque value.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(
    feature = "bevy",
    derive(bevy::reflect::Reflect),
    reflect(opaque, Clone, Debug, Default, PartialEq)
)]
#[serde(transparent)]
pub struct Facts(pub BTreeMap<String, serde_json::Value>);

impl Facts {
    /// No facts.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::ops::Deref for Facts {
    type Target = BTreeMap<String, serde_json::Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Facts {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: Into<String>, V: Into<serde_json::Value>> FromIterator<(K, V)> for Facts {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
