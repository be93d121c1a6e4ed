//! Quantized matrix products for the llama forward pass on the CPU.
//!
//! Why not candle's `QMatMul`: candle 0.11 has no SIMD kernel for Q4_1 (the default model's
//! format; measured 7-11x slower than llama.cpp), and its quantized matmul runs on a global,
//! spinning thread pool sized to every core, which ignores `EngineConfig::threads` and takes
//! the game's core. Here weights are packed once at load into blocks with `f32` scales, the
//! activations are quantized per block of 32 to 8 bits (llama.cpp's `Q8_1`: scale and scaled
//! sum), and each output is an integer dot product, with AVX2 where the CPU has it and a
//! scalar path that defines the result everywhere else. Work is split over output rows on the
//! current rayon pool, so the engine's thread budget holds.
//!
//! Laid out as candle's `quantized` module is: `blocks` holds the block formats, `scalar`
//! the reference dots, and `avx2` the SIMD dots, the only `unsafe` code in the crate (reached
//! through a value that exists only after runtime detection of AVX2 and FMA; the tests check
//! it against the scalar path). This file packs matrices and dispatches to one or the other.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod scalar;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use rayon::prelude::*;

use blocks::{BlockQ4_1, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};

#[derive(Debug)]
enum Blocks {
    Q4_1(Vec<BlockQ4_1>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Vec<BlockQ8_0>),
}

impl Blocks {
    fn len(&self) -> usize {
        match self {
            Blocks::Q4_1(b) => b.len(),
            Blocks::Q5_1(b) => b.len(),
            Blocks::Q8_0(b) => b.len(),
        }
    }

    /// The dot of blocks `w` with the activations `a`.
    #[cfg(test)]
    fn dot(&self, simd: Simd, w: std::ops::Range<usize>, a: &[BlockQ8_1]) -> f32 {
        match self {
            Blocks::Q4_1(b) => dot_q4_1(simd, &b[w], a),
            Blocks::Q5_1(b) => dot_q5_1(simd, &b[w], a),
            Blocks::Q8_0(b) => dot_q8_0(simd, &b[w], a),
        }
    }

    /// Four dots of blocks `w`, sharing its loads.
    #[cfg(test)]
    fn dot4(&self, simd: Simd, w: std::ops::Range<usize>, a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        match self {
            Blocks::Q4_1(b) => dot4_q4_1(simd, &b[w], a),
            Blocks::Q5_1(b) => dot4_q5_1(simd, &b[w], a),
            Blocks::Q8_0(b) => dot4_q8_0(simd, &b[w], a),
        }
    }

    /// The scalar reference of [`Blocks::dot`].
    #[cfg(test)]
    fn dot_scalar(&self, w: std::ops::Range<usize>, a: &[BlockQ8_1]) -> f32 {
        match self {
            Blocks::Q4_1(b) => scalar::dot_q4_1(&b[w], a),
            Blocks::Q5_1(b) => scalar::dot_q5_1(&b[w], a),
            Blocks::Q8_0(b) => scalar::dot_q8_0(&b[w], a),
        }
    }
}

