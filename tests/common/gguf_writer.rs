//! Writing GGUF files byte by byte, for tests and fuzz targets that need files a normal
//! writer would refuse to make (zero dimensions, hostile metadata). Shared by
//! `tests/engine/hostile_models.rs` and `fuzz/fuzz_targets/gguf_hparams.rs`.

#![allow(dead_code, reason = "each user needs a different subset")]

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

/// One tensor's entry in the table: name, shape as (rows, columns) like candle's, the GGML
/// type code, and its offset in the data section.
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: u32,
    pub offset: u64,
}

/// The GGML type code of `dtype`.
pub fn dtype_code(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        other => panic!("no code for {other:?} here"),
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            let ty = items.first().map_or(8, type_code);
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

/// A GGUF v3 file: `meta`, the tensor table, padding to 32 bytes, then `data`.
pub fn write_gguf(meta: &[(String, Value)], tensors: &[TensorEntry], data: &[u8]) -> Vec<u8> {
    let kvs: Vec<Vec<u8>> = meta.iter().map(|(k, v)| encode_kv(k, v)).collect();
    write_gguf_encoded(&kvs, tensors, data)
}

/// One metadata entry as the file holds it: key, value type, value.
pub fn encode_kv(key: &str, value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, key);
    out.extend(type_code(value).to_le_bytes());
    put_value(&mut out, value);
    out
}

/// An entry holding an array of `n` one-byte values, written without building `n` values
/// (candle's `Value` takes 32 bytes each).
pub fn byte_array_kv(key: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 28 + n);
    put_string(&mut out, key);
    out.extend(9u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend((n as u64).to_le_bytes());
    out.resize(out.len() + n, 1);
    out
}

/// A GGUF v3 file from metadata entries already encoded (see [`encode_kv`]).
pub fn write_gguf_encoded(kvs: &[Vec<u8>], tensors: &[TensorEntry], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        out.extend(kv);
    }
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        // GGUF lists the fastest-moving dimension (columns) first.
        for d in t.dims.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.dtype.to_le_bytes());
        out.extend(t.offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend(data);
    out
}

/// A header with `general.alignment = 0` and one tensor: candle's parser divided by it.
pub fn alignment_zero() -> Vec<u8> {
    let meta = [
        (
            "general.architecture".to_owned(),
            Value::String("llama".into()),
        ),
        ("general.alignment".to_owned(), Value::U32(0)),
    ];
    let tensor = TensorEntry {
        name: "token_embd.weight".into(),
        dims: vec![2, 64],
        dtype: 0,
        offset: 0,
    };
    write_gguf(&meta, &[tensor], &[0; 1024])
}

/// A header whose one tensor has dimensions whose product overflows a `usize`.
pub fn overflowing_dims() -> Vec<u8> {
    let meta = [(
        "general.architecture".to_owned(),
        Value::String("llama".into()),
    )];
    let tensor = TensorEntry {
        name: "token_embd.weight".into(),
        dims: vec![32, 1 << 32, 1 << 32, 1 << 32],
        dtype: 0,
        offset: 0,
    };
    write_gguf(&meta, &[tensor], &[0; 64])
}
