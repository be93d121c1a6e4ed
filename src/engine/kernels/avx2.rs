//! The AVX2 + FMA kernels (x86-64), lane for lane the same sums as the scalar reference.
//!
//! This is the crate's only `unsafe` code: the intrinsics. The `unsafe` kernels are reached
//! only through [`Avx2`], which exists only after runtime detection of the features they are
//! compiled for, and the tests check them against the scalar path.
//!
//! Each kernel is compiled twice from one source ([`kernels!`]): for AVX2, where a block's
//! 32 byte products are summed by `maddubs` and `madd`, and for CPUs with VNNI (AVX-512 VNNI
//! with VL: Zen 4 and later, Ice Lake and later servers; or AVX-VNNI: Alder Lake and later),
//! where one `dpbusd` does both. The sums are the same integers (no `maddubs` pair here can
//! saturate: at most 2 · 127 · 127), so both give the scalar path's results bit for bit.

#![expect(unsafe_code, reason = "SIMD intrinsics, confined to this module")]

use std::arch::x86_64::*;

use super::blocks::{BlockQ4_1, BlockQ5_1, BlockQ8_0, BlockQ8_1};

/// Which byte-product instruction the CPU has beyond AVX2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vnni {
    None,
    /// AVX-512 VNNI with 256-bit (VL) forms.
    Avx512,
    /// AVX-VNNI, the VEX-encoded form.
    Avx,
}

/// Proof that this CPU runs AVX2 and FMA (and which VNNI it has): only [`Avx2::detect`]
/// makes one, so its safe methods may call the kernels below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx2(Vnni);

