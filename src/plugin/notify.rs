//! The one way results reach a game: written as a message (any system can read it) and
//! triggered as an entity event on its NPC or story (its observers run), with one rule for an
//! entity that was despawned meanwhile: the message is still written, no event is triggered.

use bevy::prelude::*;

/// Writes `ev` as a message and, if its target entity still exists, triggers it on it.
pub(crate) fn notify<E>(commands: &mut Commands, messages: &mut MessageWriter<E>, ev: E)
where
    E: Message + EntityEvent + Clone,
    for<'t> E: Event<Trigger<'t>: Default>,
{
    let target = ev.event_target();
    messages.write(ev.clone());
    if commands.get_entity(target).is_ok() {
        commands.trigger(ev);
    }
}
