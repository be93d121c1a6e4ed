//! The block formats: GGUF's `Q4_1` and `Q8_0` weights as parsed at load, and the `Q8_1`
//! activations the dots multiply them with.

use half::f16;

/// Elements per quantization block.
pub(super) const QK: usize = 32;

/// Four-bit weights with a scale and a minimum: `w = d * q + m`, `q` in `0..16`. Elements
/// `0..16` are the low nibbles of `qs`, `16..32` the high nibbles (ggml's layout).
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ4_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; QK / 2],
}

/// Eight-bit weights with a scale: `w = d * q`.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ8_0 {
    pub(super) d: f32,
    pub(super) qs: [i8; QK],
}

/// Eight-bit activations: `x ≈ d * q`, with `s = d * Σq` (used by the Q4_1 minimum).
/// `d` and `s` are rounded through f16 like ggml's `Q8_1`, so results match llama.cpp's.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ8_1 {
    pub(super) d: f32,
    pub(super) s: f32,
    pub(super) qs: [i8; QK],
}

pub(super) fn parse_q4_1(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(4 + QK / 2)
        .map(|b| BlockQ4_1 {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs: b[4..].try_into().expect("16 bytes"),
        })
        .collect()
}

pub(super) fn parse_q8_0(bytes: &[u8]) -> Vec<BlockQ8_0> {
    bytes
        .chunks_exact(2 + QK)
        .map(|b| BlockQ8_0 {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            qs: std::array::from_fn(|i| b[2 + i] as i8),
        })
        .collect()
}

/// ggml's `quantize_row_q8_0` for one block, scale rounded through f16.
pub(super) fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    BlockQ8_0 {
        d: f16::from_f32(d).to_f32(),
        qs: std::array::from_fn(|i| (x[i] * id).round() as i8),
    }
}

/// ggml's `quantize_row_q8_1` for one block.
pub(super) fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let qs: [i8; QK] = std::array::from_fn(|i| (x[i] * id).round() as i8);
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8_1 {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}
