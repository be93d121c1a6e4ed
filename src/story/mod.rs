//! Branching stories: a narrator writes scenes and offers the player choices; authors pin
//! parts of the story in `assets/stories/*.story.ron` and generated scenes fill the rest.
//!
//! Bevy-free: [`StoryAsset`] is what an author writes, [`Story`] is a playthrough (the graph
//! of scenes and the choices taken; serializable for save games). The worker writes the next
//! scene ([`Output::Scene`](crate::worker::Output::Scene)) from the settings here: prose first
//! ([`prose_params`]), then exactly the asked number of choices as a constrained list asked
//! for as the next turn ([`choices_ask`], [`choice_list_grammar`]; [`Scene::from_prose`]
//! checks both).
//!
//! NPC actions, which used to live here, are in [`crate::action`].

mod asset;
mod narrate;
mod playthrough;
mod scene;

pub use asset::{CHOICES, FixedChoice, FixedNode, StoryAsset};
pub use narrate::{
    SCENE_SENTENCES, choice_list_from_json, choice_list_grammar, choice_list_schema, choices_ask,
    list_params, prose_params,
};
pub use playthrough::{
    Choice, MAX_SAVED_CHOICES, MAX_SCENE_BYTES, MAX_SCENES, SceneNode, Story, StoryError,
};
pub use scene::{MIN_SCENE_WORDS, Scene};
