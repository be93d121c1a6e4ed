//! Missing, corrupt, truncated and unsupported model files give typed errors, not panics.

use crate::common;

use std::io::Cursor;

use bevy_llm_dialogue::engine::{Engine, EngineConfig, EngineError};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn load_bytes(bytes: Vec<u8>, name: &str) -> Result<Engine, EngineError> {
    Engine::from_reader(Cursor::new(bytes), name, EngineConfig::default())
}

#[test]
fn missing_file_says_how_to_fetch_the_model() {
    let err = Engine::load("assets/models/nope.gguf", EngineConfig::default()).unwrap_err();
    assert!(matches!(err, EngineError::ModelNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nope.gguf") && msg.contains("scripts/fetch-model"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_gguf_is_rejected() {
    let err = load_bytes(
        b"PK\x03\x04 this is a zip, not a model".to_vec(),
        "fake.gguf",
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::InvalidGguf { .. }), "{err:?}");
    assert!(err.to_string().contains("fake.gguf"));
    let err = load_bytes(Vec::new(), "empty.gguf").unwrap_err();
    assert!(matches!(err, EngineError::InvalidGguf { .. }), "{err:?}");
}

#[test]
fn truncated_files_are_rejected_at_every_cut() {
    let full = std::fs::read(common::model_path()).unwrap();
    for cut in [8, 100, 4096, 1 << 20, full.len() / 2, full.len() - 1] {
        let err = load_bytes(full[..cut].to_vec(), "cut.gguf").unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidGguf { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn corrupt_header_bytes_never_panic() {
    let full = std::fs::read(common::model_path()).unwrap();
    let header = &full[..64 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let mut bytes = header.to_vec();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = 4 + (state as usize) % (bytes.len() - 4);
            bytes[at] = (state >> 32) as u8;
        }
        // Any outcome but a panic is fine; the header alone never loads.
        assert!(load_bytes(bytes, "fuzzed.gguf").is_err());
    }
}

fn tiny_gguf(architecture: &str) -> Vec<u8> {
    let tensor = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let arch = Value::String(architecture.to_owned());
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(
        &mut out,
        &[("general.architecture", &arch)],
        &[("t", &tensor)],
    )
    .unwrap();
    out.into_inner()
}

#[test]
fn unsupported_architecture_is_named() {
    let err = load_bytes(tiny_gguf("mamba"), "mamba.gguf").unwrap_err();
    match err {
        EngineError::UnsupportedArchitecture { architecture, file } => {
            assert_eq!(architecture, "mamba");
            assert_eq!(file, "mamba.gguf");
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
}

#[test]
fn supported_architecture_with_missing_metadata_is_a_metadata_error() {
    let err = load_bytes(tiny_gguf("llama"), "bare.gguf").unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Metadata { .. } | EngineError::Tokenizer(_)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("bare.gguf"), "{err}");
}
