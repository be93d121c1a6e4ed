//! Phi-3 and Phi-3.5 mini: llama's layer with the query, key and value projections fused into
//! one matrix (`attn_qkv`) and the gate and up projections into another (`ffn_up`, gate
//! first), halves rotated. `LongRoPE` files (Phi-3.5, Phi-3 128k) carry per-frequency factors;
//! within the original context the short factors apply, with the attention factor the file
//! gives, as llama.cpp does.

use super::super::error::Result;
use super::super::gguf::GgufHeader;
use super::hparams::{DecoderConfig, Rope};

/// `phi3.*` hyper-parameters for `n_ctx` positions.
pub(crate) fn config(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_header(h, arch, n_ctx)?;
    c.rope = Rope::Halves;
    if let Some(f) = h.opt_f32(&format!("{arch}.rope.scaling.attn_factor"))?
        && f.is_finite()
        && f > 0.0
    {
        c.rope_attention_factor = f;
    }
    Ok(c)
}
