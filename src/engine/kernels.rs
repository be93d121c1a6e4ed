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
//! This is the only module with `unsafe` code: the AVX2 intrinsics. Each `unsafe` function is
//! called only after runtime detection of the features it is compiled for, and the tests check
//! it against the scalar path.

#![allow(unsafe_code, reason = "SIMD intrinsics, confined to this module")]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use half::f16;
use rayon::prelude::*;

/// Elements per quantization block.
pub(crate) const QK: usize = 32;

/// Four-bit weights with a scale and a minimum: `w = d * q + m`, `q` in `0..16`. Elements
/// `0..16` are the low nibbles of `qs`, `16..32` the high nibbles (ggml's layout).
#[derive(Clone, Copy, Debug)]
struct BlockQ4_1 {
    d: f32,
    m: f32,
    qs: [u8; QK / 2],
}

/// Eight-bit weights with a scale: `w = d * q`.
#[derive(Clone, Copy, Debug)]
struct BlockQ8_0 {
    d: f32,
    qs: [i8; QK],
}

/// Eight-bit activations: `x ≈ d * q`, with `s = d * Σq` (used by the Q4_1 minimum).
/// `d` and `s` are rounded through f16 like ggml's `Q8_1`, so results match llama.cpp's.
#[derive(Clone, Copy, Debug)]
struct BlockQ8_1 {
    d: f32,
    s: f32,
    qs: [i8; QK],
}

#[derive(Debug)]
enum Blocks {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
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
    /// Packs a GGUF tensor of shape `(rows, cols)`. Q4_1 and Q8_0 are kept as they are; other
    /// block formats are requantized to Q8_0 (finer than any of them, so nothing is lost that
    /// matters). Returns `None` for float tensors and shapes these kernels do not handle.
    pub(crate) fn pack(t: &QTensor, simd: Simd) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        let &[rows, cols] = dims else { return Ok(None) };
        if cols % QK != 0 {
            return Ok(None);
        }
        let blocks = match t.dtype() {
            GgmlDType::Q4_1 => Blocks::Q4_1(parse_q4_1(&t.data()?)),
            GgmlDType::Q8_0 => Blocks::Q8_0(parse_q8_0(&t.data()?)),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return Ok(None),
            _ => {
                let values = t
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Blocks::Q8_0(values.chunks_exact(QK).map(quantize_q8_0).collect())
            }
        };
        let n_blocks = match &blocks {
            Blocks::Q4_1(b) => b.len(),
            Blocks::Q8_0(b) => b.len(),
        };
        if n_blocks != rows * cols / QK {
            candle_core::bail!(
                "tensor data holds {n_blocks} blocks, shape {rows}x{cols} needs more"
            );
        }
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
        let n = x.len() / self.cols;
        let per_row = self.cols / QK;
        let acts: Vec<BlockQ8_1> = x.chunks_exact(QK).map(quantize_q8_1).collect();
        let simd = self.simd;

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
                    let w = r * per_row..(r + 1) * per_row;
                    let act = |t: usize| &acts[t * per_row..(t + 1) * per_row];
                    // Four inputs at a time share each weight block's loads and unpacking.
                    let mut t = 0;
                    while t + 4 <= n {
                        let a = [act(t), act(t + 1), act(t + 2), act(t + 3)];
                        let y = match &self.blocks {
                            Blocks::Q4_1(b) => dot4_q4_1(simd, &b[w.clone()], a),
                            Blocks::Q8_0(b) => dot4_q8_0(simd, &b[w.clone()], a),
                        };
                        out[t..t + 4].copy_from_slice(&y);
                        t += 4;
                    }
                    for (t, y) in out.iter_mut().enumerate().skip(t) {
                        *y = match &self.blocks {
                            Blocks::Q4_1(b) => dot_q4_1(simd, &b[w.clone()], act(t)),
                            Blocks::Q8_0(b) => dot_q8_0(simd, &b[w.clone()], act(t)),
                        };
                    }
                }
            });
        if n == 1 {
            return yt;
        }
        let mut y = vec![0f32; self.rows * n];
        for (r, col) in yt.chunks_exact(n).enumerate() {
            for (t, v) in col.iter().enumerate() {
                y[t * self.rows + r] = *v;
            }
        }
        y
    }
}

