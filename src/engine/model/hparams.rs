//! A decoder's hyper-parameters: the sizes every family names alike, and the choices (rotary
//! layout, sliding windows, norms, biases) that tell the families apart. The family modules
//! ([`super::llama`], [`super::qwen`], [`super::gemma3`], [`super::phi3`]) fill one in.

use candle_core::DType;

use super::super::error::{EngineError, Result};
use super::super::gguf::GgufHeader;
use super::activation::Activation;

/// How the rotary embedding pairs a head's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rope {
    /// Neighbours `(2i, 2i + 1)`: llama-family GGUFs, whose converter permuted the query and
    /// key weights for it.
    Interleaved,
    /// Halves `(i, i + d/2)`, as the Hugging Face models compute it (Qwen, Gemma).
    Halves,
}

/// Layers that attend to the last `window` positions only, and their own rotary base.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlidingWindow {
    pub(crate) window: usize,
    /// Every `pattern`-th layer (the last of each group) is global; the others slide.
    pub(crate) pattern: usize,
    pub(crate) rope_base: f32,
}

/// Hyper-parameters and the choices that tell the families apart.
#[derive(Clone, Debug)]
pub(crate) struct DecoderConfig {
    pub(crate) n_layer: usize,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
    pub(crate) rms_eps: f32,
    pub(crate) rope: Rope,
    pub(crate) rope_base: f32,
    /// Linear position scaling of the global layers' rotary embedding (Gemma 3 4B and up).
    pub(crate) rope_scale: f32,
    /// Multiplies the rotary tables (`LongRoPE`'s attention factor, Phi-3.5).
    pub(crate) rope_attention_factor: f32,
    /// Positions the rotary tables and caches hold: the context in use, not the file's.
    pub(crate) context_length: usize,
    /// What the KV cache stores keys and values as (`F16` or `F32`).
    pub(crate) kv_dtype: DType,
    pub(crate) sliding: Option<SlidingWindow>,
    /// Multiplies the token embeddings (Gemma: `sqrt(n_embd)`).
    pub(crate) embedding_scale: Option<f32>,
    pub(crate) activation: Activation,
    /// Multiplies attention scores before the softmax.
    pub(crate) attention_scale: f32,
    /// `cap * tanh(logits / cap)` on the output.
    pub(crate) final_softcap: Option<f32>,
    /// Biases on the query, key and value projections (Qwen 2).
    pub(crate) qkv_bias: bool,
    /// RMS norms on each query and key head before the rotation (Qwen 3, Gemma 3).
    pub(crate) qk_norm: bool,
    /// RMS norms on the attention and feed-forward outputs before the residual (Gemma).
    pub(crate) post_norms: bool,
}

impl DecoderConfig {
    /// The hyper-parameters every family names alike (checked against
    /// [`limits`](super::super::limits) already), for `n_ctx` positions, with llama's choices;
    /// a family module changes what differs.
    pub(crate) fn from_header(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = h.usize(&key("embedding_length"))?;
        let n_head = h.usize(&key("attention.head_count"))?;
        let n_kv_head = h
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        let bad = |k: &str, problem: String| EngineError::Metadata {
            file: h.file.clone(),
            key: key(k),
            problem,
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad(
                "attention.head_count",
                format!("{n_kv_head} key/value heads do not divide {n_head} heads"),
            ));
        }
        let head_dim = match h.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(bad(
                    "attention.head_count",
                    format!("{n_head} heads do not divide {n_embd} dimensions"),
                ));
            }
        };
        if let Some(r) = h.opt_usize(&key("rope.dimension_count"))?
            && r != head_dim
        {
            return Err(bad(
                "rope.dimension_count",
                format!("rotating {r} of a head's {head_dim} dimensions is not supported"),
            ));
        }
        if let Some(v) = h.opt_usize(&key("attention.value_length"))?
            && v != head_dim
        {
            return Err(bad(
                "attention.value_length",
                format!("values of {v} and keys of {head_dim}: this engine needs them equal"),
            ));
        }
        Ok(Self {
            n_layer: h.usize(&key("block_count"))?,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: h
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope: Rope::Interleaved,
            rope_base: h.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scale: 1.0,
            rope_attention_factor: 1.0,
            context_length: n_ctx,
            kv_dtype: DType::F32,
            sliding: None,
            embedding_scale: None,
            activation: Activation::Silu,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            final_softcap: None,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
        })
    }

    /// Whether layer `i` attends to a sliding window (and which), or to everything.
    pub(super) fn window(&self, i: usize) -> Option<SlidingWindow> {
        self.sliding.filter(|s| !(i + 1).is_multiple_of(s.pattern))
    }
}
