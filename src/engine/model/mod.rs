//! Model architectures behind one interface.

mod decoder;
mod gemma3;
mod llama;
mod qwen;
mod source;

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_phi3;

use super::config::CpuKernels;
use super::error::{EngineError, Result};
use super::gguf::GgufHeader;
use super::kernels::Simd;
use super::tokenizer::TokenId;

pub(crate) use decoder::KvCache;
use source::TensorSource;

/// A loaded model: weights plus, for architectures we do not own, their internal cache.
pub(crate) enum Model {
    /// Our own forward pass (llama, mistral, qwen2, qwen3, gemma3): per-conversation KV
    /// caches, prefix reuse, the engine's thread budget.
    Decoder(decoder::DecoderWeights),
    /// candle-transformers' Phi-3.
    Phi3(Box<quantized_phi3::ModelWeights>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Model::Decoder(_) => "Model::Decoder",
            Model::Phi3(_) => "Model::Phi3",
        })
    }
}

/// What a conversation keeps between requests.
#[derive(Debug)]
pub(crate) enum CacheState {
    /// A KV cache of our own.
    Owned(KvCache),
    /// The model keeps its cache inside; nothing is reusable across conversations.
    Internal,
}

impl Model {
    /// Loads the architecture named by `general.architecture`, with position tables and
    /// caches for `n_ctx` tokens. The header has passed [`super::limits::check`].
    pub(crate) fn load<R: Read + Seek>(
        mut header: GgufHeader,
        reader: &mut R,
        device: &Device,
        kernels: CpuKernels,
        n_ctx: usize,
    ) -> Result<Self> {
        let arch = header.string("general.architecture")?.to_owned();
        let file = header.file.clone();
        // candle-transformers' loaders size their rotary tables and caches by the context the
        // file claims (a hostile file claims billions): they see the context in use instead.
        header.content.metadata.insert(
            format!("{arch}.context_length"),
            gguf_file::Value::U32(u32::try_from(n_ctx).unwrap_or(u32::MAX)),
        );
        let wrap = |e: candle_core::Error| EngineError::InvalidGguf {
            file: file.clone(),
            reason: e.to_string(),
        };
        let family = match arch.as_str() {
            "llama" | "mistral" => llama::config,
            "qwen2" | "qwen3" => qwen::config,
            "gemma3" => gemma3::config,
            "phi3" => {
                return Ok(Model::Phi3(Box::new(
                    quantized_phi3::ModelWeights::from_gguf(false, header.content, reader, device)
                        .map_err(wrap)?,
                )));
            }
            _ => {
                return Err(EngineError::UnsupportedArchitecture {
                    file,
                    architecture: arch,
                });
            }
        };
        let config = family(&header, &arch, n_ctx)?;
        let mut src = TensorSource {
            header: &header,
            reader,
            device: device.clone(),
            packed: match kernels {
                _ if !device.is_cpu() => None,
                CpuKernels::Packed => Some(Simd::detect()),
                CpuKernels::PackedScalar => Some(Simd::Scalar),
                CpuKernels::Candle => None,
            },
        };
        Ok(Model::Decoder(decoder::DecoderWeights::load(
            &mut src, config,
        )?))
    }

    pub(crate) fn new_cache(&self) -> CacheState {
        match self {
            Model::Decoder(_) => CacheState::Owned(KvCache::new()),
            Model::Phi3(_) => CacheState::Internal,
        }
    }

    /// Whether caches can be cut back to a prefix and kept per conversation.
    pub(crate) fn reuses_prefixes(&self) -> bool {
        matches!(self, Model::Decoder(_))
    }

    /// Runs `tokens` after `pos` cached tokens; returns the last token's logits.
    ///
    /// For architectures with an internal cache, `pos == 0` starts afresh.
    pub(crate) fn forward(
        &mut self,
        tokens: &[TokenId],
        pos: usize,
        cache: &mut CacheState,
        device: &Device,
    ) -> Result<Vec<f32>> {
        if let (Model::Decoder(w), CacheState::Owned(kv)) = (&*self, &mut *cache) {
            kv.truncate(pos);
            return w.forward(tokens, kv);
        }
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Model::Decoder(_) => unreachable!("decoder models always get an owned cache"),
            Model::Phi3(m) => m.forward(&input, pos)?,
        };
        // Every forward here returns the last position only: (1, vocab) or (1, 1, vocab).
        let logits = logits.flatten_all()?;
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec1()?)
    }
}
