//! The llama family (Llama 1-3, SmolLM, Mistral): the [`DecoderConfig`] defaults as they are.

use super::super::error::Result;
use super::super::gguf::GgufHeader;
use super::hparams::DecoderConfig;

/// `llama.*` or `mistral.*` hyper-parameters for `n_ctx` positions.
pub(crate) fn config(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<DecoderConfig> {
    DecoderConfig::from_header(h, arch, n_ctx)
}
