//! The block formats the kernels multiply, each 32 weights with `f32` scales, and how GGUF's
//! formats become them at load: `Q4_0`, `Q4_1` and `Q4_K` become [`BlockQ4_1`], `Q5_0`, `Q5_1`
//! and `Q5_K` become [`BlockQ5_1`], `Q8_0` stays [`BlockQ8_0`], all without changing a single
//! weight (a K-quant's sub-block scale `d * sc` is exact in `f32`). Activations are [`BlockQ8_1`].
//!
//! The matrices keep them interleaved: the blocks of eight rows at one block column make one
//! group ([`GroupQ4`], [`GroupQ5`], [`GroupQ8`]) in which a 32-byte vector holds four
//! consecutive weights of each of the eight rows. A kernel multiplies such a vector by four
//! activation bytes broadcast to every row and gets eight rows' sums in eight lanes, with no
//! horizontal sum and one vector of scales per block (llama.cpp's repacked `q4_0_8x8`
//! layout does the same). The groups take the same bytes as the blocks.

use half::f16;

/// Elements per quantization block.
pub(super) const QK: usize = 32;

/// Four-bit weights with a scale and a minimum: `w = d * q + m`, `q` in `0..16`. Elements
/// `0..16` are the low nibbles of `qs`, `16..32` the high nibbles (ggml's layout).
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ4_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; QK / 2],
}

/// Five-bit weights with a scale and a minimum: `w = d * q + m`, `q` in `0..32`: the low four
/// bits as in [`BlockQ4_1`], bit `e` of `qh` the fifth bit of element `e`.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ5_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qh: u32,
    pub(super) qs: [u8; QK / 2],
}

/// Eight-bit weights with a scale: `w = d * q`.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ8_0 {
    pub(super) d: f32,
    pub(super) qs: [i8; QK],
}

/// Eight-bit activations: `x ≈ d * q`, with `s = d * Σq` (used by the Q4_1 minimum).
/// `d` and `s` are rounded through f16 like ggml's `Q8_1`, so results match llama.cpp's.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockQ8_1 {
    pub(super) d: f32,
    pub(super) s: f32,
    /// `Σq` exactly (the VNNI `Q8_0` kernel's correction).
    pub(super) sum: i32,
    pub(super) qs: [i8; QK],
}

/// Rows per interleaved group.
pub(super) const ROWS: usize = 8;

/// Elements per chunk: a chunk of each row fills one `i32` lane.
const CHUNK: usize = 4;

/// Byte `4r + i` of a group's 32-byte vector for chunk `j`: element `4j + i` of row `r`.
fn chunk_bytes<T>(j: usize, v: impl Fn(usize, usize) -> T) -> [T; 32] {
    std::array::from_fn(|b| v(b / CHUNK, CHUNK * j + b % CHUNK))
}

/// Eight rows' nibbles in ggml's order as a group's four vectors: byte `e < 16` of a row holds
/// elements `e` and `e + 16`, which are chunks `j` and `j + 4` for `j = e / 4`, so vector `j`
/// takes bytes `4j..4j + 4` of each row whole.
fn nibble_chunks(rows: [&[u8; QK / 2]; ROWS]) -> [[u8; 32]; 4] {
    std::array::from_fn(|j| chunk_bytes(j, |r, e| rows[r][e]))
}

/// Eight rows' [`BlockQ4_1`]s at one block column: `w = d[r] * q + m[r]`. Chunk `j`
/// (elements `4j..4j + 4`) of every row is in `qs[j % 4]` ([`chunk_bytes`]), in the low
/// nibbles for `j < 4` and the high nibbles for `j >= 4`.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupQ4 {
    pub(super) d: [f32; ROWS],
    pub(super) m: [f32; ROWS],
    pub(super) qs: [[u8; 32]; 4],
}

