//! Quantized matrix products for the decoder's forward pass on the CPU.
//!
//! Why not candle's `QMatMul`: candle 0.11 has no SIMD kernel for Q4_1 (the default model's
//! format; measured 7-11x slower than llama.cpp), and its quantized matmul runs on a global,
//! spinning thread pool sized to every core, which ignores `EngineConfig::threads` and takes
//! the game's core. Here weights are packed once at load into blocks with `f32` scales,
//! interleaved eight rows at a time (see `blocks`), the activations are quantized per block
//! of 32 to 8 bits (llama.cpp's `Q8_1`: scale and scaled sum), and each block of eight rows
//! times up to four inputs is integer dot products, with AVX2 (and VNNI) where the CPU has it
//! and a scalar path that defines the result everywhere else. Work is split over runs of
//! eight-row groups on the current rayon pool, so the engine's thread budget holds.
//!
//! Laid out as candle's `quantized` module is: `blocks` holds the block formats, `scalar`
//! the reference kernel, and `avx2` the SIMD kernels, the only `unsafe` code in the crate
//! (reached through a value that exists only after runtime detection of AVX2 and FMA; the
//! tests check them against the scalar path bit for bit). This file packs matrices, splits
//! products into tasks and dispatches to one or the other.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod scalar;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use rayon::prelude::*;

use blocks::{
    BlockQ4_1, BlockQ5_1, BlockQ8_0, BlockQ8_1, Group, GroupQ4, GroupQ5, GroupQ8, QK, ROWS,
    RowBlock,
};

/// A matrix's groups: `per_row` groups (one per block column) for each eight rows.
#[derive(Debug)]
enum Groups {
    Q4(Vec<GroupQ4>),
    Q5(Vec<GroupQ5>),
    Q8(Vec<GroupQ8>),
}

impl Groups {
    fn len(&self) -> usize {
        match self {
            Groups::Q4(g) => g.len(),
            Groups::Q5(g) => g.len(),
            Groups::Q8(g) => g.len(),
        }
    }
}

/// A weight matrix (`rows` outputs by `cols` inputs) in a format these kernels multiply.
#[derive(Debug)]
pub(crate) struct QMatrix {
    rows: usize,
    cols: usize,
    groups: Groups,
    simd: Simd,
}

