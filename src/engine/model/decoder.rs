//! The decoder-only transformer every supported family is a variant of (Llama, SmolLM,
//! Mistral, Qwen 2 and 3, Gemma 3, Phi-3), with a KV cache owned by the caller, so one set of
//! weights serves many conversations and a cache can be cut back to a shared prefix.
//!
//! The family modules ([`super::llama`], [`super::qwen`], [`super::gemma3`], [`super::phi3`])
//! read their
//! hyper-parameters into a [`DecoderConfig`]; this module holds the weights and the one
//! forward pass, and each difference between families is a field of the config.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::super::error::{EngineError, Result};
use super::super::gguf::GgufHeader;
use super::super::kernels::{Activations, QMatrix, Simd};
pub(crate) use super::activation::Activation;
use super::source::TensorSource;
use super::{attention, elementwise};

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
    fn window(&self, i: usize) -> Option<SlidingWindow> {
        self.sliding.filter(|s| !(i + 1).is_multiple_of(s.pattern))
    }
}

/// A weight matrix: packed for this crate's CPU kernels, or candle's (GPUs, float weights).
#[derive(Debug)]
enum Linear {
    Packed(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Linear {
    fn load(src: &mut TensorSource<'_>, name: &str) -> Result<Self> {
        if let Some(simd) = src.packed
            && let Some(m) = src.packed_matrix(name, simd)?
        {
            return Ok(Linear::Packed(Arc::new(m)));
        }
        Self::from_qtensor(Arc::new(src.qtensor(name)?), src.packed)
    }

    fn from_qtensor(t: Arc<QTensor>, packed: Option<Simd>) -> Result<Self> {
        if let Some(simd) = packed
            && let Some(m) = QMatrix::pack(&t, simd)?
        {
            return Ok(Linear::Packed(Arc::new(m)));
        }
        Ok(Linear::Candle(QMatMul::from_arc(t)?))
    }

    /// Each matrix's [`Linear::forward`] of the same `x`; packed ones share its quantization
    /// and one pass on the pool.
    fn forward_each<const N: usize>(linears: &[Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let packed: Vec<&QMatrix> = linears
            .iter()
            .filter_map(|l| match l {
                Linear::Packed(m) => Some(&**m),
                Linear::Candle(_) => None,
            })
            .collect();
        let (b, s, cols) = x.dims3()?;
        if packed.len() < N || packed.iter().any(|m| m.cols() != cols) {
            let out: Vec<Tensor> = linears
                .iter()
                .map(|l| l.forward(x))
                .collect::<Result<_>>()?;
            return Ok(out.try_into().expect("one output per matrix"));
        }
        let acts = Activations::quantize(&x.flatten_all()?.to_vec1::<f32>()?);
        let out: Vec<Tensor> = QMatrix::matmul_each(&packed, &acts)
            .into_iter()
            .zip(&packed)
            .map(|(y, m)| Tensor::from_vec(y, (b, s, m.rows()), x.device()))
            .collect::<candle_core::Result<_>>()?;
        Ok(out.try_into().expect("one output per matrix"))
    }

    /// `(batch, seq, cols)` to `(batch, seq, rows)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Packed(m) => {
                let (b, s, _) = x.dims3()?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                Ok(Tensor::from_vec(
                    m.matmul(&input),
                    (b, s, m.rows()),
                    x.device(),
                )?)
            }
        }
    }
}

/// Token embeddings: rows of the packed matrix (shared with a tied output layer), or a
/// dequantized table.
#[derive(Debug)]
enum Embeddings {
    Packed(Arc<QMatrix>),
    Dense(Tensor),
}

impl Embeddings {
    fn lookup(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embeddings::Dense(t) => Ok(t.index_select(&Tensor::new(tokens, device)?, 0)?),
            Embeddings::Packed(m) => {
                let d = m.cols();
                let mut out = vec![0f32; tokens.len() * d];
                for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
                    m.dequantize_row(t as usize, row);
                }
                Ok(Tensor::from_vec(out, (tokens.len(), d), device)?)
            }
        }
    }
}

