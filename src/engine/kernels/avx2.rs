//! The AVX2 + FMA kernels (x86-64), lane for lane the same sums as the scalar reference.
//!
//! Each kernel multiplies a run of interleaved groups (eight weight rows, see `blocks`) by up
//! to four inputs: a 32-byte vector of four weights of each row meets four activation bytes
//! broadcast to every lane, so each `i32` lane sums one row's products and a block's scales
//! are applied to eight rows in one multiply-add. The weights' unpacking is shared by the
//! inputs.
//!
//! This is the crate's only `unsafe` code: the intrinsics. The `unsafe` kernels are reached
//! only through [`Avx2`], which exists only after runtime detection of the features they are
//! compiled for, and the tests check them against the scalar path.
//!
//! Each kernel is compiled twice from one source ([`kernels!`]): for AVX2, where a block's
//! 32 byte products are summed by `maddubs` and `madd`, and for CPUs with VNNI (AVX-512 VNNI
//! with VL: Zen 4 and later, Ice Lake and later servers; or AVX-VNNI: Alder Lake and later),
//! where one `dpbusd` does both. The sums are the same integers (no `maddubs` pair here can
//! saturate), so both give the scalar path's results bit for bit.

#![expect(unsafe_code, reason = "SIMD intrinsics, confined to this module")]

use std::arch::x86_64::*;

use super::blocks::{BlockQ8_1, GroupQ4, GroupQ5, GroupQ8, ROWS};

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
    ($($(#[$doc:meta])* $name:ident($w:ident: $wt:ty);)*) => {
        $(
            $(#[$doc])*
            pub(super) fn $name<const N: usize>(
                self,
                $w: $wt,
                a: [&[BlockQ8_1]; N],
            ) -> [[f32; ROWS]; N] {
                // SAFETY: `self` exists only where AVX2 and FMA were detected, and its `Vnni`
                // only where that extension was; every slice of `a` has `w`'s length (checked
                // by the caller, and by the kernels' indexing).
                unsafe {
                    match self.0 {
                        Vnni::None => plain::$name($w, a),
                        Vnni::Avx512 => avx512_vnni::$name($w, a),
                        Vnni::Avx => avx_vnni::$name($w, a),
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
        /// Eight rows of `Q4` groups times `N` inputs, exactly as `scalar::gemv` computes each.
        gemm_q4(w: &[GroupQ4]);
        /// Eight rows of `Q5` groups times `N` inputs, exactly as `scalar::gemv` computes each.
        gemm_q5(w: &[GroupQ5]);
        /// Eight rows of `Q8_0` groups times `N` inputs, exactly as `scalar::gemv` computes each.
        gemm_q8(w: &[GroupQ8]);
    }
}

/// 32 bytes loaded from an array of 32.
#[target_feature(enable = "avx2,fma")]
fn load<T>(bytes: &[T; 32]) -> __m256i {
    const { assert!(size_of::<T>() == 1) };
    // SAFETY: 32 bytes from a 32-byte array, an unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Chunk `j` of an activation block (its bytes `4j..4j + 4`) in every `i32` lane.
#[target_feature(enable = "avx2,fma")]
fn broadcast(a: &BlockQ8_1, j: usize) -> __m256i {
    assert!(j < 8);
    // SAFETY: bytes `4j..4j + 4` of a 32-byte array (`j < 8`), an unaligned load.
    let chunk = unsafe { a.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned() };
    _mm256_set1_epi32(chunk)
}

/// A block's integer sums into the float accumulators: `acc = sum · (d_w · d_a) + acc`, then
/// `acc = m_w · s_a + acc` where the format has minimums (as `scalar::gemv`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn add_block<const N: usize>(
    acc: &mut [__m256; N],
    sums: [__m256i; N],
    d: &[f32; ROWS],
    m: Option<&[f32; ROWS]>,
    a: [&BlockQ8_1; N],
) {
    // SAFETY: eight floats from arrays of eight, unaligned loads.
    let d = unsafe { _mm256_loadu_ps(d.as_ptr()) };
    let m = m.map(|m| unsafe { _mm256_loadu_ps(m.as_ptr()) });
    for k in 0..N {
        let scale = _mm256_mul_ps(d, _mm256_set1_ps(a[k].d));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[k]), scale, acc[k]);
        if let Some(m) = m {
            acc[k] = _mm256_fmadd_ps(m, _mm256_set1_ps(a[k].s), acc[k]);
        }
    }
}

/// The accumulators as arrays.
#[target_feature(enable = "avx2,fma")]
fn store<const N: usize>(acc: [__m256; N]) -> [[f32; ROWS]; N] {
    let mut out = [[0f32; ROWS]; N];
    for (o, v) in out.iter_mut().zip(acc) {
        // SAFETY: eight floats into an array of eight, an unaligned store.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
    }
    out
}

/// The kernels, for one set of target features and one way (`$dpadd`) to add unsigned times
/// signed bytes, four products to each `i32` lane, to an accumulator.
macro_rules! kernels {
    ($features:literal, $dpadd:ident, $q8:ident) => {
        use super::*;

        $q8!($features, $dpadd);

        /// # Safety
        /// The CPU must support the module's features; every slice of `a` has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn gemm_q4<const N: usize>(
            w: &[GroupQ4],
            a: [&[BlockQ8_1]; N],
        ) -> [[f32; ROWS]; N] {
            let nibble = _mm256_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, g) in w.iter().enumerate() {
                let a = a.map(|a| &a[b]);
                let mut sums = [_mm256_setzero_si256(); N];
                for j in 0..4 {
                    let raw = load(&g.qs[j]);
                    let lo = _mm256_and_si256(raw, nibble);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nibble);
                    for k in 0..N {
                        sums[k] = $dpadd(sums[k], lo, broadcast(a[k], j));
                        sums[k] = $dpadd(sums[k], hi, broadcast(a[k], j + 4));
                    }
                }
                add_block(&mut acc, sums, &g.d, Some(&g.m), a);
            }
            store(acc)
        }

        /// # Safety
        /// The CPU must support the module's features; every slice of `a` has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn gemm_q5<const N: usize>(
            w: &[GroupQ5],
            a: [&[BlockQ8_1]; N],
        ) -> [[f32; ROWS]; N] {
            let nibble = _mm256_set1_epi8(0x0F);
            let fifth = _mm256_set1_epi8(0x10);
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, g) in w.iter().enumerate() {
                let a = a.map(|a| &a[b]);
                let h = load(&g.qh);
                let mut sums = [_mm256_setzero_si256(); N];
                for j in 0..4 {
                    let raw = load(&g.qs[j]);
                    // Bit j of qh's bytes (chunk j) and bit j + 4 (chunk j + 4) moved to bit
                    // 4: a 16-bit shift, whose bits crossing into the other byte never land
                    // on its bit 4.
                    let up = _mm256_sll_epi16(h, _mm_cvtsi32_si128(4 - j as i32));
                    let down = _mm256_srl_epi16(h, _mm_cvtsi32_si128(j as i32));
                    let lo =
                        _mm256_or_si256(_mm256_and_si256(raw, nibble), _mm256_and_si256(up, fifth));
                    let hi = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nibble),
                        _mm256_and_si256(down, fifth),
                    );
                    for k in 0..N {
                        sums[k] = $dpadd(sums[k], lo, broadcast(a[k], j));
                        sums[k] = $dpadd(sums[k], hi, broadcast(a[k], j + 4));
                    }
                }
                add_block(&mut acc, sums, &g.d, Some(&g.m), a);
            }
            store(acc)
        }
    };
}

