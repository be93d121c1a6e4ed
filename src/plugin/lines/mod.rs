//! Lines: what game systems ask of an NPC ([`RequestLine`], [`CancelLine`]) and what comes
//! back ([`LineStarted`], [`LineDelta`]s and [`LineSentence`]s, [`LineFinished`] or
//! [`LineFailed`]), as messages
//! and as entity events on the NPC.

mod messages;
pub(crate) mod systems;

use bevy::prelude::*;

pub use messages::{
    CancelLine, LineDelta, LineFailed, LineFinished, LineSentence, LineStarted, RequestLine,
};

use super::{DialogueSystems, Flow};

/// Registers the line messages and the systems that queue, send and deliver lines.
pub(crate) struct LinesPlugin;

impl Plugin for LinesPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<RequestLine>()
            .add_message::<CancelLine>()
            .add_message::<LineStarted>()
            .add_message::<LineDelta>()
            .add_message::<LineSentence>()
            .add_message::<LineFinished>()
            .add_message::<LineFailed>()
            .register_type::<LineStarted>()
            .register_type::<LineDelta>()
            .register_type::<LineSentence>()
            .register_type::<LineFinished>()
            .register_type::<LineFailed>()
            .init_resource::<systems::WaitingLines>()
            .init_resource::<systems::LineSentences>()
            .init_resource::<systems::GroupLines>()
            .add_systems(
                PreUpdate,
                systems::deliver_lines
                    .in_set(Flow::Lines)
                    .in_set(DialogueSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (
                    systems::cancel_lines,
                    systems::queue_lines,
                    systems::dispatch_lines,
                )
                    .chain()
                    .in_set(Flow::Lines)
                    .in_set(DialogueSystems::Dispatch),
            )
            .add_observer(systems::on_npc_removed);
    }
}
