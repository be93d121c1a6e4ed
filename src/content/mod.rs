//! Content control: what characters must never say.
//!
//! A [`ContentPolicy`] lists banned words and phrases, a profanity level (through the
//! [`rustrict`] filter), and out-of-character phrases ("as an AI", chat markup). The
//! generator enforces it while it writes: a flagged phrase is caught as it forms, its tokens
//! are taken back and others sampled in their place, so it never streams out (see
//! [`Guard`]). The same rules check the player's line before the model sees it.
//!
//! ```
//! use bevy_llm_dialogue::content::{ContentPolicy, Profanity};
//!
//! let policy = ContentPolicy {
//!     banned: vec!["dragon".into(), "the old king".into()],
//!     profanity: Profanity::Mild,
//!     ..ContentPolicy::default()
//! };
//! let filter = policy.filter();
//! assert!(filter.check("Dragons sleep under the hill.").is_some()); // plural, any case
//! assert!(filter.check("The Old King's crown is lost.").is_some());
//! assert!(filter.check("As an AI, I cannot help.").is_some()); // out of character
//! assert!(filter.check("The smith mends your blade.").is_none());
//! assert_eq!(filter.censor("Those dragons again!"), "Those ******* again!");
//! ```
//!
//! `policy` holds the rules as a game writes them ([`ContentPolicy`], [`ContentOverride`]),
//! `filter` checks text against them ([`ContentFilter`]), and `words` finds words and their
//! inflections for both.
//!
//! [`Guard`]: crate::engine::Guard

mod filter;
mod identity;
mod policy;
mod words;

pub use filter::ContentFilter;
pub use identity::IdentityCheck;
pub use policy::{
    ContentOverride, ContentPolicy, DEFAULT_OUT_OF_CHARACTER, MAX_CONTENT_RULE_BYTES,
    MAX_CONTENT_RULES, PlayerLineCheck, Profanity,
};
