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

/// `f(x[i], y[i mod y.len()])` for every element of `x` (`y` repeated to its length), in
/// pieces on the pool: runs of `x` against slices of `y`, loops the compiler vectorizes,
/// with no division per element.
fn zip_repeated(x: &mut [f32], y: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    each_piece(x, |at, mut x| {
        let mut j = at % y.len();
        while !x.is_empty() {
            let n = (y.len() - j).min(x.len());
            let (run, rest) = std::mem::take(&mut x).split_at_mut(n);
            for (x, y) in run.iter_mut().zip(&y[j..j + n]) {
                f(x, *y);
            }
            (x, j) = (rest, 0);
        }
    });
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
    zip_repeated(&mut x, &y, |x, y| *x += y);
    Ok(Tensor::from_vec(x, a.shape(), a.device())?)
}

/// `scores · scale + mask`: attention scores scaled, and the mask (its last two dimensions)
/// added to every leading index, as `(scores * scale)?.broadcast_add(mask)` computes them.
pub(crate) fn scale_and_mask(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let fits = |m: &Tensor| on_cpu(m) && scores.dims().ends_with(m.dims()) && m.elem_count() > 0;
    if !(on_cpu(scores) && mask.is_none_or(fits)) {
        let scaled = (scores * scale)?;
        return Ok(match mask {
            Some(mask) => scaled.broadcast_add(mask)?,
            None => scaled,
        });
    }
    let mut x = scores.flatten_all()?.to_vec1::<f32>()?;
    let scale = scale as f32;
    match mask {
        Some(mask) => {
            let mask = mask.flatten_all()?.to_vec1::<f32>()?;
            zip_repeated(&mut x, &mask, |x, m| *x = *x * scale + m);
        }
        None => each_piece(&mut x, |_, x| x.iter_mut().for_each(|x| *x *= scale)),
    }
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
            // A bias: the last dimension, repeated over the rows.
            let bias = tensor(width, &[width], 0.71);
            assert_eq!(
                bits(&add(&scores, &bias).unwrap()),
                bits(&scores.broadcast_add(&bias).unwrap())
            );
        }
    }
}
