//! The llama-family transformer (Llama 1-3, SmolLM, Mistral) with a KV cache owned by the
//! caller, so one set of weights serves many conversations and a cache can be cut back to a
//! shared prefix.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::super::error::Result;
use super::super::gguf::GgufHeader;
use super::super::kernels::{QMatrix, Simd};
use super::source::TensorSource;

/// Hyper-parameters read from `llama.*` metadata.
#[derive(Clone, Debug)]
pub(crate) struct LlamaConfig {
    pub(crate) n_layer: usize,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
    pub(crate) rms_eps: f32,
    pub(crate) rope_base: f32,
    /// Positions the rotary tables and caches hold: the context in use, not the file's.
    pub(crate) context_length: usize,
}

impl LlamaConfig {
    /// The hyper-parameters (checked against [`limits`](super::super::limits) already), for
    /// `n_ctx` positions.
    fn from_header(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = h.usize(&key("embedding_length"))?;
        let n_head = h.usize(&key("attention.head_count"))?;
        let n_kv_head = h
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        let bad = |problem: String| super::super::error::EngineError::Metadata {
            file: h.file.clone(),
            key: key("attention.head_count"),
            problem,
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || n_embd % n_head != 0 {
            return Err(bad(format!(
                "{n_head} heads ({n_kv_head} key/value heads) do not divide {n_embd} dimensions"
            )));
        }
        let head_dim = h
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(n_embd / n_head);
        Ok(Self {
            n_layer: h.usize(&key("block_count"))?,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: h
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_base: h.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            context_length: n_ctx,
        })
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

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Immutable llama weights; cheap to share between conversations.
#[derive(Debug)]
pub(crate) struct LlamaWeights {
    pub(crate) config: LlamaConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
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

    fn reserve(&mut self, cfg: &LlamaConfig, needed: usize, device: &Device) -> Result<()> {
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
            let t = Tensor::zeros(shape, DType::F32, device)?;
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

impl LlamaWeights {
    pub(crate) fn load(src: &mut TensorSource<'_>, arch: &str, n_ctx: usize) -> Result<Self> {
        let header = src.header;
        let config = LlamaConfig::from_header(header, arch, n_ctx)?;
        let device = src.device.clone();
        let embd_q: Arc<QTensor> = Arc::new(src.qtensor("token_embd.weight")?);
        let packed_embd = match src.packed {
            Some(simd) => QMatrix::pack(&embd_q, simd)?.map(Arc::new),
            None => None,
        };
        let embeddings = match &packed_embd {
            Some(m) => Embeddings::Packed(m.clone()),
            None => Embeddings::Dense(embd_q.dequantize(&device)?),
        };
        let output = if header.content.tensor_infos.contains_key("output.weight") {
            Linear::load(src, "output.weight")?
        } else if let Some(m) = packed_embd {
            // Tied embeddings: one packed copy serves both.
            Linear::Packed(m)
        } else {
            Linear::from_qtensor(embd_q, None)?
        };
        let norm = src.qtensor("output_norm.weight")?.dequantize(&device)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(Layer {
                attn_norm: src.qtensor(&p("attn_norm"))?.dequantize(&device)?,
                wq: Linear::load(src, &p("attn_q"))?,
                wk: Linear::load(src, &p("attn_k"))?,
                wv: Linear::load(src, &p("attn_v"))?,
                wo: Linear::load(src, &p("attn_output"))?,
                ffn_norm: src.qtensor(&p("ffn_norm"))?.dequantize(&device)?,
                gate: Linear::load(src, &p("ffn_gate"))?,
                up: Linear::load(src, &p("ffn_up"))?,
                down: Linear::load(src, &p("ffn_down"))?,
            });
        }
        let (cos, sin) = rope_tables(&config, &device)?;
        Ok(Self {
            config,
            embeddings,
            layers,
            norm,
            output,
            cos,
            sin,
            device,
        })
    }

    /// Runs `tokens` at positions `cache.len()..` and returns the logits of the last one.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let _span = tracing::trace_span!("forward", tokens = tokens.len()).entered();
        let cfg = &self.config;
        let seq = tokens.len();
        let pos = cache.len;
        cache.reserve(cfg, pos + seq, &self.device)?;
        let total = pos + seq;
        let n_rep = cfg.n_head / cfg.n_kv_head;
        let mut x = self.embeddings.lookup(tokens, &self.device)?.unsqueeze(0)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let mask = (seq > 1)
            .then(|| causal_mask(seq, pos, n_rep, &self.device))
            .transpose()?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();

        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
            let heads = |t: Tensor, n: usize| -> Result<Tensor> {
                Ok(t.reshape((1, seq, n, cfg.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = heads(layer.wq.forward(&h)?, cfg.n_head)?;
            let k = heads(layer.wk.forward(&h)?, cfg.n_kv_head)?;
            let v = heads(layer.wv.forward(&h)?, cfg.n_kv_head)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            cache.k[i].slice_set(&k, 2, pos)?;
            cache.v[i].slice_set(&v, 2, pos)?;
            let keys = cache.k[i].narrow(2, 0, total)?;
            let values = cache.v[i].narrow(2, 0, total)?;

            // Grouped-query attention without copying keys: fold the query heads that share a
            // key/value head into rows.
            let q = q.reshape((1, cfg.n_kv_head, n_rep * seq, cfg.head_dim))?;
            let mut att = (q.matmul(&keys.t()?)? * scale)?;
            if let Some(mask) = &mask {
                att = att.broadcast_add(mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att
                .matmul(&values)?
                .reshape((1, cfg.n_head, seq, cfg.head_dim))?
                .transpose(1, 2)?
                .reshape((1, seq, cfg.n_head * cfg.head_dim))?;
            x = (x + layer.wo.forward(&y)?)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
            let ff = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&ff)?)?;
        }
        cache.len = total;
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, cfg.rms_eps)?;
        let logits = self.output.forward(&last)?.squeeze(0)?.squeeze(0)?;
        Ok(logits.to_dtype(DType::F32)?.to_vec1()?)
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32))
        .collect();
    let n = cfg.context_length;
    let mut angles = Vec::with_capacity(n * half);
    for p in 0..n {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (n, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive mask for `seq` new tokens after `pos` cached ones, with the rows of `n_rep`
/// query heads stacked (row `r * seq + s` is query position `pos + s`).
fn causal_mask(seq: usize, pos: usize, n_rep: usize, device: &Device) -> Result<Tensor> {
    let total = pos + seq;
    let mut data = Vec::with_capacity(n_rep * seq * total);
    for _ in 0..n_rep {
        for s in 0..seq {
            data.extend((0..total).map(|j| if j > pos + s { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Ok(Tensor::from_vec(data, (n_rep * seq, total), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_the_future_per_stacked_row() {
        let m = causal_mask(2, 3, 2, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = m.to_vec2().unwrap();
        assert_eq!(rows.len(), 4);
        for r in [0, 2] {
            assert!(rows[r][..4].iter().all(|x| *x == 0.0));
            assert!(rows[r][4].is_infinite());
        }
        assert!(rows[1].iter().all(|x| *x == 0.0));
    }
}
