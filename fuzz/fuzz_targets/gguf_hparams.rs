//! Tiny llama models whose hyper-parameters and tensor shapes are chosen by the fuzzer: each
//! loads or fails with an error (never an abort, a panic or a huge allocation), and one that
//! loads generates without a panic.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use bevy_llm_dialogue::engine::{
    CancelToken, Engine, EngineConfig, GenerateParams, SamplingParams,
};
use candle_core::quantized::gguf_file::Value;

#[path = "../../tests/common/gguf_writer.rs"]
mod gguf_writer;
use gguf_writer::{TensorEntry, write_gguf};

const TOKENS: [&str; 4] = ["a", "b", "ab", "<|endoftext|>"];

/// A hyper-parameter: usually small and plausible, sometimes anything.
fn param(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(1, 4)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0..=8)?
    })
}

fn model(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let keys = [
        "block_count",
        "embedding_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.key_length",
        "feed_forward_length",
        "context_length",
        "rope.dimension_count",
    ];
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(TOKENS.iter().map(|t| Value::String((*t).into())).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(3)),
    ];
    let mut values = Vec::new();
    for key in keys {
        let v = param(u)?;
        values.push(v as usize);
        if u.ratio(7, 8)? {
            meta.push((format!("llama.{key}"), Value::U32(v)));
        }
    }
    // Tensor shapes: from small numbers the fuzzer picks, so the file stays small whatever
    // the metadata claims.
    let small = |u: &mut Unstructured<'_>| -> Result<usize> { u.int_in_range(0..=8) };
    let n_layer = values[0].min(2);
    let embd = small(u)?;
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    let mut add = |name: String, dims: Vec<usize>| {
        let bytes = dims.iter().product::<usize>() as u64 * 4;
        tensors.push(TensorEntry {
            name,
            dims,
            dtype: 0,
            offset,
        });
        offset += bytes.next_multiple_of(32);
    };
    add("token_embd.weight".into(), vec![TOKENS.len(), embd]);
    add("output_norm.weight".into(), vec![embd]);
    for i in 0..n_layer {
        for name in ["attn_norm", "ffn_norm"] {
            add(format!("blk.{i}.{name}.weight"), vec![embd]);
        }
        for name in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let rows = small(u)?;
            let cols = small(u)?;
            add(format!("blk.{i}.{name}.weight"), vec![rows, cols]);
        }
    }
    let data = vec![0u8; offset as usize];
    Ok(write_gguf(&meta, &tensors, &data))
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let Ok(file) = model(&mut u) else {
        return;
    };
    let Ok(mut engine) = Engine::from_reader(
        std::io::Cursor::new(file),
        "fuzz.gguf",
        EngineConfig::default(),
    ) else {
        return;
    };
    let mut session = engine.new_session();
    let params = GenerateParams {
        max_tokens: 2,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let _ = engine.generate(&mut session, &[0, 1], &params, &CancelToken::new(), |_| {});
});
