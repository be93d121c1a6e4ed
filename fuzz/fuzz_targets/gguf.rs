//! GGUF files: any bytes must load or give an error naming the file, never panic or abort.
#![no_main]
use bevy_llm_dialogue::engine::{Backend, Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = EngineConfig {
        backend: Backend::Cpu,
        ..EngineConfig::default()
    };
    let _ = Engine::from_reader(std::io::Cursor::new(data), "fuzz.gguf", config);
});
