//! The Bevy plugin in headless apps (`MinimalPlugins` + `AssetPlugin`) with the real model:
//! one test binary (every test binary links candle and Bevy), a module per concept, one
//! harness.

#![cfg(all(feature = "bevy", feature = "remote"))]

#[path = "../common/mod.rs"]
mod common;
mod fake_server;
mod harness;

mod actions;
mod assets;
mod cancel;
mod history;
mod lines;
mod model;
mod narrator;
mod remote;
mod shutdown;
mod text_adventure;