/// A safe method per kernel: it calls the build the CPU has.
macro_rules! dispatch {
    ($($(#[$doc:meta])* $name:ident($w:ident: $wt:ty, $a:ident: $at:ty) -> $out:ty;)*) => {
        $(
            $(#[$doc])*
            pub(super) fn $name(self, $w: $wt, $a: $at) -> $out {
                // SAFETY: `self` exists only where AVX2 and FMA were detected, and its `Vnni`
                // only where that extension was.
                unsafe {
                    match self.0 {
                        Vnni::None => plain::$name($w, $a),
                        Vnni::Avx512 => avx512_vnni::$name($w, $a),
                        Vnni::Avx => avx_vnni::$name($w, $a),
                    }
                }
            }
        )*
    };
}

impl Avx2 {
    /// `Some` where the CPU has AVX2 and FMA.
    pub(crate) fn detect() -> Option<Self> {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        let vnni = if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
        {
            Vnni::Avx512
        } else if is_x86_feature_detected!("avxvnni") {
            Vnni::Avx
        } else {
            Vnni::None
        };
        Some(Self(vnni))
    }

    /// The same CPU without its VNNI kernels (to test both builds on one machine).
    #[cfg(test)]
    pub(super) fn without_vnni(self) -> Self {
        Self(Vnni::None)
    }

    dispatch! {
        /// `Σ w·a` over the blocks, exactly as `scalar::dot_q4_1` computes it.
        dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32;
        /// `Σ w·a` over the blocks, exactly as `scalar::dot_q5_1` computes it.
        dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32;
        /// `Σ w·a` over the blocks, exactly as `scalar::dot_q8_0` computes it.
        dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32;
        /// Four [`dot_q4_1`](Self::dot_q4_1)s against one weight row, sharing its loads.
        dot4_q4_1(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4];
        /// Four [`dot_q5_1`](Self::dot_q5_1)s against one weight row, sharing its loads.
        dot4_q5_1(w: &[BlockQ5_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4];
        /// Four [`dot_q8_0`](Self::dot_q8_0)s against one weight row, sharing its loads.
        dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4];
    }
}

/// The horizontal sum, in the order `Lanes::sum` uses.
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The 32 four-bit values of a block, one per byte in element order: low nibbles, then high.
#[target_feature(enable = "avx2,fma")]
fn q4_values(w: &BlockQ4_1) -> __m256i {
    let nibble = _mm_set1_epi8(0x0F);
    // SAFETY: 16 bytes from a 16-byte array, an unaligned load.
    let raw = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
    let lo = _mm_and_si128(raw, nibble);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
    _mm256_set_m128i(hi, lo)
}

/// The 32 five-bit values of a block, one per byte in element order: the nibbles as in
/// [`q4_values`], with bit `e` of `qh` moved to bit 4 of byte `e` (ggml's `bytes_from_bits_32`).
#[target_feature(enable = "avx2,fma")]
fn q5_values(w: &BlockQ5_1) -> __m256i {
    let nibble = _mm_set1_epi8(0x0F);
    // SAFETY: 16 bytes from a 16-byte array, an unaligned load.
    let raw = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
    let lo = _mm_and_si128(raw, nibble);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
    let q = _mm256_set_m128i(hi, lo);
    // Byte e gets byte e / 8 of qh, then all its bits but bit e % 8 set: it is all ones
    // exactly where that bit was set.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(w.qh as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
    _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

/// 32 bytes loaded from an array of 32.
#[target_feature(enable = "avx2,fma")]
fn load(bytes: &[i8; 32]) -> __m256i {
    // SAFETY: 32 bytes from a 32-byte array, an unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The single and four-input kernels of a format with a scale and a minimum per block
/// (`Q4_1`, `Q5_1`), whose unsigned values `$values` unpacks.
macro_rules! scale_min_kernels {
    ($features:literal, $bytes:ident, $dot:ident, $dot4:ident, $block:ty, $values:ident) => {
        /// # Safety
        /// The CPU must support the module's features; `w` and `a` have the same length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $dot(w: &[$block], a: &[BlockQ8_1]) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut mins = 0f32;
            for (w, a) in w.iter().zip(a) {
                let p = $bytes($values(w), load(&a.qs));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc);
                mins += w.m * a.s;
            }
            hsum(acc) + mins
        }

        /// Four dots against one weight row, each computed exactly as the single one is.
        ///
        /// # Safety
        /// The CPU must support the module's features; every slice has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $dot4(w: &[$block], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut mins = [0f32; 4];
            for (b, w) in w.iter().enumerate() {
                let q = $values(w);
                for k in 0..4 {
                    let a = &a[k][b];
                    let p = $bytes(q, load(&a.qs));
                    let scale = _mm256_set1_ps(w.d * a.d);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
                    mins[k] += w.m * a.s;
                }
            }
            std::array::from_fn(|k| hsum(acc[k]) + mins[k])
        }
    };
}

/// The kernels, for one set of target features and one way (`$bytes`) to sum unsigned
/// times signed bytes into eight `i32` lanes of four products each.
macro_rules! kernels {
    ($features:literal, $bytes:ident) => {
        use super::*;

        scale_min_kernels!($features, $bytes, dot_q4_1, dot4_q4_1, BlockQ4_1, q4_values);
        scale_min_kernels!($features, $bytes, dot_q5_1, dot4_q5_1, BlockQ5_1, q5_values);

        /// # Safety
        /// The CPU must support the module's features; `w` and `a` have the same length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
            let mut acc = _mm256_setzero_ps();
            for (w, a) in w.iter().zip(a) {
                let (x, y) = (load(&w.qs), load(&a.qs));
                // The products take unsigned times signed: move x's sign onto y.
                let p = $bytes(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc);
            }
            hsum(acc)
        }

        /// Four dots against one weight row: each is computed exactly as `dot_q8_0` would.
        ///
        /// # Safety
        /// The CPU must support the module's features; every slice has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (b, w) in w.iter().enumerate() {
                let x = load(&w.qs);
                let ax = _mm256_sign_epi8(x, x);
                for k in 0..4 {
                    let a = &a[k][b];
                    let p = $bytes(ax, _mm256_sign_epi8(load(&a.qs), x));
                    let scale = _mm256_set1_ps(w.d * a.d);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
                }
            }
            std::array::from_fn(|k| hsum(acc[k]))
        }
    };
}

/// AVX2: `maddubs` (pairs to `i16`), then `madd` with ones (pairs of those to `i32`).
mod plain {
    #[target_feature(enable = "avx2,fma")]
    fn bytes(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    kernels!("avx2,fma", bytes);
}

/// AVX-512 VNNI (256-bit forms): `dpbusd`, four products to `i32` in one instruction.
mod avx512_vnni {
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn bytes(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    kernels!("avx2,fma,avx512vnni,avx512vl", bytes);
}

/// AVX-VNNI: the same `dpbusd`, VEX-encoded.
mod avx_vnni {
    #[target_feature(enable = "avx2,fma,avxvnni")]
    fn bytes(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }

    kernels!("avx2,fma,avxvnni", bytes);
}
