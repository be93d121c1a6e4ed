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
//! tests check them against the scalar path bit for bit). `pack` packs matrices, `tasks`
//! splits products into tasks on the pool, and `dispatch` sends each to one kernel or the
//! other. This file holds the packed matrix itself.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod dispatch;
mod pack;
mod scalar;
mod tasks;

use candle_core::Result;

use blocks::{Group, GroupQ4, GroupQ5, GroupQ8, QK, ROWS};
pub(crate) use dispatch::Simd;
pub(crate) use pack::Packer;
pub(crate) use tasks::Activations;

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    use super::blocks::BlockQ8_1;

    pub(super) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    pub(super) fn matrix(
        rows: usize,
        cols: usize,
        dtype: GgmlDType,
        seed: u64,
    ) -> (QTensor, QMatrix) {
        let w = Tensor::from_vec(random(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let packed = QMatrix::pack(&q, Simd::detect())
            .unwrap()
            .expect("packable");
        (q, packed)
    }

    /// Every GGUF format the kernels take, and the packed format it becomes.
    pub(super) const PACKED: [GgmlDType; 7] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q5K,
        GgmlDType::Q8_0,
    ];

    /// Group `g`'s eight rows times input `t`, by the scalar reference.
    pub(super) fn reference(m: &QMatrix, g: usize, acts: &[BlockQ8_1], t: usize) -> [f32; ROWS] {
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