/// A weight matrix (`rows` outputs by `cols` inputs) in a format these kernels multiply.
#[derive(Debug)]
pub(crate) struct QMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
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
        let blocks = match t.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return Ok(None),
            _ => {
                let values = t
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Blocks::Q8_0(values.chunks_exact(QK).map(blocks::quantize_q8_0).collect())
            }
        };
        check_blocks(&blocks, rows, cols)?;
        Ok(Some(Self {
            rows,
            cols,
            blocks,
            simd,
        }))
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
        let per_row = self.cols / QK;
        let range = r * per_row..(r + 1) * per_row;
        match &self.blocks {
            Blocks::Q4_1(b) => {
                for (block, out) in b[range].iter().zip(out.chunks_exact_mut(QK)) {
                    for j in 0..QK / 2 {
                        out[j] = block.d * f32::from(block.qs[j] & 0x0F) + block.m;
                        out[j + QK / 2] = block.d * f32::from(block.qs[j] >> 4) + block.m;
                    }
                }
            }
            Blocks::Q5_1(b) => {
                for (block, out) in b[range].iter().zip(out.chunks_exact_mut(QK)) {
                    for (e, o) in out.iter_mut().enumerate() {
                        *o = block.d * f32::from(block.q(e)) + block.m;
                    }
                }
            }
            Blocks::Q8_0(b) => {
                for (block, out) in b[range].iter().zip(out.chunks_exact_mut(QK)) {
                    for (o, q) in out.iter_mut().zip(block.qs) {
                        *o = block.d * f32::from(q);
                    }
                }
            }
        }
    }

    /// `y[t][r] = Σ_k w[r][k] * x[t][k]` for `n = x.len() / cols` input rows; `y` is `n` by
    /// `rows`, row-major. Runs on the current rayon pool.
    pub(crate) fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let acts: Vec<BlockQ8_1> = x.chunks_exact(QK).map(blocks::quantize_q8_1).collect();
        let simd = self.simd;
        // One match per product, not per row: each format gets its own loop.
        match &self.blocks {
            Blocks::Q4_1(b) => self.product(
                b,
                &acts,
                |w, a| dot_q4_1(simd, w, a),
                |w, a| dot4_q4_1(simd, w, a),
            ),
            Blocks::Q5_1(b) => self.product(
                b,
                &acts,
                |w, a| dot_q5_1(simd, w, a),
                |w, a| dot4_q5_1(simd, w, a),
            ),
            Blocks::Q8_0(b) => self.product(
                b,
                &acts,
                |w, a| dot_q8_0(simd, w, a),
                |w, a| dot4_q8_0(simd, w, a),
            ),
        }
    }

    fn product<B: Sync>(
        &self,
        blocks: &[B],
        acts: &[BlockQ8_1],
        dot: impl Fn(&[B], &[BlockQ8_1]) -> f32 + Sync,
        dot4: impl Fn(&[B], [&[BlockQ8_1]; 4]) -> [f32; 4] + Sync,
    ) -> Vec<f32> {
        let per_row = self.cols / QK;
        let n = acts.len() / per_row;
        // Each task computes a run of weight rows for every input row (a weight row stays in
        // L1 while it meets all the inputs), into a transposed buffer.
        let threads = rayon::current_num_threads().max(1);
        let rows_per_task = (self.rows / (threads * 8)).clamp(4, 256);
        let mut yt = vec![0f32; self.rows * n];
        yt.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * rows_per_task;
                for (i, out) in out.chunks_exact_mut(n).enumerate() {
                    let r = first + i;
                    let w = &blocks[r * per_row..(r + 1) * per_row];
                    let act = |t: usize| &acts[t * per_row..(t + 1) * per_row];
                    // Four inputs at a time share each weight block's loads and unpacking.
                    let mut t = 0;
                    while t + 4 <= n {
                        let y = dot4(w, [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                        out[t..t + 4].copy_from_slice(&y);
                        t += 4;
                    }
                    for (t, y) in out.iter_mut().enumerate().skip(t) {
                        *y = dot(w, act(t));
                    }
                }
            });
        if n == 1 {
            return yt;
        }
        // Back to one row per input, eight inputs per task: each weight row's eight values
        // are read together, and the eight output rows are written in order (a plain
        // element-by-element transpose, on one thread, took 7 % of a prefill).
        const INPUTS: usize = 8;
        let rows = self.rows;
        let mut y = vec![0f32; rows * n];
        y.par_chunks_mut(rows * INPUTS)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * INPUTS;
                let inputs = out.len() / rows;
                for (r, col) in yt.chunks_exact(n).enumerate() {
                    for (i, v) in col[first..first + inputs].iter().enumerate() {
                        out[i * rows + r] = *v;
                    }
                }
            });
        y
    }
}

/// Builds a [`QMatrix`] of a format [`QMatrix::stores`] from whole blocks of the file's bytes,
/// in order. The loader streams a tensor through it a few rows at a time, so the file's bytes
/// are never held whole beside the packed copy.
pub(crate) struct Packer {
    dtype: GgmlDType,
    matrix: QMatrix,
}

impl Packer {
    pub(crate) fn new(dtype: GgmlDType, rows: usize, cols: usize, simd: Simd) -> Self {
        let n = rows * cols / QK;
        let blocks = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => {
                Blocks::Q4_1(Vec::with_capacity(n))
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q5K => {
                Blocks::Q5_1(Vec::with_capacity(n))
            }
            _ => Blocks::Q8_0(Vec::with_capacity(n)),
        };
        Self {
            dtype,
            matrix: QMatrix {
                rows,
                cols,
                blocks,
                simd,
            },
        }
    }