impl QMatrix {
    /// Whether [`Packer`] takes `dtype` as stored: `Q4_0`, `Q4_1`, `Q4_K`,
    /// `Q5_0`, `Q5_1`, `Q5_K` and `Q8_0` keep every weight as the file has it (see [`blocks`]).
    pub(crate) fn stores(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, Q4_0 | Q4_1 | Q4K | Q5_0 | Q5_1 | Q5K | Q8_0)
    }

    /// Packs a GGUF tensor of shape `(rows, cols)`: the formats [`QMatrix::stores`] as they
    /// are, other block formats (`Q6_K`, `Q2_K`, `Q3_K`) requantized to `Q8_0` (finer than any
    /// of them, so nothing is lost that matters). Returns `None` for float tensors and shapes
    /// these kernels do not handle.
    pub(crate) fn pack(t: &QTensor, simd: Simd) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        let &[rows, cols] = dims else { return Ok(None) };
        if cols % QK != 0 {
            return Ok(None);
        }
        if Self::stores(t.dtype()) {
            let mut p = Packer::new(t.dtype(), rows, cols, simd);
            p.push(&t.data()?);
            return p.finish().map(Some);
        }
        let groups = match t.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return Ok(None),
            _ => {
                let values = t
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let blocks: Vec<BlockQ8_0> =
                    values.chunks_exact(QK).map(blocks::quantize_q8_0).collect();
                Groups::Q8(blocks::interleave(&blocks, cols / QK))
            }
        };
        let m = Self {
            rows,
            cols,
            groups,
            simd,
        };
        m.check()?;
        Ok(Some(m))
    }

    /// Output size.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input size.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`, dequantized into `out` (an embedding lookup).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match &self.groups {
            Groups::Q4(g) => self.dequantize_from(g, r, out),
            Groups::Q5(g) => self.dequantize_from(g, r, out),
            Groups::Q8(g) => self.dequantize_from(g, r, out),
        }
    }

    fn dequantize_from<G: Group>(&self, groups: &[G], r: usize, out: &mut [f32]) {
        let per_row = self.cols / QK;
        let (first, lane) = (r / ROWS * per_row, r % ROWS);
        for (g, out) in groups[first..first + per_row]
            .iter()
            .zip(out.chunks_exact_mut(QK))
        {
            let (d, m) = (g.d()[lane], g.m().map_or(0.0, |m| m[lane]));
            for (e, o) in out.iter_mut().enumerate() {
                *o = d * g.q(lane, e) as f32 + m;
            }
        }
    }

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

    fn check(&self) -> Result<()> {
        let want = self.rows.div_ceil(ROWS) * (self.cols / QK);
        if self.groups.len() != want {
            candle_core::bail!(
                "packed {} groups, shape {}x{} needs {want}",
                self.groups.len(),
                self.rows,
                self.cols
            );
        }
        Ok(())
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

/// Blocks of whole rows not yet interleaved (fewer than eight rows' worth between pushes).
enum Pending {
    Q4(Vec<BlockQ4_1>),
    Q5(Vec<BlockQ5_1>),
    Q8(Vec<BlockQ8_0>),
}

/// Builds a [`QMatrix`] of a format [`QMatrix::stores`] from whole rows of the file's bytes,
/// in order. The loader streams a tensor through it a few rows at a time, so the file's bytes
/// are never held whole beside the packed copy.
pub(crate) struct Packer {
    dtype: GgmlDType,
    pending: Pending,
    /// Blocks pushed so far.
    pushed: usize,
    matrix: QMatrix,
}

impl Packer {
    pub(crate) fn new(dtype: GgmlDType, rows: usize, cols: usize, simd: Simd) -> Self {
        let n = rows.div_ceil(ROWS) * cols / QK;
        let (pending, groups) = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => {
                (Pending::Q4(Vec::new()), Groups::Q4(Vec::with_capacity(n)))
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q5K => {
                (Pending::Q5(Vec::new()), Groups::Q5(Vec::with_capacity(n)))
            }
            _ => (Pending::Q8(Vec::new()), Groups::Q8(Vec::with_capacity(n))),
        };
        Self {
            dtype,
            pending,
            pushed: 0,
            matrix: QMatrix {
                rows,
                cols,
                groups,
                simd,
            },
        }
    }

    /// Appends whole rows of the file's bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let per_row = self.matrix.cols / QK;
        let dtype = self.dtype;
        self.pushed += match (&mut self.pending, &mut self.matrix.groups) {
            (Pending::Q4(p), Groups::Q4(g)) => absorb(
                p,
                match dtype {
                    GgmlDType::Q4_0 => blocks::parse_q4_0(bytes),
                    GgmlDType::Q4K => blocks::parse_q4_k(bytes),
                    _ => blocks::parse_q4_1(bytes),
                },
                g,
                per_row,
            ),
            (Pending::Q5(p), Groups::Q5(g)) => absorb(
                p,
                match dtype {
                    GgmlDType::Q5_0 => blocks::parse_q5_0(bytes),
                    GgmlDType::Q5K => blocks::parse_q5_k(bytes),
                    _ => blocks::parse_q5_1(bytes),
                },
                g,
                per_row,
            ),
            (Pending::Q8(p), Groups::Q8(g)) => absorb(p, blocks::parse_q8_0(bytes), g, per_row),
            _ => unreachable!("the pending blocks and the groups have one format"),
        };
    }

    /// The matrix, once every row has arrived.
    pub(crate) fn finish(mut self) -> Result<QMatrix> {
        let m = &mut self.matrix;
        let (per_row, want) = (m.cols / QK, m.rows * m.cols / QK);
        if self.pushed != want {
            candle_core::bail!(
                "tensor data holds {} blocks, shape {}x{} needs {want}",
                self.pushed,
                m.rows,
                m.cols
            );
        }
        match (&mut self.pending, &mut m.groups) {
            (Pending::Q4(p), Groups::Q4(g)) => flush(p, g, per_row),
            (Pending::Q5(p), Groups::Q5(g)) => flush(p, g, per_row),
            (Pending::Q8(p), Groups::Q8(g)) => flush(p, g, per_row),
            _ => unreachable!("the pending blocks and the groups have one format"),
        }
        self.matrix.check()?;
        Ok(self.matrix)
    }
}