/// Eight rows' [`BlockQ5_1`]s at one block column: the low four bits as in [`GroupQ4`]; bit
/// `j` of byte `4r + i` of `qh` is the fifth bit of element `4j + i` of row `r`.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupQ5 {
    pub(super) d: [f32; ROWS],
    pub(super) m: [f32; ROWS],
    pub(super) qh: [u8; 32],
    pub(super) qs: [[u8; 32]; 4],
}

/// Eight rows' [`BlockQ8_0`]s at one block column: `w = d[r] * q`; chunk `j` of every row in
/// `qs[j]` ([`chunk_bytes`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupQ8 {
    pub(super) d: [f32; ROWS],
    pub(super) qs: [[i8; 32]; 8],
}

/// A row's block format, and the group its blocks interleave into.
pub(super) trait RowBlock: Copy {
    type Group: Group;
    /// The block of a row that pads a matrix to a whole group: every weight zero.
    const ZERO: Self;
    /// The eight rows' blocks at one block column, interleaved.
    fn group(rows: [&Self; ROWS]) -> Self::Group;
}

/// What the scalar reference and the row lookups read of a group.
pub(super) trait Group: Copy + Send + Sync {
    /// Element `e`'s stored value in row `r` (unsigned, or signed for `Q8_0`).
    fn q(&self, r: usize, e: usize) -> i32;
    /// The rows' scales.
    fn d(&self) -> &[f32; ROWS];
    /// The rows' minimums, for formats that have them.
    fn m(&self) -> Option<&[f32; ROWS]>;
}

impl RowBlock for BlockQ4_1 {
    type Group = GroupQ4;
    const ZERO: Self = BlockQ4_1 {
        d: 0.0,
        m: 0.0,
        qs: [0; QK / 2],
    };

    fn group(rows: [&Self; ROWS]) -> GroupQ4 {
        GroupQ4 {
            d: rows.map(|b| b.d),
            m: rows.map(|b| b.m),
            qs: nibble_chunks(rows.map(|b| &b.qs)),
        }
    }
}

impl Group for GroupQ4 {
    fn q(&self, r: usize, e: usize) -> i32 {
        let (j, i) = (e / CHUNK, e % CHUNK);
        let byte = self.qs[j % 4][CHUNK * r + i];
        i32::from(if j < 4 { byte & 0x0F } else { byte >> 4 })
    }

    fn d(&self) -> &[f32; ROWS] {
        &self.d
    }

    fn m(&self) -> Option<&[f32; ROWS]> {
        Some(&self.m)
    }
}

impl RowBlock for BlockQ5_1 {
    type Group = GroupQ5;
    const ZERO: Self = BlockQ5_1 {
        d: 0.0,
        m: 0.0,
        qh: 0,
        qs: [0; QK / 2],
    };

    fn group(rows: [&Self; ROWS]) -> GroupQ5 {
        GroupQ5 {
            d: rows.map(|b| b.d),
            m: rows.map(|b| b.m),
            qh: std::array::from_fn(|b| every_fourth_bit(rows[b / CHUNK].qh >> (b % CHUNK))),
            qs: nibble_chunks(rows.map(|b| &b.qs)),
        }
    }
}

/// Bits `0, 4, 8, …, 28` of `x` as the eight bits of a byte (bit `4j` to bit `j`): pairs,
/// then fours, then all eight gathered by shifts.
fn every_fourth_bit(x: u32) -> u8 {
    let x = x & 0x1111_1111;
    let x = (x | (x >> 3)) & 0x0303_0303;
    let x = (x | (x >> 6)) & 0x000F_000F;
    ((x | (x >> 12)) & 0xFF) as u8
}

impl Group for GroupQ5 {
    fn q(&self, r: usize, e: usize) -> i32 {
        let (j, i) = (e / CHUNK, e % CHUNK);
        let byte = self.qs[j % 4][CHUNK * r + i];
        let low = if j < 4 { byte & 0x0F } else { byte >> 4 };
        let high = (self.qh[CHUNK * r + i] >> j) & 1;
        i32::from(low | (high << 4))
    }

