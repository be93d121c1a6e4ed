//! Helpers shared by the integration tests. They run the real default model, fetched by
//! `scripts/fetch-model`.

#![allow(dead_code, reason = "each test binary uses a different subset")]

#[cfg(feature = "remote")]
pub mod fake_server;
pub mod gguf_writer;

use std::path::PathBuf;

use bevy_llm_dialogue::engine::{Engine, EngineConfig};

/// The default model's path; panics with the fix if it is missing.
pub fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-model` first",
        path.display()
    );
    path
}

/// Loads the default model.
pub fn engine() -> Engine {
    engine_with(EngineConfig::default())
}

/// Loads the default model with a configuration.
pub fn engine_with(config: EngineConfig) -> Engine {
    Engine::load(model_path(), config).expect("the default model loads")
}

/// A scratch directory for files a test writes.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The Gemma 3 270M base model (`Q4_K_M`) for the gemma3 tests; panics with the fix if it is
/// missing. Gemma terms apply: it is fetched for tests and benchmarks only.
pub fn gemma_path() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/models/gemma-3-270m-q4_k_m.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-model --gemma` first",
        path.display()
    );
    path
}
