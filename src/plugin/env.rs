//! What every request's prompt needs besides its assets: the world's facts, the settings,
//! the content policy, and whether a model is there to serve it.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::model::{DialogueModel, ModelState};
use super::npc::DialogueContext;
use super::request::{DialogueError, DialogueSettings};

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