/// Adds `blocks` to `pending`, then moves every whole eight rows of it into `groups`.
/// Returns how many blocks came.
fn absorb<B: RowBlock>(
    pending: &mut Vec<B>,
    blocks: Vec<B>,
    groups: &mut Vec<B::Group>,
    per_row: usize,
) -> usize {
    let n = blocks.len();
    pending.extend(blocks);
    let whole = pending.len() / (ROWS * per_row) * ROWS * per_row;
    if whole > 0 {
        groups.extend(blocks::interleave(&pending[..whole], per_row));
        pending.drain(..whole);
    }
    n
}

/// Moves the last rows of `pending` (fewer than eight) into `groups`, padded with zero rows.
fn flush<B: RowBlock>(pending: &mut Vec<B>, groups: &mut Vec<B::Group>, per_row: usize) {
    groups.extend(blocks::interleave(pending, per_row));
    pending.clear();
}

/// Which kernels this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl Simd {
    /// Every kernel build this CPU runs, the best first.
    #[cfg(test)]
    fn builds() -> Vec<Self> {
        match Self::detect() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(cpu) => vec![Simd::Avx2(cpu), Simd::Avx2(cpu.without_vnni())],
            simd => vec![simd],
        }
    }

    /// The best this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = avx2::Avx2::detect() {
            return Simd::Avx2(cpu);
        }
        Simd::Scalar
    }
}

/// A group format's product kernel: eight rows of groups `w` times `N` inputs, with the
/// SIMD build this CPU has or the scalar reference.
trait Gemm: Group {
    fn gemm<const N: usize>(simd: Simd, w: &[Self], a: [&[BlockQ8_1]; N]) -> [[f32; ROWS]; N];
}

macro_rules! gemm {
    ($($group:ty => $kernel:ident),*) => {
        $(
            impl Gemm for $group {
                fn gemm<const N: usize>(
                    simd: Simd,
                    w: &[Self],
                    a: [&[BlockQ8_1]; N],
                ) -> [[f32; ROWS]; N] {
                    match simd {
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2(cpu) => cpu.$kernel(w, a),
                        Simd::Scalar => a.map(|a| scalar::gemv(w, a)),
                    }
                }
            }
        )*
    };
}

