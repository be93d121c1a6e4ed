//! Which kernel a product runs: the SIMD build this CPU supports, detected at runtime, or
//! the scalar reference, chosen once per task and group format.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::blocks::{BlockQ8_1, Group, GroupQ4, GroupQ5, GroupQ8, ROWS};
use super::scalar;

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
pub(super) trait Gemm: Group {
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
    use crate::engine::kernels::blocks::{self, QK};
    use crate::engine::kernels::tests::{PACKED, matrix, random, reference};
    use crate::engine::kernels::{Groups, QMatrix};
    use candle_core::quantized::GgmlDType;

    fn acts(n: usize, cols: usize, seed: u64) -> Vec<BlockQ8_1> {
        random(n * cols, seed)
            .chunks_exact(QK)
            .map(blocks::quantize_q8_1)
            .collect()
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
}
