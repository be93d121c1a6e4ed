//! The narrator: a story entity ([`Narrator`]) that writes scenes ([`RequestScene`]) and takes
//! the player's choices ([`ChooseOption`]); scenes stream as [`SceneDelta`]s and end as
//! [`SceneFinished`] or [`SceneFailed`].

mod messages;
mod systems;

use bevy::prelude::*;

#[expect(deprecated, reason = "the old names stay for one release")]
pub use messages::SceneReady;
pub use messages::{
    ChooseOption, Narrating, Narrator, RequestScene, SceneDelta, SceneFailed, SceneFinished,
};

use super::{DialogueSystems, Flow};

/// Registers the narrator's components, messages and systems.
pub(crate) struct NarratorPlugin;

impl Plugin for NarratorPlugin {
    fn build(&self, app: &mut App) {
        app.register_type::<Narrator>()
            .register_type::<Narrating>()
            .register_type::<crate::story::Story>()
            .register_type::<SceneDelta>()
            .register_type::<SceneFinished>()
            .register_type::<SceneFailed>()
            .add_message::<RequestScene>()
            .add_message::<ChooseOption>()
            .add_message::<SceneDelta>()
            .add_message::<SceneFinished>()
            .add_message::<SceneFailed>()
            .init_resource::<systems::WaitingScenes>()
            .add_systems(
                PreUpdate,
                systems::deliver_scenes
                    .in_set(Flow::Scenes)
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (systems::take_choices, systems::dispatch_scenes)
                    .chain()
                    .in_set(Flow::Scenes)
                    .in_set(DialogueSystems::Dispatch),
            );
    }
}