fn parse_q4_1(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(4 + QK / 2)
        .map(|b| BlockQ4_1 {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs: b[4..].try_into().expect("16 bytes"),
        })
        .collect()
}

fn parse_q8_0(bytes: &[u8]) -> Vec<BlockQ8_0> {
    bytes
        .chunks_exact(2 + QK)
        .map(|b| BlockQ8_0 {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            qs: std::array::from_fn(|i| b[2 + i] as i8),
        })
        .collect()
}

/// ggml's `quantize_row_q8_0` for one block, scale rounded through f16.
fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    BlockQ8_0 {
        d: f16::from_f32(d).to_f32(),
        qs: std::array::from_fn(|i| (x[i] * id).round() as i8),
    }
}

/// ggml's `quantize_row_q8_1` for one block.
fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let qs: [i8; QK] = std::array::from_fn(|i| (x[i] * id).round() as i8);
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8_1 {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}

/// Which kernels this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Simd {
    /// The best this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
        Simd::Scalar
    }
}

fn dot_q4_1(simd: Simd, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    match simd {
        // SAFETY: `Simd::Avx2` is only produced after detecting AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::dot_q4_1(w, a) },
        Simd::Scalar => scalar_dot_q4_1(w, a),
    }
}

fn dot_q8_0(simd: Simd, w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
    match simd {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::dot_q8_0(w, a) },
        Simd::Scalar => scalar_dot_q8_0(w, a),
    }
}

fn dot4_q4_1(simd: Simd, w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    match simd {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::dot4_q4_1(w, a) },
        Simd::Scalar => a.map(|a| scalar_dot_q4_1(w, a)),
    }
}

fn dot4_q8_0(simd: Simd, w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    match simd {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::dot4_q8_0(w, a) },
        Simd::Scalar => a.map(|a| scalar_dot_q8_0(w, a)),
    }
}

/// Eight float lanes, summed the way the SIMD path sums them (lane `j` holds elements
/// `4j..4j+4` of each block; fused multiply-adds; the same reduction tree at the end), so the
/// scalar reference and the SIMD kernels agree bit for bit.
struct Lanes([f32; 8]);

impl Lanes {
    fn new() -> Self {
        Lanes([0.0; 8])
    }

    /// Adds one block: `p[j]` are the lanes' exact integer sums, `scale` the block's scale.
    fn add(&mut self, p: [i32; 8], scale: f32) {
        for (acc, p) in self.0.iter_mut().zip(p) {
            *acc = (p as f32).mul_add(scale, *acc);
        }
    }

    /// `_mm256` halves added, then the 128-bit horizontal sum.
    fn sum(&self) -> f32 {
        let a = &self.0;
        let s: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
        let t0 = s[0] + s[2];
        let t1 = s[1] + s[3];
        t0 + t1
    }
}

/// The eight lane sums of `q · y` over one block of 32 (as `maddubs` then `madd` give them).
fn lane_sums(q: impl Fn(usize) -> i32, y: &[i8; QK]) -> [i32; 8] {
    std::array::from_fn(|j| (4 * j..4 * j + 4).map(|e| q(e) * i32::from(y[e])).sum())
}

/// The reference: `Σ_blocks d_w d_a Σ q_w q_a + m_w s_a`.
fn scalar_dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut lanes = Lanes::new();
    let mut mins = 0f32;
    for (w, a) in w.iter().zip(a) {
        let q = |e: usize| {
            i32::from(if e < QK / 2 {
                w.qs[e] & 0x0F
            } else {
                w.qs[e - QK / 2] >> 4
            })
        };
        lanes.add(lane_sums(q, &a.qs), w.d * a.d);
        mins += w.m * a.s;
    }
    lanes.sum() + mins
}