/// A layer's optional parts, present as the family's config says.
#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    qkv: Qkv,
    wo: Linear,
    /// Query, key and value biases.
    bias: Option<[Tensor; 3]>,
    /// Per-head query and key norms.
    qk_norm: Option<[Tensor; 2]>,
    /// Norms on the attention and feed-forward outputs.
    post_norms: Option<[Tensor; 2]>,
    ffn_norm: Tensor,
    gate_up: GateUp,
    down: Linear,
    /// The sliding window this layer attends to, if any.
    window: Option<usize>,
    /// Index into [`DecoderWeights::ropes`].
    rope: usize,
}

/// The query, key and value projections: three matrices, or one whose output rows are the
/// three in turn (Phi-3's `attn_qkv`).
#[derive(Debug)]
enum Qkv {
    Separate([Linear; 3]),
    Fused(Linear),
}

/// The feed-forward gate and up projections: two matrices, or one whose first half of output
/// rows is the gate (Phi-3's `ffn_up`).
#[derive(Debug)]
enum GateUp {
    Separate([Linear; 2]),
    Fused(Linear),
}

/// Immutable weights; cheap to share between conversations.
#[derive(Debug)]
pub(crate) struct DecoderWeights {
    pub(crate) config: DecoderConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    /// Cosine and sine tables: the global layers' first, then the sliding layers'.
    ropes: Vec<(Tensor, Tensor)>,
    device: Device,
}

/// One conversation's attention keys and values, grown in blocks and cut back on demand.
#[derive(Debug)]
pub(crate) struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

const KV_BLOCK: usize = 256;

impl KvCache {
    pub(crate) fn new() -> Self {
        Self {
            k: Vec::new(),
            v: Vec::new(),
            len: 0,
            capacity: 0,
        }
    }

    /// Forgets everything after the first `len` tokens.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A copy that shares no storage with this one, holding only the cached positions (an
    /// alternative copies its prompt, not the whole reserved capacity).
    pub(crate) fn deep_copy(&self) -> Result<Self> {
        let capacity = self
            .len
            .next_multiple_of(KV_BLOCK)
            .max(KV_BLOCK)
            .min(self.capacity);
        let copy = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
            ts.iter()
                .map(|t| {
                    let (b, h, _, d) = t.dims4()?;
                    let fresh = Tensor::zeros((b, h, capacity, d), t.dtype(), t.device())?;
                    if self.len > 0 {
                        fresh.slice_set(&t.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                    Ok(fresh)
                })
                .collect()
        };
        Ok(Self {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
            capacity,
        })
    }

    /// Bytes held by the cache's buffers.
    pub(crate) fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    fn reserve(&mut self, cfg: &DecoderConfig, needed: usize, device: &Device) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        // Doubling amortises growth, but never past the context: the cache holds at most
        // `n_ctx` positions (a 4,096-token context was growing to 8,192).
        let capacity = needed
            .next_multiple_of(KV_BLOCK)
            .max(self.capacity * 2)
            .min(cfg.context_length.next_multiple_of(KV_BLOCK))
            .max(needed);
        let shape = (1, cfg.n_kv_head, capacity, cfg.head_dim);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let t = Tensor::zeros(shape, cfg.kv_dtype, device)?;
            if let Some(old) = old
                && self.len > 0
            {
                t.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            Ok(t)
        };
        let k = (0..cfg.n_layer)
            .map(|i| grow(self.k.get(i)))
            .collect::<Result<Vec<_>>>()?;
        let v = (0..cfg.n_layer)
            .map(|i| grow(self.v.get(i)))
            .collect::<Result<Vec<_>>>()?;
        self.k = k;
        self.v = v;
        self.capacity = capacity;
        Ok(())
    }
}