    fn d(&self) -> &[f32; ROWS] {
        &self.d
    }

    fn m(&self) -> Option<&[f32; ROWS]> {
        Some(&self.m)
    }
}

impl RowBlock for BlockQ8_0 {
    type Group = GroupQ8;
    const ZERO: Self = BlockQ8_0 {
        d: 0.0,
        qs: [0; QK],
    };

    fn group(rows: [&Self; ROWS]) -> GroupQ8 {
        GroupQ8 {
            d: rows.map(|b| b.d),
            qs: std::array::from_fn(|j| chunk_bytes(j, |r, e| rows[r].qs[e])),
        }
    }
}

impl Group for GroupQ8 {
    fn q(&self, r: usize, e: usize) -> i32 {
        i32::from(self.qs[e / CHUNK][CHUNK * r + e % CHUNK])
    }

    fn d(&self) -> &[f32; ROWS] {
        &self.d
    }

    fn m(&self) -> Option<&[f32; ROWS]> {
        None
    }
}

/// Interleaves whole rows of `per_row` blocks each into groups, `per_row` groups for every
/// eight rows, in block-column order; a last group of fewer rows is padded with zero rows.
pub(super) fn interleave<B: RowBlock>(blocks: &[B], per_row: usize) -> Vec<B::Group> {
    let rows = blocks.len() / per_row;
    let mut out = Vec::with_capacity(rows.div_ceil(ROWS) * per_row);
    let zero = B::ZERO;
    for first in (0..rows).step_by(ROWS) {
        for b in 0..per_row {
            out.push(B::group(std::array::from_fn(|r| {
                let row = first + r;
                if row < rows {
                    &blocks[row * per_row + b]
                } else {
                    &zero
                }
            })));
        }
    }
    out
}

pub(super) fn parse_q4_1(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(4 + QK / 2)
        .map(|b| BlockQ4_1 {
            d: half(b),
            m: half(&b[2..]),
            qs: b[4..].try_into().expect("16 bytes"),
        })
        .collect()
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Packs 32 four-bit values (element `e` is `v[e]`) into ggml's nibble order.
fn nibbles(v: impl Fn(usize) -> u8) -> [u8; QK / 2] {
    std::array::from_fn(|i| (v(i) & 0x0F) | (v(i + QK / 2) << 4))
}

/// `Q4_0`: `w = d * (q - 8)`, so a `Q4_1` block whose minimum is `-8 d`.
pub(super) fn parse_q4_0(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(2 + QK / 2)
        .map(|b| {
            let d = half(b);
            BlockQ4_1 {
                d,
                m: -8.0 * d,
                qs: b[2..].try_into().expect("16 bytes"),
            }
        })
        .collect()
}

/// `Q5_0`: `w = d * (q - 16)`, a `Q5_1` block whose minimum is `-16 d`.
pub(super) fn parse_q5_0(bytes: &[u8]) -> Vec<BlockQ5_1> {
    bytes
        .chunks_exact(2 + 4 + QK / 2)
        .map(|b| {
            let d = half(b);
            BlockQ5_1 {
                d,
                m: -16.0 * d,
                qh: u32::from_le_bytes(b[2..6].try_into().expect("4 bytes")),
                qs: b[6..].try_into().expect("16 bytes"),
            }
        })
        .collect()
}

pub(super) fn parse_q5_1(bytes: &[u8]) -> Vec<BlockQ5_1> {
    bytes
        .chunks_exact(4 + 4 + QK / 2)
        .map(|b| BlockQ5_1 {
            d: half(b),
            m: half(&b[2..]),
            qh: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            qs: b[8..].try_into().expect("16 bytes"),
        })
        .collect()
}

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// The six-bit scale and minimum of sub-block `j` of a `Q4_K`/`Q5_K` super-block (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The eight sub-blocks of one `Q4_K`/`Q5_K` super-block: `j`, its scale `d * sc`, its
/// minimum `-dmin * m` and its 32 low nibbles in ggml's order (sub-blocks `2c` and `2c + 1`
/// are the low and high nibbles of bytes `32c..32c + 32`).
fn k_sub_blocks<'a>(
    d: f32,
    dmin: f32,
    scales: &'a [u8],
    qs: &'a [u8],
) -> impl Iterator<Item = (usize, f32, f32, [u8; QK / 2])> + 'a {
    (0..QK_K / QK).map(move |j| {
        let (sc, m) = scale_min_k4(j, scales);
        let q = &qs[32 * (j / 2)..32 * (j / 2 + 1)];
        let shift = 4 * (j % 2);
        (
            j,
            d * f32::from(sc),
            -(dmin * f32::from(m)),
            nibbles(|e| (q[e] >> shift) & 0x0F),
        )
    })
}

