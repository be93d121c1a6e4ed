//! The decoder-only transformer every supported family is a variant of (Llama, SmolLM,
//! Mistral, Qwen 2 and 3, Gemma 3, Phi-3), with a KV cache owned by the caller, so one set of
//! weights serves many conversations and a cache can be cut back to a shared prefix.
//!
//! The family modules ([`super::llama`], [`super::qwen`], [`super::gemma3`], [`super::phi3`])
//! read their hyper-parameters into a [`DecoderConfig`](super::hparams::DecoderConfig), and
//! each difference between families is a field of the config. This module holds the one
//! forward pass; the weights are in [`super::weights`], the cache in [`super::kv_cache`] and
//! each layer's attention in [`super::attend`].

use candle_core::{DType, Tensor};

use super::super::error::{EngineError, Result};
use super::attend::{Attended, Fed, Part};
use super::elementwise;
use super::hparams::Rope;
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::weights::{DecoderWeights, GateUp, Layer, Qkv};

impl DecoderWeights {
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
}