gemm!(GroupQ4 => gemm_q4, GroupQ5 => gemm_q5, GroupQ8 => gemm_q8);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn matrix(rows: usize, cols: usize, dtype: GgmlDType, seed: u64) -> (QTensor, QMatrix) {
        let w = Tensor::from_vec(random(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let packed = QMatrix::pack(&q, Simd::detect())
            .unwrap()
            .expect("packable");
        (q, packed)
    }

    /// Every GGUF format the kernels take, and the packed format it becomes.
    const PACKED: [GgmlDType; 7] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q5K,
        GgmlDType::Q8_0,
    ];

    fn acts(n: usize, cols: usize, seed: u64) -> Vec<BlockQ8_1> {
        random(n * cols, seed)
            .chunks_exact(QK)
            .map(blocks::quantize_q8_1)
            .collect()
    }

    /// Group `g`'s eight rows times input `t`, by the scalar reference.
    fn reference(m: &QMatrix, g: usize, acts: &[BlockQ8_1], t: usize) -> [f32; ROWS] {
        let per_row = m.cols / QK;
        let (w, a) = (
            g * per_row..(g + 1) * per_row,
            &acts[t * per_row..(t + 1) * per_row],
        );
        match &m.groups {
            Groups::Q4(b) => scalar::gemv(&b[w], a),
            Groups::Q5(b) => scalar::gemv(&b[w], a),
            Groups::Q8(b) => scalar::gemv(&b[w], a),
        }
    }

    /// Group `g`'s eight rows times inputs `t..t + N` with `simd`.
    fn kernel<const N: usize>(
        m: &QMatrix,
        simd: Simd,
        g: usize,
        acts: &[BlockQ8_1],
        t: usize,
    ) -> [[f32; ROWS]; N] {
        let per_row = m.cols / QK;
        let w = g * per_row..(g + 1) * per_row;
        let a = std::array::from_fn(|k| &acts[(t + k) * per_row..(t + k + 1) * per_row]);
        match &m.groups {
            Groups::Q4(b) => Gemm::gemm(simd, &b[w], a),
            Groups::Q5(b) => Gemm::gemm(simd, &b[w], a),
            Groups::Q8(b) => Gemm::gemm(simd, &b[w], a),
        }
    }

    #[test]
    fn every_kernel_build_gives_the_scalar_references_bits() {
        for simd in Simd::builds() {
            for dtype in PACKED.into_iter().chain([GgmlDType::Q6K]) {
                let (_, m) = matrix(16, 256, dtype, 1);
                let acts = acts(4, 256, 2);
                for g in 0..2 {
                    let four = kernel::<4>(&m, simd, g, &acts, 0);
                    for (t, four) in four.iter().enumerate() {
                        let want = reference(&m, g, &acts, t);
                        let one = kernel::<1>(&m, simd, g, &acts, t)[0];
                        assert_eq!(
                            one.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "{simd:?} {dtype:?}"
                        );
                        assert_eq!(
                            four.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "{simd:?} {dtype:?}"
                        );
                    }
                }
            }
        }
    }

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

    /// The loader pushes a few rows at a time: any split packs the same groups as one push,
    /// and rows missing at the end are an error, not zero weights.
    #[test]
    fn packing_rows_in_pieces_matches_packing_them_whole() {
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let (rows, cols) = (21, 256);
            let (q, whole) = matrix(rows, cols, dtype, 6);
            let bytes = q.data().unwrap();
            let row_bytes = bytes.len() / rows;
            for piece in [1, 3, 8, 20] {
                let mut p = Packer::new(dtype, rows, cols, Simd::detect());
                for chunk in bytes.chunks(piece * row_bytes) {
                    p.push(chunk);
                }
                let m = p.finish().unwrap();
                let mut a = vec![0f32; cols];
                let mut b = vec![0f32; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut a);
                    whole.dequantize_row(r, &mut b);
                    assert_eq!(a, b, "{dtype:?} pieces of {piece} rows, row {r}");
                }
            }
            let mut short = Packer::new(dtype, rows, cols, Simd::detect());
            short.push(&bytes[..(rows - 1) * row_bytes]);
            let err = short.finish().unwrap_err().to_string();
            assert!(err.contains("blocks"), "{err}");
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

    /// Packing keeps every weight: each row dequantizes to what candle reads from the file
    /// (bit for bit where the format has one scale; within `f32` rounding where `d * q + m`
    /// stands for `d * (q - 8)` or a K-quant's `d * sc * q - dmin * m`).
    #[test]
    fn rows_dequantize_like_candle() {
        for dtype in PACKED {
            let (q, packed) = matrix(4, 512, dtype, 5);
            let full = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let mut row = vec![0f32; 512];
            for (r, theirs) in full.iter().enumerate() {
                packed.dequantize_row(r, &mut row);
                for (e, (ours, theirs)) in row.iter().zip(theirs).enumerate() {
                    assert!(
                        (ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0),
                        "{dtype:?} row {r} element {e}: {ours} vs {theirs}"
                    );
                }
            }
        }
    }
}
