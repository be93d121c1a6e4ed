//! Attention for one layer of a forward pass, dispatched by device and sequence: decoded
//! tokens on the CPU go to the kernel in [`super::attention`], prompt chunks and GPUs to
//! candle's products over the masks built here.

use candle_core::{DType, Device, Tensor};

use super::super::error::Result;
use super::kv_cache::KvCache;
use super::weights::{DecoderWeights, Layer};
use super::{attention, elementwise};

/// One sequence of a batched forward pass: the tokens to run after what its cache holds.
pub(crate) struct Fed<'a> {
    pub(crate) tokens: &'a [u32],
    pub(crate) cache: &'a mut KvCache,
}

/// Where a sequence sits in the batch's rows, and what its attention needs.
pub(super) struct Part {
    pub(super) row: usize,
    pub(super) seq: usize,
    pub(super) pos: usize,
    pub(super) ropes: Vec<(Tensor, Tensor)>,
    /// The global and sliding layers' masks, for candle's attention only.
    pub(super) masks: Option<(Attended, Option<Attended>)>,
}

impl DecoderWeights {
    /// Layer `i`'s attention on the CPU for every sequence of the batch, given each one's
    /// rotated `queries` (its keys and values already in its cache): the sequences decoding
    /// one token are read by [`attention::attend`] straight from their caches (all in one
    /// pass on the pool), and prompt chunks go through candle's matrix products, which are
    /// faster for many queries at once (measured: the direct kernel cost 20 % of a 256-token
    /// prefill). The result is `(1, rows, n_head * head_dim)`.
    pub(super) fn attend_cpu(
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

    /// One sequence's attention in layer `i` through candle's tensor operations (GPUs, and
    /// prompt chunks on the CPU): its
    /// rotated queries `q` over the keys and values in `cache`; `(1, seq, n_head * head_dim)`.
    pub(super) fn attend(
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

/// The keys a kind of layer attends to in one forward pass: positions `first..pos + seq`,
/// and the additive mask over them (`None` where every query sees every one of them).
pub(super) struct Attended {
    pub(super) first: usize,
    pub(super) mask: Option<Tensor>,
}

impl Attended {
    /// For `seq` new tokens after `pos` cached ones, with the rows of `n_rep` query heads
    /// stacked (row `r * seq + s` is query position `pos + s`). With a `window`, a query at
    /// `p` sees keys `j` with `p - j < window` (as llama.cpp and Hugging Face count).
    pub(super) fn new(
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