impl DecoderWeights {
    /// Loads the weights `config` describes from the GGUF's standard tensor names.
    pub(crate) fn load(src: &mut TensorSource<'_>, config: DecoderConfig) -> Result<Self> {
        let device = src.device.clone();
        let name = "token_embd.weight";
        // Read from the file once: packed a few rows at a time where the kernels take the
        // format as stored, otherwise whole through candle (and shared by a tied output).
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

    /// Runs each sequence's tokens at positions `cache.len()..` of its own cache and returns
    /// the logits of each one's last token, in order.
    ///
    /// The sequences are stacked into one set of rows for every matrix product, so the
    /// weights are read once per step for all of them (llama.cpp's unified batch); only
    /// attention, which reads each one's own cache, runs per sequence. A row's result does not
    /// depend on the rows stacked with it: the kernels' four-row dot equals the one-row dot bit
    /// for bit, and norms and activations are per row.
    pub(crate) fn forward_batch(&self, batch: &mut [Fed<'_>]) -> Result<Vec<Vec<f32>>> {
        let rows: usize = batch.iter().map(|f| f.tokens.len()).sum();
        let _span =
            tracing::trace_span!("forward", sequences = batch.len(), tokens = rows).entered();
        let cfg = &self.config;
        if batch.iter().any(|f| f.tokens.is_empty()) {
            return Err(EngineError::InvalidParameter {
                name: "tokens",
                reason: "a sequence in the batch has no tokens".into(),
            });
        }
        let n_rep = cfg.n_head / cfg.n_kv_head;
        let mut parts = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(rows);
        for fed in batch.iter_mut() {
            let (seq, pos) = (fed.tokens.len(), fed.cache.len);
            fed.cache.reserve(cfg, pos + seq, &self.device)?;
            let ropes = self
                .ropes
                .iter()
                .map(|(cos, sin)| Ok((cos.narrow(0, pos, seq)?, sin.narrow(0, pos, seq)?)))
                .collect::<Result<Vec<_>>>()?;
            // For candle's attention (GPUs, and prompt chunks on the CPU), one mask per kind of
            // layer, over the keys that kind attends to: all of them, or the window that the
            // first new token sees (later ones mask the rest). The CPU kernel needs none.
            let masks = if self.device.is_cpu() && seq == 1 {
                None
            } else {
                let global = Attended::new(seq, pos, None, n_rep, &self.device)?;
                let local = cfg
                    .sliding
                    .map(|s| Attended::new(seq, pos, Some(s.window), n_rep, &self.device))
                    .transpose()?;
                Some((global, local))
            };
            parts.push(Part {
                row: tokens.len(),
                seq,
                pos,
                ropes,
                masks,
            });
            tokens.extend_from_slice(fed.tokens);
        }
        let mut x = self
            .embeddings
            .lookup(&tokens, &self.device)?
            .unsqueeze(0)?;
        if let Some(scale) = cfg.embedding_scale {
            x = (x * f64::from(scale))?;
        }
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, cfg.rms_eps);
        let (q_dim, kv_dim) = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim);

        for (i, layer) in self.layers.iter().enumerate() {
            let h = norm(&x, &layer.attn_norm)?;
            let (mut q, mut k, mut v) = match &layer.qkv {
                Qkv::Separate(w) => {
                    let [q, k, v] = Linear::forward_each(w, &h)?;
                    (q, k, v)
                }
                Qkv::Fused(w) => {
                    let qkv = w.forward(&h)?;
                    (
                        qkv.narrow(2, 0, q_dim)?,
                        qkv.narrow(2, q_dim, kv_dim)?,
                        qkv.narrow(2, q_dim + kv_dim, kv_dim)?,
                    )
                }
            };
            if let Some([bq, bk, bv]) = &layer.bias {
                q = elementwise::add(&q, bq)?;
                k = elementwise::add(&k, bk)?;
                v = elementwise::add(&v, bv)?;
            }
            // Each sequence's keys and values go into its cache; its rotated queries come back.
            let single = batch.len() == 1;
            let queries = batch
                .iter_mut()
                .zip(&parts)
                .map(|(fed, part)| {
                    let rows = |t: &Tensor| -> Result<Tensor> {
                        Ok(if single {
                            t.clone()
                        } else {
                            t.narrow(1, part.row, part.seq)?
                        })
                    };
                    self.project(i, layer, part, fed.cache, rows(&q)?, rows(&k)?, rows(&v)?)
                })
                .collect::<Result<Vec<_>>>()?;
            let y = if self.device.is_cpu() {
                self.attend_cpu(i, layer, &parts, batch, &queries)?
            } else {
                let ys = batch
                    .iter()
                    .zip(&parts)
                    .zip(&queries)
                    .map(|((fed, part), q)| self.attend(i, layer, part, fed.cache, q))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)?
            };
            let mut y = layer.wo.forward(&y)?;
            if let Some([post, _]) = &layer.post_norms {
                y = norm(&y, post)?;
            }
            x = elementwise::add(&x, &y)?;

            let h = norm(&x, &layer.ffn_norm)?;
            let (gate, up) = match &layer.gate_up {
                GateUp::Separate(w) => {
                    let [gate, up] = Linear::forward_each(w, &h)?;
                    (gate, up)
                }
                GateUp::Fused(w) => {
                    let both = w.forward(&h)?;
                    let n_ff = both.dim(2)? / 2;
                    (both.narrow(2, 0, n_ff)?, both.narrow(2, n_ff, n_ff)?)
                }
            };
            let mut ff = layer.down.forward(&cfg.activation.gate(&gate, &up)?)?;
            if let Some([_, post]) = &layer.post_norms {
                ff = norm(&ff, post)?;
            }
            x = elementwise::add(&x, &ff)?;
        }
        for (fed, part) in batch.iter_mut().zip(&parts) {
            fed.cache.len = part.pos + part.seq;
        }
        // Only each sequence's last row goes through the output layer.
        let last = parts
            .iter()
            .map(|p| x.narrow(1, p.row + p.seq - 1, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last = norm(&Tensor::cat(&last, 1)?, &self.norm)?;
        let mut logits = self
            .output
            .forward(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        if let Some(cap) = cfg.final_softcap {
            for l in logits.iter_mut().flatten() {
                *l = cap * (*l / cap).tanh();
            }
        }
        Ok(logits)
    }

    /// Layer `i`'s attention on the CPU for every sequence of the batch, given each one's
    /// rotated `queries` (its keys and values already in its cache): the sequences decoding
    /// one token are read by [`attention::attend`] straight from their caches (all in one
    /// pass on the pool), and prompt chunks go through candle's matrix products, which are
    /// faster for many queries at once (measured: the direct kernel cost 20 % of a 256-token
    /// prefill). The result is `(1, rows, n_head * head_dim)`.
    fn attend_cpu(
        &self,
        i: usize,
        layer: &Layer,
        parts: &[Part],
        batch: &[Fed<'_>],
        queries: &[Tensor],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let width = cfg.n_head * cfg.head_dim;
        // Per sequence: a prompt chunk's attention output, or a decoded token's queries.
        let mut prompts = Vec::with_capacity(parts.len());
        let mut flat = Vec::with_capacity(parts.len());
        for ((fed, part), q) in batch.iter().zip(parts).zip(queries) {
            if part.seq > 1 {
                prompts.push(Some(self.attend(i, layer, part, fed.cache, q)?));
                flat.push(Vec::new());
            } else {
                prompts.push(None);
                flat.push(q.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        let guards = batch
            .iter()
            .map(|fed| {
                (
                    fed.cache.k[i].storage_and_layout(),
                    fed.cache.v[i].storage_and_layout(),
                )
            })
            .collect::<Vec<_>>();
        let mut sequences = Vec::with_capacity(parts.len());
        for (((kv, part), q), fed) in guards.iter().zip(parts).zip(&flat).zip(batch.iter()) {
            if part.seq == 1 {
                sequences.push(attention::Sequence {
                    q,
                    row: sequences.len(),
                    seq: 1,
                    pos: part.pos,
                    keys: cpu_rows(&kv.0.0, kv.0.1.start_offset(), cfg.kv_dtype)?,
                    values: cpu_rows(&kv.1.0, kv.1.1.start_offset(), cfg.kv_dtype)?,
                    capacity: fed.cache.capacity,
                });
            }
        }
        let heads = attention::Heads {
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            scale: cfg.attention_scale,
            window: layer.window,
        };
        let mut out = vec![0f32; sequences.len() * width];
        attention::attend(heads, &sequences, &mut out);
        let decoded = sequences.len();
        drop(sequences);
        drop(guards);
        let decoded = Tensor::from_vec(out, (1, decoded, width), &self.device)?;
        if prompts.iter().all(Option::is_none) {
            return Ok(decoded);
        }
        // Back in the batch's order.
        let mut next = 0;
        let pieces = prompts
            .into_iter()
            .map(|p| match p {
                Some(y) => Ok(y),
                None => {
                    next += 1;
                    Ok(decoded.narrow(1, next - 1, 1)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pieces, 1)?)
    }

    /// One sequence's projected rows `q`, `k`, `v` (shape `(1, seq, dim)`) in layer `i`:
    /// split into heads, normed and rotated; the keys and values are written to `cache`, the
    /// queries returned as `(1, n_head, seq, head_dim)`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one layer's state for one sequence"
    )]
    fn project(
        &self,
        i: usize,
        layer: &Layer,
        part: &Part,
        cache: &mut KvCache,
        q: Tensor,
        k: Tensor,
        v: Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (seq, pos) = (part.seq, part.pos);
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, cfg.rms_eps);
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((1, seq, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = heads(q, cfg.n_head)?;
        let mut k = heads(k, cfg.n_kv_head)?;
        let v = heads(v, cfg.n_kv_head)?;
        if let Some([qn, kn]) = &layer.qk_norm {
            q = norm(&q, qn)?;
            k = norm(&k, kn)?;
        }
        let (cos, sin) = &part.ropes[layer.rope];
        let (q, k) = match cfg.rope {
            Rope::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            ),
            Rope::Halves => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
        };
        cache.k[i].slice_set(&k.to_dtype(cfg.kv_dtype)?, 2, pos)?;
        cache.v[i].slice_set(&v.to_dtype(cfg.kv_dtype)?, 2, pos)?;
        Ok(q)
    }

    /// One sequence's attention in layer `i` through candle's tensor operations (GPUs, and
    /// prompt chunks on the CPU): its
    /// rotated queries `q` over the keys and values in `cache`; `(1, seq, n_head * head_dim)`.
    fn attend(
        &self,
        i: usize,
        layer: &Layer,
        part: &Part,
        cache: &KvCache,
        q: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (seq, total) = (part.seq, part.pos + part.seq);
        let n_rep = cfg.n_head / cfg.n_kv_head;
        let Some((global, local)) = &part.masks else {
            return Err(
                candle_core::Error::Msg("candle's attention runs with masks".into()).into(),
            );
        };
        let attended = match layer.window {
            Some(_) => local.as_ref().unwrap_or(global),
            None => global,
        };
        let mut keys = cache.k[i].narrow(2, attended.first, total - attended.first)?;
        let mut values = cache.v[i].narrow(2, attended.first, total - attended.first)?;
        // On a GPU an f16 cache is multiplied as stored (only the query and the scores are
        // converted); candle's f16 products on the CPU are slow (a 256-token prefill ran at
        // 0.74x), so there the keys and values are widened once per chunk instead.
        let dtype = if self.device.is_cpu() {
            keys = keys.to_dtype(DType::F32)?;
            values = values.to_dtype(DType::F32)?;
            DType::F32
        } else {
            cfg.kv_dtype
        };

        // Grouped-query attention without copying keys: fold the query heads that share a
        // key/value head into rows. Scores and softmax stay f32.
        let q = q
            .reshape((1, cfg.n_kv_head, n_rep * seq, cfg.head_dim))?
            .to_dtype(dtype)?;
        let att = q.matmul(&keys.t()?)?.to_dtype(DType::F32)?;
        let att = elementwise::scale_and_mask(
            &att,
            f64::from(cfg.attention_scale),
            attended.mask.as_ref(),
        )?;
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(dtype)?;
        Ok(att
            .matmul(&values)?
            .to_dtype(DType::F32)?
            .reshape((1, cfg.n_head, seq, cfg.head_dim))?
            .transpose(1, 2)?
            .reshape((1, seq, cfg.n_head * cfg.head_dim))?)
    }
}

/// A CPU cache buffer's elements from `start`, as the kernels read them.
fn cpu_rows(
    storage: &candle_core::Storage,
    start: usize,
    dtype: DType,
) -> Result<attention::Rows<'_>> {
    let candle_core::Storage::Cpu(cpu) = storage else {
        return Err(candle_core::Error::Msg("the CPU attention needs a CPU cache".into()).into());
    };
    Ok(match dtype {
        DType::F16 => attention::Rows::F16(&cpu.as_slice::<half::f16>()?[start..]),
        _ => attention::Rows::F32(&cpu.as_slice::<f32>()?[start..]),
    })
}

/// One sequence of a batched forward pass: the tokens to run after what its cache holds.
pub(crate) struct Fed<'a> {
    pub(crate) tokens: &'a [u32],
    pub(crate) cache: &'a mut KvCache,
}

/// Where a sequence sits in the batch's rows, and what its attention needs.
struct Part {
    row: usize,
    seq: usize,
    pos: usize,
    ropes: Vec<(Tensor, Tensor)>,
    /// The global and sliding layers' masks, for candle's attention only.
    masks: Option<(Attended, Option<Attended>)>,
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

/// The keys a kind of layer attends to in one forward pass: positions `first..pos + seq`,
/// and the additive mask over them (`None` where every query sees every one of them).
struct Attended {
    first: usize,
    mask: Option<Tensor>,
}

impl Attended {
    /// For `seq` new tokens after `pos` cached ones, with the rows of `n_rep` query heads
    /// stacked (row `r * seq + s` is query position `pos + s`). With a `window`, a query at
    /// `p` sees keys `j` with `p - j < window` (as llama.cpp and Hugging Face count).
    fn new(
        seq: usize,
        pos: usize,
        window: Option<usize>,
        n_rep: usize,
        device: &Device,
    ) -> Result<Self> {
        let total = pos + seq;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let hidden = |s: usize, j: usize| {
            let p = pos + s;
            j > p || window.is_some_and(|w| p - j >= w)
        };
        let width = total - first;
        // One new token sees every key from `first` on; with more, the first cannot see the
        // last.
        if seq == 1 {
            return Ok(Self { first, mask: None });
        }
        let mut data = Vec::with_capacity(n_rep * seq * width);
        for _ in 0..n_rep {
            for s in 0..seq {
                data.extend((first..total).map(
                    |j| {
                        if hidden(s, j) { f32::NEG_INFINITY } else { 0.0 }
                    },
                ));
            }
        }
        Ok(Self {
            first,
            mask: Some(Tensor::from_vec(data, (n_rep * seq, width), device)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(a: &Attended) -> Vec<Vec<f32>> {
        a.mask.as_ref().expect("a mask").to_vec2().unwrap()
    }

    #[test]
    fn mask_hides_the_future_per_stacked_row() {
        let a = Attended::new(2, 3, None, 2, &Device::Cpu).unwrap();
        assert_eq!(a.first, 0);
        let rows = rows(&a);
        assert_eq!(rows.len(), 4);
        for r in [0, 2] {
            assert!(rows[r][..4].iter().all(|x| *x == 0.0));
            assert!(rows[r][4].is_infinite());
        }
        assert!(rows[1].iter().all(|x| *x == 0.0));
        // One new token sees everything: no mask at all.
        assert!(
            Attended::new(1, 3, None, 2, &Device::Cpu)
                .unwrap()
                .mask
                .is_none()
        );
    }

    #[test]
    fn a_sliding_window_hides_what_is_too_old() {
        // Window 3, tokens at positions 5 and 6: position 5 sees 3..=5, 6 sees 4..=6.
        let a = Attended::new(2, 5, Some(3), 1, &Device::Cpu).unwrap();
        assert_eq!(
            a.first, 3,
            "keys before the first token's window are not even read"
        );
        let rows = rows(&a);
        let seen = |r: &Vec<f32>| -> Vec<usize> {
            r.iter()
                .enumerate()
                .filter(|(_, x)| x.is_finite())
                .map(|(j, _)| j + 3)
                .collect()
        };
        assert_eq!(seen(&rows[0]), vec![3, 4, 5]);
        assert_eq!(seen(&rows[1]), vec![4, 5, 6]);
        // Decoding one token: the window is a narrower key range, no mask.
        let one = Attended::new(1, 10, Some(3), 4, &Device::Cpu).unwrap();
        assert_eq!((one.first, one.mask.is_none()), (8, true));
    }
}
