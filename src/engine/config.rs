//! How to load a model ([`EngineConfig`], [`Backend`], [`CpuKernels`]) and what was loaded
//! ([`ModelInfo`]).

use std::path::PathBuf;

use candle_core::Device;

use super::error::Result;
use super::priority::InferencePriority;

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The first GPU compiled in (`cuda`, `metal` features) that is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU by ordinal (`cuda` feature).
    Cuda(usize),
    /// An Apple GPU by ordinal (`metal` feature).
    Metal(usize),
}

impl Backend {
    pub(super) fn device(self) -> Result<Device> {
        Ok(match self {
            Backend::Cpu => Device::Cpu,
            Backend::Cuda(i) => Device::new_cuda(i)?,
            Backend::Metal(i) => Device::new_metal(i)?,
            Backend::Auto => {
                if candle_core::utils::cuda_is_available() {
                    Device::new_cuda(0)?
                } else if candle_core::utils::metal_is_available() {
                    Device::new_metal(0)?
                } else {
                    Device::Cpu
                }
            }
        })
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context window in tokens; `None` takes the smaller of 4096 and the model's own.
    pub n_ctx: Option<usize>,
    /// Threads for inference; `None` uses every core. A game should leave it at least one.
    pub threads: Option<usize>,
    /// Where to run.
    pub backend: Backend,
    /// A Hugging Face `tokenizer.json` to encode with instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// A chat template (Jinja) to use instead of the GGUF's `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Matrix kernels on the CPU; leave at the default.
    pub cpu_kernels: CpuKernels,
    /// What each conversation's key/value cache stores.
    pub kv_cache: KvCacheType,
    /// How eagerly the OS runs the inference threads beside others (applies to the pool
    /// that [`EngineConfig::threads`] creates). [`InferencePriority::Normal`] unless set: the
    /// worker and the plugin, which run beside a game, set [`InferencePriority::Idle`].
    pub priority: InferencePriority,
}

/// The number type of the key/value caches, which take most of the memory a conversation
/// holds (per token: `2 × layers × key/value heads × head size` numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvCacheType {
    /// 4 bytes a number: twice the memory, for decoding about 10 % faster once a conversation
    /// holds a few hundred tokens (BENCHMARKS.md), and scores a little closer to the model's.
    F32,
    /// 2 bytes a number (llama.cpp's default): half the memory per NPC. The default. Keys and
    /// values are rounded to f16 (logits move by about 2 %); the CPU attention reads them as
    /// stored and computes in f32.
    #[default]
    F16,
}

/// Which code multiplies the weight matrices on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuKernels {
    /// This crate's packed kernels, with SIMD where the CPU has it (AVX2 on x86-64).
    #[default]
    Packed,
    /// The same kernels without SIMD: the reference the SIMD path is tested against.
    PackedScalar,
    /// candle's quantized matmul. Slower on Q4_1 files, and it runs on candle's own pool of
    /// every core, ignoring [`EngineConfig::threads`]; for comparisons.
    Candle,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            n_ctx: None,
            threads: None,
            backend: Backend::Auto,
            tokenizer_json: None,
            chat_template: None,
            cpu_kernels: CpuKernels::Packed,
            kv_cache: KvCacheType::default(),
            priority: InferencePriority::Normal,
        }
    }
}

/// Facts about the loaded model.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct ModelInfo {
    /// Where it was loaded from.
    pub file: String,
    /// `general.architecture`, such as `llama`.
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// The context the model was trained for.
    pub train_context: usize,
    /// The context window in use.
    pub n_ctx: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Whether sessions keep their caches and reuse common prefixes (every supported
    /// architecture does).
    pub prefix_reuse: bool,
}
