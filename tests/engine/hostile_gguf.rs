//! GGUF files whose layout, not their hyper-parameters, asked for the memory: metadata arrays
//! that candle's parser turns into 32 bytes an element, tensors that share bytes (each packed
//! again from them), and `Q2_K` matrices that were dequantized whole to `f32` before
//! repacking. Each fails with a typed error naming the key or the tensors, or loads within a
//! bounded peak. Files are written at test time; none is committed.

use std::io::Cursor;

use bevy_llm_dialogue::engine::{Engine, EngineConfig, EngineError, limits};
use candle_core::quantized::gguf_file::Value;

use crate::alloc_meter;
use crate::common::gguf_writer::{TensorEntry, byte_array_kv, encode_kv, write_gguf};
use crate::hostile_models::{edited, edited_with, load};

/// The reason of the [`EngineError::InvalidGguf`] that loading `bytes` gives.
fn invalid(what: &str, bytes: Vec<u8>) -> String {
    match load(bytes) {
        Err(EngineError::InvalidGguf { file, reason }) => {
            assert_eq!(file, "edited.gguf", "{what}");
            reason
        }
        Err(other) => panic!("{what}: expected InvalidGguf, got {other:?}"),
        Ok(_) => panic!("{what}: loaded"),
    }
}

/// A metadata entry of type `ty` (an array of `u8`, or a string) that claims `n` elements
/// or bytes and holds none.
fn claiming_kv(key: &str, ty: u32, n: u64) -> Vec<u8> {
    let mut out = encode_kv(key, &Value::U8(0));
    out.truncate(out.len() - 5);
    out.extend(ty.to_le_bytes());
    if ty == 9 {
        out.extend(0u32.to_le_bytes());
    }
    out.extend(n.to_le_bytes());
    out
}

#[test]
fn metadata_over_the_caps_fails_naming_the_key() {
    // Before, candle parsed each of these (or refused it without naming the key): the
    // element cap alone would have taken 230 MB of values, and at 512 MiB of bytes, 16 GiB.
    let over = limits::MAX_METADATA_ELEMENTS as usize + 1;
    let nested = Value::Array(vec![Value::Array(vec![Value::Array(vec![Value::U8(1)])])]);
    /// What the file holds, its extra metadata entries (encoded), what the error names.
    type Case = (&'static str, Vec<Vec<u8>>, [&'static str; 2]);
    let cases: Vec<Case> = vec![
        (
            "more array elements than the cap in all",
            vec![byte_array_kv("hostile.bytes", over)],
            ["`hostile.bytes`", "in all"],
        ),
        (
            "an array longer than the rest of the file",
            vec![claiming_kv("hostile.claim", 9, 1 << 40)],
            ["`hostile.claim`", "1099511627776 elements"],
        ),
        (
            "a string longer than the rest of the file",
            vec![claiming_kv("hostile.string", 8, 1 << 40)],
            ["`hostile.string`", "truncated"],
        ),
        (
            "arrays of arrays of arrays",
            vec![encode_kv("hostile.nested", &nested)],
            ["`hostile.nested`", "nested more than 2 deep"],
        ),
        (
            "a hundred thousand metadata entries",
            (0..100_000)
                .map(|i| encode_kv(&format!("hostile.{i}"), &Value::U8(0)))
                .collect(),
            ["metadata entries", "65536 allowed"],
        ),
    ];
    for (what, extra, names) in cases {
        let reason = invalid(what, edited_with(|_, _| {}, extra));
        for name in names {
            assert!(reason.contains(name), "{what}: {reason}");
        }
    }
}

#[test]
fn tensors_that_share_bytes_fail_naming_both() {
    // Before, both loaded: every tensor is packed from its own region, so a file whose
    // tensors all start at offset 0 grew to tens of GB.
    type Edit = fn(&mut Vec<TensorEntry>) -> (String, String);
    let cases: [(&str, Edit); 2] = [
        ("two tensors at one offset", |t| {
            t[1].offset = t[0].offset;
            (t[0].name.clone(), t[1].name.clone())
        }),
        ("a tensor starting inside another", |t| {
            t[2].offset = t[1].offset + 32;
            (t[1].name.clone(), t[2].name.clone())
        }),
    ];
    for (what, edit) in cases {
        let mut names = None;
        let reason = invalid(what, edited(|_, t| names = Some(edit(t))));
        let (a, b) = names.unwrap();
        assert!(
            reason.contains("overlap")
                && reason.contains(&format!("`{a}`"))
                && reason.contains(&format!("`{b}`")),
            "{what}: {reason}"
        );
    }
}

/// A one-layer llama of width 256 whose matrices are `Q2_K` (zero bytes: zero weights), with
/// a feed-forward layer of `n_ff`, and a tokenizer of four tokens.
fn q2_k_llama(n_ff: usize) -> Vec<u8> {
    let tokens = ["a", "b", "ab", "<|endoftext|>"];
    let meta: Vec<(String, Value)> = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(256)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.feed_forward_length", Value::U32(n_ff as u32)),
        ("llama.context_length", Value::U32(256)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String((*t).into())).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(3)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    let mut add = |name: &str, dims: Vec<usize>| {
        let n = dims.iter().product::<usize>();
        // `Q2_K`: 84 bytes a block of 256; vectors and the 4-token table in `f32`.
        let (dtype, bytes) = match dims.as_slice() {
            [_, 256] | [256, _] if n >= 256 * 256 => (10, n / 256 * 84),
            _ => (0, n * 4),
        };
        tensors.push(TensorEntry {
            name: name.into(),
            dims,
            dtype,
            offset,
        });
        offset += (bytes as u64).next_multiple_of(32);
    };
    add("token_embd.weight", vec![tokens.len(), 256]);
    add("output_norm.weight", vec![256]);
    add("blk.0.attn_norm.weight", vec![256]);
    add("blk.0.ffn_norm.weight", vec![256]);
    for name in ["attn_q", "attn_k", "attn_v", "attn_output"] {
        add(&format!("blk.0.{name}.weight"), vec![256, 256]);
    }
    add("blk.0.ffn_gate.weight", vec![n_ff, 256]);
    add("blk.0.ffn_up.weight", vec![n_ff, 256]);
    add("blk.0.ffn_down.weight", vec![256, n_ff]);
    write_gguf(&meta, &tensors, &vec![0; offset as usize])
}

#[test]
fn q2_k_matrices_load_without_a_whole_copy_in_f32() {
    // Three feed-forward matrices of 16.8 M weights each: 17.8 MB apiece requantized to
    // `Q8_0`, 67 MB in `f32`. Dequantizing one whole (and copying it out of the tensor)
    // held 134 MB beyond what the model keeps; in pieces, a few MB.
    let file = q2_k_llama(65_536);
    let (engine, peak, kept) = alloc_meter::measure(|| {
        Engine::from_reader(Cursor::new(&file[..]), "q2_k.gguf", EngineConfig::default())
    });
    let engine = engine.expect("the Q2_K model loads");
    assert_eq!(engine.info().architecture, "llama");
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    assert!(
        peak < kept + (32 << 20),
        "the load peaked at {:.1} MiB and keeps {:.1} MiB",
        mib(peak),
        mib(kept)
    );
}
