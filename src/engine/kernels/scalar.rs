//! The scalar reference kernel: it defines the result on every CPU, and the SIMD kernels are
//! tested against it bit for bit.

use super::blocks::{BlockQ8_1, Group, QK, ROWS};

/// The eight rows of groups `w` times the activations `a`: for each block, the exact integer
/// sum `Σ q_w q_a`, then `acc = sum · (d_w · d_a) + acc` and, where the format has minimums,
/// `acc = m_w · s_a + acc`, each one fused multiply-add, as the SIMD kernels do lane by lane.
pub(super) fn gemv<G: Group>(w: &[G], a: &[BlockQ8_1]) -> [f32; ROWS] {
    let mut acc = [0f32; ROWS];
    for (g, a) in w.iter().zip(a) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let p: i32 = (0..QK).map(|e| g.q(r, e) * i32::from(a.qs[e])).sum();
            *acc = (p as f32).mul_add(g.d()[r] * a.d, *acc);
            if let Some(m) = g.m() {
                *acc = m[r].mul_add(a.s, *acc);
            }
        }
    }
    acc
}