/// The `Q8_0` kernel where products take unsigned times signed bytes in pairs that must not
/// overflow `i16` (`maddubs`): each weight's sign moves onto the activation byte.
macro_rules! q8_by_sign {
    ($features:literal, $dpadd:ident) => {
        /// # Safety
        /// The CPU must support the module's features; every slice of `a` has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn gemm_q8<const N: usize>(
            w: &[GroupQ8],
            a: [&[BlockQ8_1]; N],
        ) -> [[f32; ROWS]; N] {
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, g) in w.iter().enumerate() {
                let a = a.map(|a| &a[b]);
                let mut sums = [_mm256_setzero_si256(); N];
                for j in 0..8 {
                    let x = load(&g.qs[j]);
                    let ax = _mm256_sign_epi8(x, x);
                    for k in 0..N {
                        let y = _mm256_sign_epi8(broadcast(a[k], j), x);
                        sums[k] = $dpadd(sums[k], ax, y);
                    }
                }
                add_block(&mut acc, sums, &g.d, None, a);
            }
            store(acc)
        }
    };
}

/// The `Q8_0` kernel where four products go straight to `i32` (`dpbusd`): the weights are
/// offset by 128 to be unsigned (one `xor` per vector, shared by the inputs), and `128 · Σq`
/// of each activation block, exact in integers, taken off again.
macro_rules! q8_by_offset {
    ($features:literal, $dpadd:ident) => {
        /// # Safety
        /// The CPU must support the module's features; every slice of `a` has `w`'s length.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn gemm_q8<const N: usize>(
            w: &[GroupQ8],
            a: [&[BlockQ8_1]; N],
        ) -> [[f32; ROWS]; N] {
            let offset = _mm256_set1_epi8(-128);
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, g) in w.iter().enumerate() {
                let a = a.map(|a| &a[b]);
                let mut sums = a.map(|a| _mm256_set1_epi32(-128 * a.sum));
                for j in 0..8 {
                    let x = _mm256_xor_si256(load(&g.qs[j]), offset);
                    for k in 0..N {
                        sums[k] = $dpadd(sums[k], x, broadcast(a[k], j));
                    }
                }
                add_block(&mut acc, sums, &g.d, None, a);
            }
            store(acc)
        }
    };
}

/// AVX2: `maddubs` (pairs to `i16`), then `madd` with ones (pairs of those to `i32`). No pair
/// saturates: at most 2 · 128 · 127.
mod plain {
    #[target_feature(enable = "avx2,fma")]
    fn dpadd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }

    kernels!("avx2,fma", dpadd, q8_by_sign);
}

/// AVX-512 VNNI (256-bit forms): `dpbusd`, four products added to each `i32` lane at once.
mod avx512_vnni {
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn dpadd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    kernels!("avx2,fma,avx512vnni,avx512vl", dpadd, q8_by_offset);
}

/// AVX-VNNI: the same `dpbusd`, VEX-encoded.
mod avx_vnni {
    #[target_feature(enable = "avx2,fma,avxvnni")]
    fn dpadd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }

    kernels!("avx2,fma,avxvnni", dpadd, q8_by_offset);
}
