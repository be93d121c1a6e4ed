//! The decoder's immutable weights, loaded from a GGUF's standard tensor names, and the
//! rotary tables built beside them. One set serves every conversation.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::super::error::Result;
use super::super::kernels::QMatrix;
use super::hparams::DecoderConfig;
use super::linear::{Embeddings, Linear};
use super::source::TensorSource;

/// A layer's optional parts, present as the family's config says.
#[derive(Debug)]
pub(super) struct Layer {
    pub(super) attn_norm: Tensor,
    pub(super) qkv: Qkv,
    pub(super) wo: Linear,
    /// Query, key and value biases.
    pub(super) bias: Option<[Tensor; 3]>,
    /// Per-head query and key norms.
    pub(super) qk_norm: Option<[Tensor; 2]>,
    /// Norms on the attention and feed-forward outputs.
    pub(super) post_norms: Option<[Tensor; 2]>,
    pub(super) ffn_norm: Tensor,
    pub(super) gate_up: GateUp,
    pub(super) down: Linear,
    /// The sliding window this layer attends to, if any.
    pub(super) window: Option<usize>,
    /// Index into [`DecoderWeights::ropes`].
    pub(super) rope: usize,
}

/// The query, key and value projections: three matrices, or one whose output rows are the
/// three in turn (Phi-3's `attn_qkv`).
#[derive(Debug)]
pub(super) enum Qkv {
    Separate([Linear; 3]),
    Fused(Linear),
}

/// The feed-forward gate and up projections: two matrices, or one whose first half of output
/// rows is the gate (Phi-3's `ffn_up`).
#[derive(Debug)]
pub(super) enum GateUp {
    Separate([Linear; 2]),
    Fused(Linear),
}

/// Immutable weights; cheap to share between conversations.
#[derive(Debug)]
pub(crate) struct DecoderWeights {
    pub(crate) config: DecoderConfig,
    pub(super) embeddings: Embeddings,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) output: Linear,
    /// Cosine and sine tables: the global layers' first, then the sliding layers'.
    pub(super) ropes: Vec<(Tensor, Tensor)>,
    pub(super) device: Device,
}

impl DecoderWeights {
    /// Loads the weights `config` describes from the GGUF's standard tensor names.
    pub(crate) fn load(src: &mut TensorSource<'_>, config: DecoderConfig) -> Result<Self> {
        let device = src.device.clone();
        let name = "token_embd.weight";
        // Read from the file once: packed a few rows at a time where the kernels pack the
        // format (every block format), otherwise whole through candle (and shared by a tied
        // output).
        let streamed = match src.packed {
            Some(simd) => src.packed_matrix(name, simd)?.map(Arc::new),
            None => None,
        };
        let (packed_embd, embd_q) = match (streamed, src.packed) {
            (Some(m), _) => (Some(m), None),
            (None, simd) => {
                let q = Arc::new(src.qtensor(name)?);
                let packed = match simd {
                    Some(simd) => QMatrix::pack(&q, simd)?.map(Arc::new),
                    None => None,
                };
                (packed, Some(q))
            }
        };
        let embeddings = match (&packed_embd, &embd_q) {
            (Some(m), _) => Embeddings::Packed(m.clone()),
            (None, Some(q)) => Embeddings::Dense(q.dequantize(&device)?),
            (None, None) => unreachable!("the table was read whole when it was not packed"),
        };
        let output = if src.has("output.weight") {
            Linear::load(src, "output.weight")?
        } else if let Some(m) = packed_embd {
            // Tied embeddings: one packed copy serves both.
            Linear::Packed(m)
        } else if let Some(q) = embd_q {
            Linear::from_qtensor(q, None)?
        } else {
            unreachable!("the table was read whole when it was not packed")
        };
        let norm = src.vector("output_norm.weight")?;
        // A divisor per frequency: Llama 3's long-context scaling (`rope_freqs`), or
        // `LongRoPE`'s factors for contexts within the original one (Phi-3.5, Phi-3 128k).
        let freq_factors = match ["rope_freqs.weight", "rope_factors_short.weight"]
            .into_iter()
            .find(|n| src.has(n))
        {
            Some(n) => Some(src.vector(n)?.to_vec1::<f32>()?),
            None => None,
        };
        let mut ropes = vec![rope_tables(
            &config,
            config.rope_base,
            config.rope_scale,
            freq_factors.as_deref(),
            &device,
        )?];
        if let Some(s) = config.sliding {
            ropes.push(rope_tables(&config, s.rope_base, 1.0, None, &device)?);
        }
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            let window = config.window(i).map(|s| s.window);
            let b = |n: &str| format!("blk.{i}.{n}.bias");
            layers.push(Layer {
                attn_norm: src.vector(&p("attn_norm"))?,
                qkv: if src.has(&p("attn_qkv")) {
                    Qkv::Fused(Linear::load(src, &p("attn_qkv"))?)
                } else {
                    Qkv::Separate([
                        Linear::load(src, &p("attn_q"))?,
                        Linear::load(src, &p("attn_k"))?,
                        Linear::load(src, &p("attn_v"))?,
                    ])
                },
                wo: Linear::load(src, &p("attn_output"))?,
                bias: match config.qkv_bias {
                    true => Some([
                        src.vector(&b("attn_q"))?,
                        src.vector(&b("attn_k"))?,
                        src.vector(&b("attn_v"))?,
                    ]),
                    false => None,
                },
                qk_norm: match config.qk_norm {
                    true => Some([
                        src.vector(&p("attn_q_norm"))?,
                        src.vector(&p("attn_k_norm"))?,
                    ]),
                    false => None,
                },
                post_norms: match config.post_norms {
                    true => Some([
                        src.vector(&p("post_attention_norm"))?,
                        src.vector(&p("post_ffw_norm"))?,
                    ]),
                    false => None,
                },
                ffn_norm: src.vector(&p("ffn_norm"))?,
                gate_up: if src.has(&p("ffn_gate")) {
                    GateUp::Separate([
                        Linear::load(src, &p("ffn_gate"))?,
                        Linear::load(src, &p("ffn_up"))?,
                    ])
                } else {
                    GateUp::Fused(Linear::load(src, &p("ffn_up"))?)
                },
                down: Linear::load(src, &p("ffn_down"))?,
                window,
                rope: usize::from(window.is_some()),
            });
        }
        Ok(Self {
            config,
            embeddings,
            layers,
            norm,
            output,
            ropes,
            device,
        })
    }
}

/// Rotary tables for `n_ctx` positions: `base` and the position `scale` (linear scaling
/// divides positions), each frequency divided by its factor where a file gives them.
fn rope_tables(
    cfg: &DecoderConfig,
    base: f32,
    scale: f32,
    factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f32 / cfg.head_dim as f32) / scale;
            match factors.and_then(|fs| fs.get(i)) {
                Some(&d) if d > 0.0 => f / d,
                _ => f,
            }
        })
        .collect();
    let n = cfg.context_length;
    let mut angles = Vec::with_capacity(n * half);
    for p in 0..n {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (n, half), device)?;
    let m = f64::from(cfg.rope_attention_factor);
    Ok(((angles.cos()? * m)?, (angles.sin()? * m)?))
}
