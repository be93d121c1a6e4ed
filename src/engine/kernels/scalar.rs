//! The scalar reference kernels: they define the result on every CPU, and the SIMD kernels
//! are tested against them.

use super::blocks::{BlockQ4_1, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};

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
pub(super) fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
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

/// The reference: `Σ_blocks d_w d_a Σ q_w q_a + m_w s_a`, with five-bit `q_w`.
pub(super) fn dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut lanes = Lanes::new();
    let mut mins = 0f32;
    for (w, a) in w.iter().zip(a) {
        lanes.add(lane_sums(|e| i32::from(w.q(e)), &a.qs), w.d * a.d);
        mins += w.m * a.s;
    }
    lanes.sum() + mins
}

/// The reference: `Σ_blocks d_w d_a Σ q_w q_a`.
pub(super) fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
    let mut lanes = Lanes::new();
    for (w, a) in w.iter().zip(a) {
        lanes.add(lane_sums(|e| i32::from(w.qs[e]), &a.qs), w.d * a.d);
    }
    lanes.sum()
}
