//! The engine alone, with the real default model: one test binary (every test binary links
//! candle), a module per concept. Builds and runs without the `bevy` feature.

#[path = "../common/mod.rs"]
mod common;

mod alloc_meter;
mod architectures;
mod bad_models;
mod batching;
mod cancel_and_context;
mod cards;
mod chat_template;
mod content;
mod families;
mod fuzz_regressions;
mod generation;
mod hostile_gguf;
mod hostile_models;
mod kernels;
mod lore;
#[cfg(feature = "remote")]
mod remote;
#[cfg(feature = "remote")]
mod remote_hostile;
mod story;
mod tokenizer_vs_llamacpp;
mod worker;
