//! Qwen 2 and 2.5 (biases on the query, key and value projections) and Qwen 3 (RMS norms on
//! each query and key head instead); both rotate halves of a head, as Hugging Face does.

use super::super::error::Result;
use super::super::gguf::GgufHeader;
use super::hparams::{DecoderConfig, Rope};

/// `qwen2.*` or `qwen3.*` hyper-parameters for `n_ctx` positions.
pub(crate) fn config(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_header(h, arch, n_ctx)?;
    c.rope = Rope::Halves;
    if h.opt_f32(&format!("{arch}.rope.freq_base"))?.is_none() {
        c.rope_base = 1_000_000.0;
    }
    c.qkv_bias = arch == "qwen2";
    c.qk_norm = arch == "qwen3";
    Ok(c)
}