/// The reference: `Σ_blocks d_w d_a Σ q_w q_a`.
fn scalar_dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
    let mut lanes = Lanes::new();
    for (w, a) in w.iter().zip(a) {
        lanes.add(lane_sums(|e| i32::from(w.qs[e]), &a.qs), w.d * a.d);
    }
    lanes.sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_0, BlockQ8_1};

    /// The horizontal sum, in the order `Lanes::sum` uses.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` and `a` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        let nibble = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (w, a) in w.iter().zip(a) {
            // SAFETY: 16 and 32 bytes are read from arrays of exactly that size; the loads are
            // unaligned loads.
            let (raw, y) = unsafe {
                (
                    _mm_loadu_si128(w.qs.as_ptr().cast()),
                    _mm256_loadu_si256(a.qs.as_ptr().cast()),
                )
            };
            let lo = _mm_and_si128(raw, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
            let q = _mm256_set_m128i(hi, lo);
            // Unsigned nibbles times signed bytes, pairs summed to i16 (at most 2*15*127).
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc);
            mins += w.m * a.s;
        }
        hsum(acc) + mins
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` and `a` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: 32 bytes from arrays of 32 bytes, unaligned loads.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_si256(w.qs.as_ptr().cast()),
                    _mm256_loadu_si256(a.qs.as_ptr().cast()),
                )
            };
            // maddubs takes unsigned times signed: move x's sign onto y.
            let ax = _mm256_sign_epi8(x, x);
            let sy = _mm256_sign_epi8(y, x);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc);
        }
        hsum(acc)
    }

    /// Four dots against one weight row: each is computed exactly as `dot_q4_1` would.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice has `w`'s length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_q4_1(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let nibble = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: 16 bytes from a 16-byte array.
            let raw = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
            let lo = _mm_and_si128(raw, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
            let q = _mm256_set_m128i(hi, lo);
            for k in 0..4 {
                let a = &a[k][b];
                // SAFETY: 32 bytes from a 32-byte array.
                let y = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc[k]);
                mins[k] += w.m * a.s;
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) + mins[k])
    }

    /// Four dots against one weight row: each is computed exactly as `dot_q8_0` would.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice has `w`'s length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: 32 bytes from a 32-byte array.
            let x = unsafe { _mm256_loadu_si256(w.qs.as_ptr().cast()) };
            let ax = _mm256_sign_epi8(x, x);
            for k in 0..4 {
                let a = &a[k][b];
                // SAFETY: 32 bytes from a 32-byte array.
                let y = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
                let sy = _mm256_sign_epi8(y, x);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]))
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

    #[test]
    fn simd_and_scalar_dots_agree() {
        let simd = Simd::detect();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (_, m) = matrix(3, 256, dtype, 1);
            let acts: Vec<BlockQ8_1> = random(256, 2).chunks_exact(QK).map(quantize_q8_1).collect();
            for r in 0..3 {
                let w = r * 8..(r + 1) * 8;
                let (fast, slow) = match &m.blocks {
                    Blocks::Q4_1(b) => (
                        dot_q4_1(simd, &b[w.clone()], &acts),
                        scalar_dot_q4_1(&b[w], &acts),
                    ),
                    Blocks::Q8_0(b) => (
                        dot_q8_0(simd, &b[w.clone()], &acts),
                        scalar_dot_q8_0(&b[w], &acts),
                    ),
                };
                assert!(
                    (fast - slow).abs() <= 1e-4 * slow.abs().max(1.0),
                    "{dtype:?}: {fast} vs {slow}"
                );
            }
        }
    }

    #[test]
    fn matmul_puts_every_row_and_token_in_its_place() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // 70 rows do not split evenly into tasks; 5 tokens exercise the transpose.
            let (rows, cols, n) = (70, 512, 5);
            let (_, packed) = matrix(rows, cols, dtype, 3);
            let x = random(n * cols, 4);
            let ours = packed.matmul(&x);
            let per_row = cols / QK;
            let acts: Vec<BlockQ8_1> = x.chunks_exact(QK).map(quantize_q8_1).collect();
            for r in 0..rows {
                for t in 0..n {
                    let (w, a) = (
                        r * per_row..(r + 1) * per_row,
                        &acts[t * per_row..(t + 1) * per_row],
                    );
                    let want = match &packed.blocks {
                        Blocks::Q4_1(b) => scalar_dot_q4_1(&b[w], a),
                        Blocks::Q8_0(b) => scalar_dot_q8_0(&b[w], a),
                    };
                    let got = ours[t * rows + r];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{dtype:?} row {r} token {t}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_stays_close_to_candle_on_the_same_weights() {
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
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

    #[test]
    fn rows_dequantize_like_candle() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (q, packed) = matrix(4, 64, dtype, 5);
            let full = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let mut row = vec![0f32; 64];
            packed.dequantize_row(2, &mut row);
            assert_eq!(row, full[2]);
        }
    }
}
