//! Model architectures behind one interface.

mod llama;
mod source;

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_phi3, quantized_qwen2, quantized_qwen3,
};

use super::config::CpuKernels;
use super::error::{EngineError, Result};
use super::gguf::GgufHeader;
use super::kernels::Simd;
use super::tokenizer::TokenId;

pub(crate) use llama::KvCache;
use source::TensorSource;

/// A loaded model: weights plus, for architectures we do not own, their internal cache.
pub(crate) enum Model {
    /// Our own llama-family forward pass: per-conversation KV caches, prefix reuse.
    Llama(llama::LlamaWeights),
    /// candle-transformers' Gemma 3.
    Gemma3(Box<quantized_gemma3::ModelWeights>),
    /// candle-transformers' Qwen 2.
    Qwen2(Box<quantized_qwen2::ModelWeights>),
    /// candle-transformers' Qwen 3.
    Qwen3(Box<quantized_qwen3::ModelWeights>),
    /// candle-transformers' Phi-3.
    Phi3(Box<quantized_phi3::ModelWeights>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Model::Llama(_) => "Model::Llama",
            Model::Gemma3(_) => "Model::Gemma3",
            Model::Qwen2(_) => "Model::Qwen2",
            Model::Qwen3(_) => "Model::Qwen3",
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
        let model = match arch.as_str() {
            "llama" | "mistral" => {
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
                Model::Llama(llama::LlamaWeights::load(&mut src, &arch, n_ctx)?)
            }
            "gemma3" => Model::Gemma3(Box::new(
                quantized_gemma3::ModelWeights::from_gguf(header.content, reader, device)
                    .map_err(wrap)?,
            )),
            "qwen2" => Model::Qwen2(Box::new(
                quantized_qwen2::ModelWeights::from_gguf(header.content, reader, device)
                    .map_err(wrap)?,
            )),
            "qwen3" => Model::Qwen3(Box::new(
                quantized_qwen3::ModelWeights::from_gguf(header.content, reader, device)
                    .map_err(wrap)?,
            )),
            "phi3" => Model::Phi3(Box::new(
                quantized_phi3::ModelWeights::from_gguf(false, header.content, reader, device)
                    .map_err(wrap)?,
            )),
            _ => {
                return Err(EngineError::UnsupportedArchitecture {
                    file,
                    architecture: arch,
                });
            }
        };
        Ok(model)
    }

    pub(crate) fn new_cache(&self) -> CacheState {
        match self {
            Model::Llama(_) => CacheState::Owned(KvCache::new()),
            _ => CacheState::Internal,
        }
    }

    /// Whether caches can be cut back to a prefix and kept per conversation.
    pub(crate) fn reuses_prefixes(&self) -> bool {
        matches!(self, Model::Llama(_))
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
        if let (Model::Llama(w), CacheState::Owned(kv)) = (&*self, &mut *cache) {
            kv.truncate(pos);
            return w.forward(tokens, kv);
        }
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Model::Llama(_) => unreachable!("llama models always get an owned cache"),
            Model::Gemma3(m) => m.forward(&input, pos)?,
            Model::Qwen2(m) => m.forward(&input, pos)?,
            Model::Qwen3(m) => {
                if pos == 0 {
                    m.clear_kv_cache();
                }
                m.forward(&input, pos)?
            }
            Model::Phi3(m) => m.forward(&input, pos)?,
        };
        // Every forward here returns the last position only: (1, vocab) or (1, 1, vocab).
        let logits = logits.flatten_all()?;
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec1()?)
    }
}
