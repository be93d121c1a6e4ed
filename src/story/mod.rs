//! Branching stories: a narrator writes scenes and offers the player choices; authors pin
//! parts of the story in `assets/stories/*.story.ron` and generated scenes fill the rest.
//!
//! Plain data, Bevy-free: [`StoryAsset`] is what an author writes, [`Story`] is a playthrough
//! (the graph of scenes and the choices taken; serializable for save games), and
//! [`scene_schema`] is the JSON schema the narrator's output is constrained to, so every
//! scene parses and has exactly the asked number of choices.
//!
//! NPC actions, which used to live here, are in [`crate::action`].

mod asset;
mod playthrough;
mod scene;

pub use asset::{CHOICES, FixedChoice, FixedNode, StoryAsset};
pub use playthrough::{Choice, SceneNode, Story, StoryError};
pub use scene::{Scene, SceneStream, scene_schema};
