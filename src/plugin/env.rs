//! What every request's prompt needs besides its assets: the world's facts, the settings,
//! the content policy, and whether a model is there to serve it.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::model::{DialogueModel, ModelState};
use super::npc::DialogueContext;
use super::request::{DialogueError, DialogueSettings};
use crate::memory::{Bm25Recall, Recall};

/// What every prompt needs besides its assets: the world's facts, the settings, and whether
/// a model is there to serve it.
#[derive(SystemParam)]
pub(crate) struct RequestEnv<'w> {
    pub(crate) world: Res<'w, DialogueContext>,
    pub(crate) settings: Res<'w, DialogueSettings>,
    pub(crate) content: Res<'w, crate::content::ContentPolicy>,
    /// The content policy of each persona and story, built once per version.
    pub(crate) policies: Res<'w, super::content::LinePolicies>,
    pub(crate) model: Res<'w, DialogueModel>,
    pub(crate) recall: Res<'w, DialogueRecall>,
}

/// What ranks an NPC's earlier moments against the player's new line
/// ([`DialogueSettings::recall_moments`]): [`Bm25Recall`] unless the game inserts another
/// (an embedding model, through the [`Recall`] trait). It runs on the inference worker's
/// thread.
///
/// ```
/// # use std::sync::Arc;
/// # use bevy::prelude::*;
/// # use bevy_llm_dialogue::prelude::*;
/// # use bevy_llm_dialogue::plugin::DialogueRecall;
/// struct Embeddings; // a game's own model
/// impl Recall for Embeddings {
///     fn recall(&self, query: &str, moments: &[&str], limit: usize) -> Vec<usize> {
///         // Rank `moments` by their similarity to `query`; the best `limit`, best first.
///         # let _ = (query, moments, limit);
///         Vec::new()
///     }
/// }
/// # let mut app = App::new();
/// app.insert_resource(DialogueRecall(Arc::new(Embeddings)));
/// ```
#[derive(Resource, Clone)]
pub struct DialogueRecall(pub std::sync::Arc<dyn Recall>);

impl Default for DialogueRecall {
    fn default() -> Self {
        Self(std::sync::Arc::new(Bm25Recall::default()))
    }
}

impl std::fmt::Debug for DialogueRecall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialogueRecall(..)")
    }
}

impl RequestEnv<'_> {
    /// Why no request can be served now, if the model failed to load.
    pub(crate) fn unavailable(&self) -> Option<DialogueError> {
        match &self.model.state {
            ModelState::Failed(reason) => Some(DialogueError::ModelUnavailable(reason.clone())),
            _ => None,
        }
    }
}
