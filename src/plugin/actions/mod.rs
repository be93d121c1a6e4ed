//! Actions and disposition: an NPC decides among declared actions ([`RequestAction`] →
//! [`ActionFinished`] or [`ActionFailed`]) and feels ([`UpdateDisposition`] →
//! [`DispositionChanged`], kept in [`NpcDisposition`]).

mod decide;
mod disposition;

use bevy::prelude::*;

#[expect(deprecated, reason = "the old names stay for one release")]
pub use decide::NpcAction;
pub use decide::{ActionFailed, ActionFinished, Deciding, RequestAction};
pub(crate) use disposition::with_disposition;
pub use disposition::{DispositionChanged, NpcDisposition, UpdateDisposition};

use super::{DialogueSystems, Flow};

/// Registers the decision and disposition messages, components and systems.
pub(crate) struct ActionsPlugin;

impl Plugin for ActionsPlugin {
    fn build(&self, app: &mut App) {
        app.register_type::<Deciding>()
            .register_type::<NpcDisposition>()
            .register_type::<ActionFinished>()
            .register_type::<ActionFailed>()
            .register_type::<DispositionChanged>()
            .add_message::<RequestAction>()
            .add_message::<ActionFinished>()
            .add_message::<ActionFailed>()
            .add_message::<UpdateDisposition>()
            .add_message::<DispositionChanged>()
            .init_resource::<decide::WaitingActions>()
            .add_systems(
                PreUpdate,
                decide::deliver_actions
                    .in_set(Flow::Actions)
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                decide::dispatch_actions
                    .in_set(Flow::Actions)
                    .in_set(DialogueSystems::Dispatch),
            );
    }
}
