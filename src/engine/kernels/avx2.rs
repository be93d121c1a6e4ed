//! The AVX2 + FMA kernels (x86-64), lane for lane the same sums as the scalar reference.
//!
//! This is the crate's only `unsafe` code: the intrinsics. The `unsafe` kernels are reached
//! only through [`Avx2`], which exists only after runtime detection of the features they are
//! compiled for, and the tests check them against the scalar path.

#![expect(unsafe_code, reason = "SIMD intrinsics, confined to this module")]

use std::arch::x86_64::*;

use super::blocks::{BlockQ4_1, BlockQ5_1, BlockQ8_0, BlockQ8_1};

/// Proof that this CPU runs AVX2 and FMA: only [`Avx2::detect`] makes one, so its safe
/// methods may call the kernels below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// `Some` where the CPU has AVX2 and FMA.
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
    }

    /// `Σ w·a` over the blocks, exactly as `scalar::dot_q4_1` computes it.
    pub(super) fn dot_q4_1(self, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        // SAFETY: `self` exists only where AVX2 and FMA were detected.
        unsafe { dot_q4_1(w, a) }
    }

    /// `Σ w·a` over the blocks, exactly as `scalar::dot_q8_0` computes it.
    pub(super) fn dot_q8_0(self, w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
        // SAFETY: as above.
        unsafe { dot_q8_0(w, a) }
    }

    /// `Σ w·a` over the blocks, exactly as `scalar::dot_q5_1` computes it.
    pub(super) fn dot_q5_1(self, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
        // SAFETY: as above.
        unsafe { dot_q5_1(w, a) }
    }

    /// Four [`dot_q5_1`](Self::dot_q5_1)s against one weight row, sharing its loads.
    pub(super) fn dot4_q5_1(self, w: &[BlockQ5_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { dot4_q5_1(w, a) }
    }

    /// Four [`dot_q4_1`](Self::dot_q4_1)s against one weight row, sharing its loads.
    pub(super) fn dot4_q4_1(self, w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { dot4_q4_1(w, a) }
    }

    /// Four [`dot_q8_0`](Self::dot_q8_0)s against one weight row, sharing its loads.
    pub(super) fn dot4_q8_0(self, w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { dot4_q8_0(w, a) }
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

/// # Safety
/// The CPU must support AVX2 and FMA; `w` and `a` have the same length.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
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

/// The 32 five-bit values of a block, one per byte in element order: the nibbles as in
/// `dot_q4_1`, with bit `e` of `qh` moved to bit 4 of byte `e` (ggml's `bytes_from_bits_32`).
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

/// # Safety
/// The CPU must support AVX2 and FMA; `w` and `a` have the same length.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (w, a) in w.iter().zip(a) {
        // SAFETY: 32 bytes from a 32-byte array, an unaligned load.
        let y = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
        // Unsigned five-bit values times signed bytes, pairs summed to i16 (at most
        // 2*31*127).
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q5_values(w), y), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(w.d * a.d), acc);
        mins += w.m * a.s;
    }
    hsum(acc) + mins
}

/// Four dots against one weight row: each is computed exactly as `dot_q5_1` would.
///
/// # Safety
/// The CPU must support AVX2 and FMA; every slice has `w`'s length.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_q5_1(w: &[BlockQ5_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, w) in w.iter().enumerate() {
        let q = q5_values(w);
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

/// # Safety
/// The CPU must support AVX2 and FMA; `w` and `a` have the same length.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_1]) -> f32 {
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
unsafe fn dot4_q4_1(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
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
unsafe fn dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
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