/// `Q4_K` (144 bytes per 256 weights: `d`, `dmin`, twelve bytes of six-bit scales and minimums,
/// 128 bytes of nibbles) as eight `Q4_1` blocks: `w = d * sc * q - dmin * m`.
pub(super) fn parse_q4_k(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(144)
        .flat_map(|b| {
            k_sub_blocks(half(b), half(&b[2..]), &b[4..16], &b[16..])
                .map(|(_, d, m, qs)| BlockQ4_1 { d, m, qs })
        })
        .collect()
}

/// `Q5_K` (176 bytes per 256 weights: `Q4_K`'s fields plus 32 bytes of fifth bits, bit `j`
/// of byte `l` for element `l` of sub-block `j`) as eight `Q5_1` blocks.
pub(super) fn parse_q5_k(bytes: &[u8]) -> Vec<BlockQ5_1> {
    bytes
        .chunks_exact(176)
        .flat_map(|b| {
            let qh = &b[16..48];
            k_sub_blocks(half(b), half(&b[2..]), &b[4..16], &b[48..]).map(move |(j, d, m, qs)| {
                BlockQ5_1 {
                    d,
                    m,
                    qh: (0..QK).fold(0u32, |h, e| h | (u32::from((qh[e] >> j) & 1) << e)),
                    qs,
                }
            })
        })
        .collect()
}

pub(super) fn parse_q8_0(bytes: &[u8]) -> Vec<BlockQ8_0> {
    bytes
        .chunks_exact(2 + QK)
        .map(|b| BlockQ8_0 {
            d: half(b),
            qs: std::array::from_fn(|i| b[2 + i] as i8),
        })
        .collect()
}

/// ggml's `quantize_row_q8_0` for one block, scale rounded through f16 and values to the
/// nearest integer, ties to even (as ggml's AVX path; [`quantize_q8_1`] says how).
pub(super) fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = max_magnitude(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    BlockQ8_0 {
        d: f16::from_f32(d).to_f32(),
        qs: std::array::from_fn(|i| ((x[i] * id + ROUND) - ROUND) as i8),
    }
}

/// Adding and subtracting 1.5 · 2²³ rounds an `f32` below 2²² to the nearest integer, ties
/// to even.
const ROUND: f32 = 12_582_912.0;

/// The largest magnitude in a block, in eight lanes and then across them: the same maximum
/// as one scan, in vector instructions (a single running maximum is a chain the compiler
/// keeps scalar).
fn max_magnitude(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    lanes.iter().fold(0f32, |m, v| m.max(*v))
}

/// ggml's `quantize_row_q8_1` for one block.
pub(super) fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = max_magnitude(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // To the nearest integer, ties to even, as ggml's AVX path (`_mm256_round_ps`) rounds:
    // adding and subtracting 1.5 · 2²³ ([`ROUND`]) does it in two additions the compiler
    // vectorizes, where `f32::round` is a call to `roundf` per element (3 % of a prefill).
    let qs: [i8; QK] = std::array::from_fn(|i| ((x[i] * id + ROUND) - ROUND) as i8);
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8_1 {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
        sum,
        qs,
    }
}
