//! Element-wise steps of the forward pass on the CPU, run on the engine's own thread pool.
//!
//! candle 0.11 runs an element-wise operation on 64 Ki elements or more (a prompt's residual
//! adds, its attention mask) on a global pool of its own: one thread per core but one, each
//! spinning for about a millisecond after every operation. That pool ignores
//! `EngineConfig::threads`, so a game's other cores would spin too, and on a 2-core machine
//! it took 8 % of a 2-thread prefill's samples beside the engine's threads (prefill ran about
//! 12 % faster with it switched off). Here those steps run on plain slices, in pieces on the
//! current rayon pool, with the same roundings.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::super::error::Result;

/// Elements per task.
const PIECE: usize = 16 * 1024;

/// Runs `f` on `x` in pieces, each with its offset, on the pool when there are several.
fn each_piece(x: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    if x.len() <= 2 * PIECE {
        return f(0, x);
    }
    x.par_chunks_mut(PIECE)
        .enumerate()
        .for_each(|(i, piece)| f(i * PIECE, piece));
}

/// Whether `t` is an `f32` tensor on the CPU, which these steps handle themselves.
fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `a + b`, where `b` has `a`'s shape (a residual connection) or its last dimensions (a
/// bias), repeated over the rest as `broadcast_add` does.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(on_cpu(a) && on_cpu(b) && a.dims().ends_with(b.dims()) && b.elem_count() > 0) {
        return Ok(a.broadcast_add(b)?);
    }
    let mut x = a.flatten_all()?.to_vec1::<f32>()?;
    let y = b.flatten_all()?.to_vec1::<f32>()?;
    each_piece(&mut x, |at, x| {
        if y.len() >= at + x.len() {
            for (x, y) in x.iter_mut().zip(&y[at..]) {
                *x += y;
            }
        } else {
            for (i, x) in x.iter_mut().enumerate() {
                *x += y[(at + i) % y.len()];
            }
        }
    });
    Ok(Tensor::from_vec(x, a.shape(), a.device())?)
}

/// `scores · scale + mask`: attention scores scaled, and the mask (its last two dimensions)
/// added to every leading index, as `(scores * scale)?.broadcast_add(mask)` computes them.
pub(crate) fn scale_and_mask(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    if !(on_cpu(scores) && mask.is_none_or(on_cpu)) {
        let scaled = (scores * scale)?;
        return Ok(match mask {
            Some(mask) => scaled.broadcast_add(mask)?,
            None => scaled,
        });
    }
    let mut x = scores.flatten_all()?.to_vec1::<f32>()?;
    let mask = mask
        .map(|m| m.flatten_all().and_then(|m| m.to_vec1::<f32>()))
        .transpose()?;
    if let Some(mask) = &mask
        && (mask.is_empty() || x.len() % mask.len() != 0)
    {
        return Err(candle_core::Error::Msg(format!(
            "a mask of {} elements for {} scores",
            mask.len(),
            x.len()
        ))
        .into());
    }
    let scale = scale as f32;
    each_piece(&mut x, |at, x| match &mask {
        Some(mask) => {
            for (i, x) in x.iter_mut().enumerate() {
                *x = *x * scale + mask[(at + i) % mask.len()];
            }
        }
        None => {
            for x in x.iter_mut() {
                *x *= scale;
            }
        }
    });
    Ok(Tensor::from_vec(x, scores.shape(), scores.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(n: usize, shape: &[usize], seed: f32) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin() * 3.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Large enough to run in pieces on the pool, and small.
    #[test]
    fn same_bits_as_candle() {
        for (heads, rows, width) in [(3, 96, 256), (1, 4, 5)] {
            let n = heads * rows * width;
            let scores = tensor(n, &[1, heads, rows, width], 0.37);
            let mask = tensor(rows * width, &[rows, width], 0.11);
            let ours = scale_and_mask(&scores, 0.125, Some(&mask)).unwrap();
            let theirs = (&scores * 0.125).unwrap().broadcast_add(&mask).unwrap();
            let bits = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&ours), bits(&theirs));
            let ours = scale_and_mask(&scores, 0.125, None).unwrap();
            assert_eq!(bits(&ours), bits(&(&scores * 0.125).unwrap()));
            let other = tensor(n, &[1, heads, rows, width], 0.53);
            assert_eq!(
                bits(&add(&scores, &other).unwrap()),
                bits(&(&scores + &other).unwrap())
            );
        }
    }
}
