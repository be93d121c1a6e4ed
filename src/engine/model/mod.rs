//! Model architectures behind one interface.

mod activation;
mod attend;
mod attention;
mod decoder;
mod elementwise;
mod gemma3;
mod hparams;
mod kv_cache;
mod linear;
mod llama;
mod phi3;
mod qwen;
mod source;
mod weights;

use std::io::{Read, Seek};

use candle_core::{DType, Device};

use super::config::{CpuKernels, EngineConfig, KvCacheType};
use super::error::{EngineError, Result};
use super::gguf::GgufHeader;
use super::kernels::Simd;
use super::tokenizer::TokenId;

pub(crate) use activation::exp;
pub(crate) use attend::Fed;
pub(crate) use kv_cache::KvCache;
use source::TensorSource;

/// A loaded model: immutable weights that many conversations' caches share.
#[derive(Debug)]
pub(crate) struct Model(weights::DecoderWeights);

impl Model {
    /// Loads the architecture named by `general.architecture`, with position tables and
    /// caches for `n_ctx` tokens. The header has passed [`super::gguf::check_limits`].
    pub(crate) fn load<R: Read + Seek>(
        header: GgufHeader,
        reader: &mut R,
        device: &Device,
        engine: &EngineConfig,
        n_ctx: usize,
    ) -> Result<Self> {
        let arch = header.string("general.architecture")?.to_owned();
        let family = match arch.as_str() {
            "llama" | "mistral" => llama::config,
            "qwen2" | "qwen3" => qwen::config,
            "gemma3" => gemma3::config,
            "phi3" => phi3::config,
            _ => {
                return Err(EngineError::UnsupportedArchitecture {
                    file: header.file.clone(),
                    architecture: arch,
                });
            }
        };
        let mut config = family(&header, &arch, n_ctx)?;
        config.kv_dtype = match engine.kv_cache {
            KvCacheType::F32 => DType::F32,
            KvCacheType::F16 => DType::F16,
        };
        let mut src = TensorSource {
            header: &header,
            reader,
            device: device.clone(),
            packed: match engine.cpu_kernels {
                _ if !device.is_cpu() => None,
                CpuKernels::Packed => Some(Simd::detect()),
                CpuKernels::PackedScalar => Some(Simd::Scalar),
                CpuKernels::Candle => None,
            },
        };
        Ok(Self(weights::DecoderWeights::load(&mut src, config)?))
    }

    /// An empty cache for one conversation.
    pub(crate) fn new_cache(&self) -> KvCache {
        KvCache::new()
    }

    /// Runs `tokens` after the first `pos` tokens of `cache` (the rest is forgotten); returns
    /// the last token's logits.
    pub(crate) fn forward(
        &self,
        tokens: &[TokenId],
        pos: usize,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        cache.truncate(pos);
        let mut logits = self.0.forward_batch(&mut [Fed { tokens, cache }])?;
        Ok(logits.pop().expect("one sequence in, one out"))
    }

    /// Runs several sequences in one pass (see [`weights::DecoderWeights::forward_batch`]);
    /// each cache must already be cut to the position its tokens follow.
    pub(crate) fn forward_batch(&self, batch: &mut [Fed<'_>]) -> Result<Vec<Vec<f32>>> {
        self.0.forward_batch(batch)
    }
}
