//! The Bevy plugin in headless apps (`MinimalPlugins` + `AssetPlugin`) with the real model:
//! one test binary (every test binary links candle and Bevy), a module per concept, one
//! harness.

#![cfg(feature = "bevy")]

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod actions;
mod assets;
mod cancel;
mod cards;
mod content;
mod conversation;
mod disposition;
mod history;
mod lines;
mod lore;
mod memory;
mod model;
mod narrator;
#[cfg(feature = "remote")]
mod remote;
mod shutdown;
mod speech;
mod text_adventure;
#[cfg(feature = "yarn")]
mod yarn;
