//! Attention on the CPU for sequences decoding one token, read straight from the caches'
//! memory: every query head of every sequence in a batch is one task on the thread pool.
//!
//! Through candle, attention cost about 30 tensor operations per layer and sequence, each a
//! fresh allocation, and every candle CPU matmul asked the kernel for `/proc/cpuinfo` (its
//! thread count is not cached): 6.7 % of a batched decode's time at 2 threads. Here a query
//! row meets its keys in one pass, the causal mask and the sliding window are index ranges,
//! and an f16 cache is read as it is stored.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// A cache's keys or values: `(n_kv_head, capacity, head_dim)`, row-major.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// `n` values from `start`, as f32: borrowed from an f32 cache, converted into `buf`
    /// from an f16 one (with F16C where the CPU has it).
    #[inline]
    fn rows<'b>(&self, start: usize, n: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match *self {
            Rows::F32(x) => &x[start..start + n],
            Rows::F16(x) => {
                buf.resize(n, 0.0);
                x[start..start + n].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

/// One sequence of the batch: its rotated queries, and its cache after this pass's keys and
/// values were written to it.
pub(crate) struct Sequence<'a> {
    /// `(n_head, seq, head_dim)`, row-major.
    pub(crate) q: &'a [f32],
    /// Its first row in the batch's output.
    pub(crate) row: usize,
    pub(crate) seq: usize,
    /// Tokens cached before this pass.
    pub(crate) pos: usize,
    pub(crate) keys: Rows<'a>,
    pub(crate) values: Rows<'a>,
    /// Positions per head in the cache buffers.
    pub(crate) capacity: usize,
}

/// The shape every sequence shares.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
    /// Multiplies the scores before the softmax.
    pub(crate) scale: f32,
    /// A query at `p` sees keys `j` with `p - j < window`; `None`: every earlier key.
    pub(crate) window: Option<usize>,
}

/// `softmax(scale * q kᵀ) v` for every query head of every sequence, causal (a query at
/// position `p` sees keys `..=p`, within the window if there is one), written to `out`:
/// `(rows, n_head * head_dim)`, the batch's rows in order.
pub(crate) fn attend(heads: Heads, sequences: &[Sequence<'_>], out: &mut [f32]) {
    let d = heads.head_dim;
    let n_rep = heads.n_head / heads.n_kv_head;
    // Each chunk is one (row, key/value head): the `n_rep` query heads that share it are
    // adjacent in the output, so its keys and values are read (an f16 cache: converted) once
    // for all of them. Rows map back to their sequence.
    out.par_chunks_mut(n_rep * d).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(keys, values, scores), (chunk, y)| {
            let (row, kvh) = (chunk / heads.n_kv_head, chunk % heads.n_kv_head);
            let s = sequences.partition_point(|x| x.row + x.seq <= row);
            let x = &sequences[s];
            let i = row - x.row;
            let p = x.pos + i;
            let first = heads.window.map_or(0, |w| (p + 1).saturating_sub(w));
            let span = (first * d)..((p + 1) * d);
            let base = kvh * x.capacity * d;
            let keys = x.keys.rows(base + span.start, span.len(), keys);
            let values = x.values.rows(base + span.start, span.len(), values);
            for (r, y) in y.chunks_exact_mut(d).enumerate() {
                let h = kvh * n_rep + r;
                let q = &x.q[(h * x.seq + i) * d..][..d];
                scores.clear();
                scores.extend(keys.chunks_exact(d).map(|k| heads.scale * dot(q, k)));
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0f32;
                for score in scores.iter_mut() {
                    *score = (*score - max).exp();
                    sum += *score;
                }
                y.fill(0.0);
                for (weight, value) in scores.iter().zip(values.chunks_exact(d)) {
                    let w = weight / sum;
                    for (o, v) in y.iter_mut().zip(value) {
                        *o += w * v;
                    }
                }
            }
        },
    );
}

