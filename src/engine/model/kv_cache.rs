//! One conversation's KV cache: owned by the caller, grown in blocks up to the context, cut
//! back to a shared prefix, and copied for alternatives.

use candle_core::{Device, Tensor};

use super::super::error::Result;
use super::hparams::DecoderConfig;

/// One conversation's attention keys and values, grown in blocks and cut back on demand.
#[derive(Debug)]
pub(crate) struct KvCache {
    pub(super) k: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    pub(super) len: usize,
    pub(super) capacity: usize,
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

    pub(super) fn reserve(
        &mut self,
        cfg: &DecoderConfig,
        needed: usize,
        device: &Device,
    ) -> Result<()> {
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
