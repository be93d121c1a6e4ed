//! Copies of the default model with only their metadata edited, as an attacker would: each
//! loads or fails with a typed error. Before the limits, five of these aborted the process
//! (an allocation failure cannot be caught) or panicked inside candle.

use std::io::Cursor;
use std::sync::OnceLock;

use bevy_llm_dialogue::engine::{Engine, EngineConfig, EngineError};
use candle_core::quantized::gguf_file::{Content, Value};

use crate::common;
use crate::common::gguf_writer::{TensorEntry, dtype_code, encode_kv, write_gguf_encoded};

/// The default model's header, and its bytes.
struct Original {
    content: Content,
    bytes: Vec<u8>,
}

fn original() -> &'static Original {
    static ORIGINAL: OnceLock<Original> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let bytes = std::fs::read(common::model_path()).expect("scripts/fetch-model first");
        let content = Content::read(&mut Cursor::new(&bytes)).unwrap();
        Original { content, bytes }
    })
}

/// The default model with `edit` applied to its metadata and tensor table (name -> rows and
/// columns); the tensor data is the original's.
pub(crate) fn edited(
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorEntry>),
) -> Vec<u8> {
    edited_with(edit, Vec::new())
}

/// [`edited`], with metadata entries `extra` (encoded as the file holds them) after the
/// original's.
pub(crate) fn edited_with(
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorEntry>),
    extra: Vec<Vec<u8>>,
) -> Vec<u8> {
    let o = original();
    let mut meta: Vec<(String, Value)> = o
        .content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors: Vec<TensorEntry> = o
        .content
        .tensor_infos
        .iter()
        .map(|(name, info)| TensorEntry {
            name: name.clone(),
            dims: info.shape.dims().to_vec(),
            dtype: dtype_code(info.ggml_dtype),
            offset: info.offset,
        })
        .collect();
    tensors.sort_by_key(|t| t.offset);
    edit(&mut meta, &mut tensors);
    let mut kvs: Vec<Vec<u8>> = meta.iter().map(|(k, v)| encode_kv(k, v)).collect();
    kvs.extend(extra);
    write_gguf_encoded(
        &kvs,
        &tensors,
        &o.bytes[o.content.tensor_data_offset as usize..],
    )
}

fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    let slot = meta.iter_mut().find(|(k, _)| k == key);
    slot.unwrap_or_else(|| panic!("{key} is in the model")).1 = value;
}

pub(crate) fn load(bytes: Vec<u8>) -> Result<Engine, EngineError> {
    Engine::from_reader(Cursor::new(bytes), "edited.gguf", EngineConfig::default())
}

#[test]
fn an_unedited_copy_loads() {
    // The writer itself is right: the same metadata gives a working model.
    let engine = load(edited(|_, _| {})).expect("the copy loads");
    assert_eq!(engine.info().architecture, "llama");
}

#[test]
fn hostile_hyper_parameters_fail_with_a_typed_error() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "alignment 0 (a division by zero in candle's parser)",
            edited(|m, _| m.push(("general.alignment".into(), Value::U32(0)))),
            "GGUF",
        ),
        (
            "a billion layers",
            edited(|m, _| set(m, "llama.block_count", Value::U32(1_000_000_000))),
            "block_count",
        ),
        (
            "2^30 key length",
            edited(|m, _| m.push(("llama.attention.key_length".into(), Value::U32(1 << 30)))),
            "key_length",
        ),
        (
            "one key/value head for 1024 heads",
            edited(|m, _| {
                set(m, "llama.attention.head_count", Value::U32(1024));
                set(m, "llama.attention.head_count_kv", Value::U32(1));
            }),
            "head_count",
        ),
        (
            "a width the tensors do not have",
            edited(|m, _| set(m, "llama.embedding_length", Value::U32(1152))),
            "shape",
        ),
        (
            "a tensor with a zero dimension",
            edited(|_, t| t[0].dims[0] = 0),
            "dimensions",
        ),
        (
            "a vocabulary of a, aa, aaa, ... (the tokenizer build is super-linear)",
            edited(|m, _| {
                let Some((_, Value::Array(tokens))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
                else {
                    panic!("tokens")
                };
                for (i, t) in tokens.iter_mut().enumerate().skip(1000) {
                    *t = Value::String("a".repeat(i.min(4000)));
                }
            }),
            "tokenizer.ggml.tokens",
        ),
        (
            "a SentencePiece vocabulary whose splits give millions of merges",
            edited(|m, _| {
                set(m, "tokenizer.ggml.model", Value::String("llama".into()));
                let Some((_, Value::Array(tokens))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
                else {
                    panic!("tokens")
                };
                for (i, t) in tokens.iter_mut().enumerate().skip(1000) {
                    *t = Value::String("a".repeat(1 + i % 500));
                }
                let n = tokens.len();
                m.push((
                    "tokenizer.ggml.scores".into(),
                    Value::Array(vec![Value::F32(0.0); n]),
                ));
            }),
            "merges",
        ),
    ];
    for (what, bytes, names) in cases {
        match load(bytes) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => assert!(e.to_string().contains(names), "{what}: {e}"),
        }
    }
}

#[test]
fn a_four_billion_token_context_loads_with_the_context_in_use() {
    // Tables and caches are sized for the context in use (4096 here), not the file's claim.
    let engine = load(edited(|m, _| {
        set(m, "llama.context_length", Value::U32(u32::MAX))
    }))
    .expect("loads");
    assert_eq!(engine.info().n_ctx, 4096);
    assert_eq!(engine.info().train_context, u32::MAX as usize);
}