/// A dot product the compiler vectorizes: eight independent sums.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook computation, one query at a time.
    fn naive(heads: Heads, x: &Sequence<'_>, keys: &[f32], values: &[f32]) -> Vec<f32> {
        let d = heads.head_dim;
        let n_rep = heads.n_head / heads.n_kv_head;
        let mut out = vec![0f32; x.seq * heads.n_head * d];
        for i in 0..x.seq {
            for h in 0..heads.n_head {
                let p = x.pos + i;
                let q = &x.q[(h * x.seq + i) * d..][..d];
                let kv = |t: &[f32], j: usize| -> Vec<f32> {
                    t[((h / n_rep) * x.capacity + j) * d..][..d].to_vec()
                };
                let seen: Vec<usize> = (0..=p)
                    .filter(|j| heads.window.is_none_or(|w| p - j < w))
                    .collect();
                let scores: Vec<f64> = seen
                    .iter()
                    .map(|&j| {
                        let k = kv(keys, j);
                        f64::from(heads.scale)
                            * q.iter().zip(&k).map(|(a, b)| f64::from(a * b)).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in seen.iter().zip(&scores) {
                    let v = kv(values, j);
                    for k in 0..d {
                        out[(i * heads.n_head + h) * d + k] +=
                            ((s - max).exp() / sum) as f32 * v[k];
                    }
                }
            }
        }
        out
    }

    fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_textbook_for_batches_windows_and_f16() {
        let (n_head, n_kv_head, d, capacity) = (6, 2, 16, 12);
        for window in [None, Some(3)] {
            let heads = Heads {
                n_head,
                n_kv_head,
                head_dim: d,
                scale: 0.25,
                window,
            };
            // Two sequences: a prompt of 3 after 2 cached, and one decoded token after 7.
            let shapes = [(3usize, 2usize), (1, 7)];
            let keys: Vec<Vec<f32>> = (0..2)
                .map(|s| random(n_kv_head * capacity * d, 10 + s))
                .collect();
            let values: Vec<Vec<f32>> = (0..2)
                .map(|s| random(n_kv_head * capacity * d, 20 + s))
                .collect();
            let halves = |t: &Vec<f32>| t.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
            let (keys16, values16): (Vec<_>, Vec<_>) = (
                keys.iter().map(halves).collect(),
                values.iter().map(halves).collect(),
            );
            let qs: Vec<Vec<f32>> = shapes
                .iter()
                .enumerate()
                .map(|(s, (seq, _))| random(n_head * seq * d, 30 + s as u32))
                .collect();
            for f16_cache in [false, true] {
                let mut row = 0;
                let sequences: Vec<Sequence<'_>> = shapes
                    .iter()
                    .enumerate()
                    .map(|(s, &(seq, pos))| {
                        let x = Sequence {
                            q: &qs[s],
                            row,
                            seq,
                            pos,
                            keys: if f16_cache {
                                Rows::F16(&keys16[s])
                            } else {
                                Rows::F32(&keys[s])
                            },
                            values: if f16_cache {
                                Rows::F16(&values16[s])
                            } else {
                                Rows::F32(&values[s])
                            },
                            capacity,
                        };
                        row += seq;
                        x
                    })
                    .collect();
                let mut out = vec![0f32; row * n_head * d];
                attend(heads, &sequences, &mut out);
                let mut at = 0;
                for (s, x) in sequences.iter().enumerate() {
                    let (k, v): (Vec<f32>, Vec<f32>) = if f16_cache {
                        (
                            keys16[s].iter().map(|h| h.to_f32()).collect(),
                            values16[s].iter().map(|h| h.to_f32()).collect(),
                        )
                    } else {
                        (keys[s].clone(), values[s].clone())
                    };
                    let want = naive(heads, x, &k, &v);
                    let got = &out[at..at + want.len()];
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-5,
                            "{window:?} f16 {f16_cache}: {g} vs {w}"
                        );
                    }
                    at += want.len();
                }
            }
        }
    }
}