    /// Appends whole blocks of the file's bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        match (self.dtype, &mut self.matrix.blocks) {
            (GgmlDType::Q4_0, Blocks::Q4_1(b)) => b.extend(blocks::parse_q4_0(bytes)),
            (GgmlDType::Q4K, Blocks::Q4_1(b)) => b.extend(blocks::parse_q4_k(bytes)),
            (_, Blocks::Q4_1(b)) => b.extend(blocks::parse_q4_1(bytes)),
            (GgmlDType::Q5_0, Blocks::Q5_1(b)) => b.extend(blocks::parse_q5_0(bytes)),
            (GgmlDType::Q5K, Blocks::Q5_1(b)) => b.extend(blocks::parse_q5_k(bytes)),
            (_, Blocks::Q5_1(b)) => b.extend(blocks::parse_q5_1(bytes)),
            (_, Blocks::Q8_0(b)) => b.extend(blocks::parse_q8_0(bytes)),
        }
    }

    /// The matrix, once every block has arrived.
    pub(crate) fn finish(self) -> Result<QMatrix> {
        let m = self.matrix;
        check_blocks(&m.blocks, m.rows, m.cols)?;
        Ok(m)
    }
}

fn check_blocks(blocks: &Blocks, rows: usize, cols: usize) -> Result<()> {
    let n_blocks = blocks.len();
    if n_blocks != rows * cols / QK {
        candle_core::bail!(
            "tensor data holds {n_blocks} blocks, shape {rows}x{cols} needs {}",
            rows * cols / QK
        );
    }
    Ok(())
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

fn dot_q4_1(simd: Simd, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot_q4_1(w, a),
        Simd::Scalar => scalar::dot_q4_1(w, a),
    }
}

fn dot_q5_1(simd: Simd, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot_q5_1(w, a),
        Simd::Scalar => scalar::dot_q5_1(w, a),
    }
}

fn dot4_q5_1(simd: Simd, w: &[BlockQ5_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot4_q5_1(w, a),
        Simd::Scalar => a.map(|a| scalar::dot_q5_1(w, a)),
    }
}

fn dot_q8_0(simd: Simd, w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot_q8_0(w, a),
        Simd::Scalar => scalar::dot_q8_0(w, a),
    }
}

fn dot4_q4_1(simd: Simd, w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot4_q4_1(w, a),
        Simd::Scalar => a.map(|a| scalar::dot_q4_1(w, a)),
    }
}

fn dot4_q8_0(simd: Simd, w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2(cpu) => cpu.dot4_q8_0(w, a),
        Simd::Scalar => a.map(|a| scalar::dot_q8_0(w, a)),
    }
}

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

    #[test]
    fn simd_and_scalar_dots_agree() {
        for simd in Simd::builds() {
            simd_and_scalar_dots_agree_on(simd);
        }
    }

    fn simd_and_scalar_dots_agree_on(simd: Simd) {
        for dtype in PACKED {
            let (_, m) = matrix(3, 256, dtype, 1);
            let acts: Vec<BlockQ8_1> = random(256, 2)
                .chunks_exact(QK)
                .map(blocks::quantize_q8_1)
                .collect();
            for r in 0..3 {
                let w = r * 8..(r + 1) * 8;
                let (fast, slow) = (
                    m.blocks.dot(simd, w.clone(), &acts),
                    m.blocks.dot_scalar(w, &acts),
                );
                // Every build this CPU runs (AVX2 with or without VNNI) gives the same bits.
                let first = m.blocks.dot(Simd::detect(), r * 8..(r + 1) * 8, &acts);
                assert_eq!(fast.to_bits(), first.to_bits(), "{simd:?} {dtype:?}");
                let four = m.blocks.dot4(simd, r * 8..(r + 1) * 8, [&acts; 4]);
                assert!(
                    four.iter().all(|f| *f == fast),
                    "{dtype:?}: {four:?} vs {fast}"
                );
                assert!(
                    (fast - slow).abs() <= 1e-4 * slow.abs().max(1.0),
                    "{dtype:?}: {fast} vs {slow}"
                );
            }
        }
    }

    #[test]
    fn matmul_puts_every_row_and_token_in_its_place() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            // 70 rows do not split evenly into tasks; 9 tokens are two transposing tasks, 1
            // token is a decoded one.
            for n in [9, 1] {
                let (rows, cols) = (70, 512);
                let (_, packed) = matrix(rows, cols, dtype, 3);
                let x = random(n * cols, 4);
                let ours = packed.matmul(&x);
                let per_row = cols / QK;
                let acts: Vec<BlockQ8_1> = x.chunks_exact(QK).map(blocks::quantize_q8_1).collect();
                for r in 0..rows {
                    for t in 0..n {
                        let (w, a) = (
                            r * per_row..(r + 1) * per_row,
                            &acts[t * per_row..(t + 1) * per_row],
                        );
                        let want = packed.blocks.dot_scalar(w, a);
                        let got = ours[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{dtype:?} row {r} token {t}: {got} vs {want}"
                        );
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
