//! A product on the pool: the inputs quantized to 8-bit blocks, the matrix split into tasks
//! of eight-row groups, each task's part computed for every input, and the parts assembled.

use rayon::prelude::*;

use super::blocks::{self, BlockQ8_1, QK, ROWS};
use super::dispatch::Gemm;
use super::{Groups, QMatrix};

impl QMatrix {
    /// `y[t][r] = Σ_k w[r][k] * x[t][k]` for `n = x.len() / cols` input rows; `y` is `n` by
    /// `rows`, row-major. Runs on the current rayon pool.
    pub(crate) fn matmul(&self, x: &[f32]) -> Vec<f32> {
        Self::matmul_each(&[self], &Activations::quantize(x))
            .pop()
            .expect("one product per matrix")
    }

    /// The products of several matrices with the same inputs (a layer's query, key and
    /// value), in one pass on the pool: one fork and join for all of them rather than one
    /// each, which a decoded token (about 35 µs a product) feels. Every matrix has the
    /// inputs' width.
    pub(crate) fn matmul_each(matrices: &[&QMatrix], acts: &Activations) -> Vec<Vec<f32>> {
        let threads = rayon::current_num_threads().max(1);
        let splits: Vec<Split> = matrices.iter().map(|m| m.split(threads)).collect();
        let jobs: Vec<(usize, usize)> = splits
            .iter()
            .enumerate()
            .flat_map(|(m, split)| (0..split.tasks).map(move |task| (m, task)))
            .collect();
        let parts: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(m, task)| matrices[m].task(splits[m], task, &acts.0))
            .collect();
        let mut parts = parts.into_iter();
        matrices
            .iter()
            .zip(&splits)
            .map(|(m, split)| {
                let mine: Vec<Vec<f32>> = parts.by_ref().take(split.tasks).collect();
                m.assemble(*split, &mine, acts.0.len() / (m.cols / QK))
            })
            .collect()
    }

    /// How a product splits into tasks: runs of eight-row groups.
    fn split(&self, threads: usize) -> Split {
        let n_groups = self.rows.div_ceil(ROWS);
        let per_task = (n_groups / (threads * 8)).clamp(1, 32);
        Split {
            per_task,
            tasks: n_groups.div_ceil(per_task),
        }
    }

    /// One task's part of the product: its groups' rows for every input, `n` by its rows.
    fn task(&self, split: Split, task: usize, acts: &[BlockQ8_1]) -> Vec<f32> {
        // One match per task, not per row: each format gets its own loop.
        match &self.groups {
            Groups::Q4(g) => self.task_of(g, split, task, acts),
            Groups::Q5(g) => self.task_of(g, split, task, acts),
            Groups::Q8(g) => self.task_of(g, split, task, acts),
        }
    }

    fn task_of<G: Gemm>(
        &self,
        groups: &[G],
        split: Split,
        task: usize,
        acts: &[BlockQ8_1],
    ) -> Vec<f32> {
        let per_row = self.cols / QK;
        let n = acts.len() / per_row;
        let n_groups = groups.len() / per_row;
        // A run of groups for every input (a group's weights stay in L1 while they meet all
        // the inputs), into the task's own `n` by `task rows` buffer.
        let first = task * split.per_task;
        let task_groups = split.per_task.min(n_groups - first);
        let width = task_groups * ROWS;
        let act = |t: usize| &acts[t * per_row..(t + 1) * per_row];
        let mut out = vec![0f32; n * width];
        for i in 0..task_groups {
            let g = first + i;
            let w = &groups[g * per_row..(g + 1) * per_row];
            let mut put = |t: usize, y: &[f32; ROWS]| {
                out[t * width + i * ROWS..][..ROWS].copy_from_slice(y);
            };
            // Four inputs at a time share each group's loads and unpacking.
            let mut t = 0;
            while t + 4 <= n {
                let y = G::gemm(self.simd, w, [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                for (k, y) in y.iter().enumerate() {
                    put(t + k, y);
                }
                t += 4;
            }
            for t in t..n {
                put(t, &G::gemm(self.simd, w, [act(t)])[0]);
            }
        }
        out
    }

    /// One output row per input from the tasks' parts, without the padding rows.
    fn assemble(&self, split: Split, parts: &[Vec<f32>], n: usize) -> Vec<f32> {
        let rows = self.rows;
        let width = split.per_task * ROWS;
        let mut y = vec![0f32; rows * n];
        let assemble = |(t, y): (usize, &mut [f32])| {
            for (task, part) in parts.iter().enumerate() {
                let first = task * width;
                let part_width = part.len() / n;
                let take = part_width.min(rows - first);
                y[first..first + take].copy_from_slice(&part[t * part_width..][..take]);
            }
        };
        if n >= 16 {
            y.par_chunks_mut(rows).enumerate().for_each(assemble);
        } else {
            y.chunks_mut(rows).enumerate().for_each(assemble);
        }
        y
    }
}

/// A product's tasks: `tasks` runs of `per_task` groups (the last may be shorter).
#[derive(Clone, Copy)]
struct Split {
    per_task: usize,
    tasks: usize,
}

/// Inputs of a product, quantized to 8-bit blocks.
pub(crate) struct Activations(Vec<BlockQ8_1>);

impl Activations {
    /// `x` (a whole number of blocks of 32) quantized; a prompt's on the pool (on one thread
    /// it took 7 % of a 2-thread prefill), a decoded token's where it is.
    pub(crate) fn quantize(x: &[f32]) -> Self {
        const PER_TASK: usize = 64;
        if x.len() < 4 * PER_TASK * QK {
            return Self(x.chunks_exact(QK).map(blocks::quantize_q8_1).collect());
        }
        Self(
            x.par_chunks_exact(QK)
                .with_min_len(PER_TASK)
                .map(blocks::quantize_q8_1)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::tests::{PACKED, matrix, random, reference};
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Module, Tensor};

    #[test]
    fn matmul_puts_every_row_and_token_in_its_place() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            // 70 rows are nine groups, the last padded, split over several tasks; 9 tokens
            // are two of four and one alone, and assemble on the pool; 1 token is a decoded one.
            for n in [9, 1] {
                let (rows, cols) = (70, 512);
                let (_, packed) = matrix(rows, cols, dtype, 3);
                let x = random(n * cols, 4);
                let ours = packed.matmul(&x);
                assert_eq!(ours.len(), n * rows);
                let acts: Vec<BlockQ8_1> = x.chunks_exact(QK).map(blocks::quantize_q8_1).collect();
                for r in 0..rows {
                    for t in 0..n {
                        let want = reference(&packed, r / ROWS, &acts, t)[r % ROWS];
                        let got = ours[t * rows + r];
                        assert_eq!(got.to_bits(), want.to_bits(), "{dtype:?} row {r} token {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_stays_close_to_candle_on_the_same_weights() {
        for dtype in PACKED.into_iter().chain([GgmlDType::Q6K]) {
            let (rows, cols, n) = (70, 512, 5);
            let (q, packed) = matrix(rows, cols, dtype, 3);
            let x = random(n * cols, 4);
            let ours = packed.matmul(&x);
            let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours.len(), theirs.len());
            // 8-bit activations (and, for K-quants, the requantization to Q8_0) move the result
            // by well under a percent of its size.
            let err: f32 = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = theirs.iter().map(|b| b * b).sum::<f32>().sqrt();
            assert!(
                err / norm < 0.01,
                "{dtype:?}: relative error {}",
                err / norm
            );
        }
    }
}
