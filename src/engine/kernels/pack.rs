//! Packing a GGUF tensor into a [`QMatrix`], streamed a few rows at a time through a
//! [`Packer`]: the formats the kernels take as stored, and the other block formats
//! requantized to `Q8_0` a bounded piece at a time.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Result};

use super::blocks::{self, BlockQ4_1, BlockQ5_1, BlockQ8_0, QK, ROWS, RowBlock};
use super::{Groups, QMatrix, Simd};

/// Elements dequantized to `f32` at a time when requantizing (256 KiB of them). Dequantizing
/// a whole `Q2_K` tensor first took 12 times its size in the file.
const REQUANTIZE_ELEMENTS: usize = 1 << 16;

/// File bytes pushed at a time when packing a tensor already in memory.
const PUSH_BYTES: usize = 1 << 20;

impl QMatrix {
    /// Whether [`Packer`] packs `dtype`: `Q4_0`, `Q4_1`, `Q4_K`, `Q5_0`, `Q5_1`, `Q5_K` and
    /// `Q8_0` as stored, keeping every weight as the file has it (see [`blocks`]); the other
    /// block formats (`Q6_K`, `Q2_K`, `Q3_K`, `Q8_K`, `Q8_1`) requantized to `Q8_0` (finer
    /// than any of them, so nothing is lost that matters). Not the float formats.
    pub(crate) fn packs(dtype: GgmlDType) -> bool {
        !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
    }

    /// Packs a GGUF tensor of shape `(rows, cols)` (see [`QMatrix::packs`]), a few rows at a
    /// time. Returns `None` for float tensors and shapes these kernels do not handle.
    pub(crate) fn pack(t: &QTensor, simd: Simd) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        let &[rows, cols] = dims else { return Ok(None) };
        let dtype = t.dtype();
        if !Self::packs(dtype) || cols % QK != 0 || cols % dtype.block_size() != 0 {
            return Ok(None);
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let per_push = (PUSH_BYTES / row_bytes.max(1)).max(1) * row_bytes;
        let mut p = Packer::new(dtype, rows, cols, simd);
        for chunk in t.data()?.chunks(per_push) {
            p.push(chunk)?;
        }
        p.finish().map(Some)
    }
}

/// `bytes` (whole blocks of `dtype`) dequantized by candle a piece of
/// [`REQUANTIZE_ELEMENTS`] at a time and requantized to `Q8_0`: the blocks candle's
/// dequantization of the whole tensor would give, without the whole tensor in `f32`.
fn requantize(dtype: GgmlDType, bytes: &[u8]) -> Result<Vec<BlockQ8_0>> {
    let (block, size) = (dtype.block_size(), dtype.type_size());
    if !bytes.len().is_multiple_of(size) || !block.is_multiple_of(QK) {
        candle_core::bail!(
            "{} bytes are not whole {dtype:?} blocks of a multiple of {QK}",
            bytes.len()
        );
    }
    let mut out = Vec::with_capacity(bytes.len() / size * block / QK);
    // Pieces start at whole blocks of an allocation, aligned as candle's own reads are.
    for piece in bytes.chunks((REQUANTIZE_ELEMENTS / block).max(1) * size) {
        let n = piece.len() / size * block;
        let storage = QStorage::from_data(Cow::Borrowed(piece), &Device::Cpu, dtype)?;
        let values = QTensor::new(storage, (n,))?
            .dequantize(&Device::Cpu)?
            .to_vec1::<f32>()?;
        out.extend(values.chunks_exact(QK).map(blocks::quantize_q8_0));
    }
    Ok(out)
}

/// Blocks of whole rows not yet interleaved (fewer than eight rows' worth between pushes).
enum Pending {
    Q4(Vec<BlockQ4_1>),
    Q5(Vec<BlockQ5_1>),
    Q8(Vec<BlockQ8_0>),
}

/// Builds a [`QMatrix`] of a format [`QMatrix::packs`] from whole rows of the file's bytes,
/// in order. The loader streams a tensor through it a few rows at a time, so the file's bytes
/// are never held whole beside the packed copy.
pub(crate) struct Packer {
    dtype: GgmlDType,
    pending: Pending,
    /// Blocks pushed so far.
    pushed: usize,
    matrix: QMatrix,
}

impl Packer {
    pub(crate) fn new(dtype: GgmlDType, rows: usize, cols: usize, simd: Simd) -> Self {
        let n = rows.div_ceil(ROWS) * cols / QK;
        let (pending, groups) = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => {
                (Pending::Q4(Vec::new()), Groups::Q4(Vec::with_capacity(n)))
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q5K => {
                (Pending::Q5(Vec::new()), Groups::Q5(Vec::with_capacity(n)))
            }
            _ => (Pending::Q8(Vec::new()), Groups::Q8(Vec::with_capacity(n))),
        };
        Self {
            dtype,
            pending,
            pushed: 0,
            matrix: QMatrix {
                rows,
                cols,
                groups,
                simd,
            },
        }
    }

    /// Appends whole rows of the file's bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<()> {
        let per_row = self.matrix.cols / QK;
        let dtype = self.dtype;
        self.pushed += match (&mut self.pending, &mut self.matrix.groups) {
            (Pending::Q4(p), Groups::Q4(g)) => absorb(
                p,
                match dtype {
                    GgmlDType::Q4_0 => blocks::parse_q4_0(bytes),
                    GgmlDType::Q4K => blocks::parse_q4_k(bytes),
                    _ => blocks::parse_q4_1(bytes),
                },
                g,
                per_row,
            ),
            (Pending::Q5(p), Groups::Q5(g)) => absorb(
                p,
                match dtype {
                    GgmlDType::Q5_0 => blocks::parse_q5_0(bytes),
                    GgmlDType::Q5K => blocks::parse_q5_k(bytes),
                    _ => blocks::parse_q5_1(bytes),
                },
                g,
                per_row,
            ),
            (Pending::Q8(p), Groups::Q8(g)) => absorb(
                p,
                match dtype {
                    GgmlDType::Q8_0 => blocks::parse_q8_0(bytes),
                    _ => requantize(dtype, bytes)?,
                },
                g,
                per_row,
            ),
            _ => unreachable!("the pending blocks and the groups have one format"),
        };
        Ok(())
    }

    /// The matrix, once every row has arrived.
    pub(crate) fn finish(mut self) -> Result<QMatrix> {
        let m = &mut self.matrix;
        let (per_row, want) = (m.cols / QK, m.rows * m.cols / QK);
        if self.pushed != want {
            candle_core::bail!(
                "tensor data holds {} blocks, shape {}x{} needs {want}",
                self.pushed,
                m.rows,
                m.cols
            );
        }
        match (&mut self.pending, &mut m.groups) {
            (Pending::Q4(p), Groups::Q4(g)) => flush(p, g, per_row),
            (Pending::Q5(p), Groups::Q5(g)) => flush(p, g, per_row),
            (Pending::Q8(p), Groups::Q8(g)) => flush(p, g, per_row),
            _ => unreachable!("the pending blocks and the groups have one format"),
        }
        self.matrix.check()?;
        Ok(self.matrix)
    }
}

/// Adds `blocks` to `pending`, then moves every whole eight rows of it into `groups`.
/// Returns how many blocks came.
fn absorb<B: RowBlock>(
    pending: &mut Vec<B>,
    blocks: Vec<B>,
    groups: &mut Vec<B::Group>,
    per_row: usize,
) -> usize {
    let n = blocks.len();
    pending.extend(blocks);
    let whole = pending.len() / (ROWS * per_row) * ROWS * per_row;
    if whole > 0 {
        groups.extend(blocks::interleave(&pending[..whole], per_row));
        pending.drain(..whole);
    }
    n
}

/// Moves the last rows of `pending` (fewer than eight) into `groups`, padded with zero rows.
fn flush<B: RowBlock>(pending: &mut Vec<B>, groups: &mut Vec<B::Group>, per_row: usize) {
    groups.extend(blocks::interleave(pending, per_row));
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::tests::matrix;

    /// The loader pushes a few rows at a time: any split packs the same groups as one push,
    /// and rows missing at the end are an error, not zero weights.
    #[test]
    fn packing_rows_in_pieces_matches_packing_them_whole() {
        for dtype in [
            GgmlDType::Q4K,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q6K,
        ] {
            let (rows, cols) = (21, 256);
            let (q, whole) = matrix(rows, cols, dtype, 6);
            let bytes = q.data().unwrap();
            let row_bytes = bytes.len() / rows;
            for piece in [1, 3, 8, 20] {
                let mut p = Packer::new(dtype, rows, cols, Simd::detect());
                for chunk in bytes.chunks(piece * row_bytes) {
                    p.push(chunk).unwrap();
                }
                let m = p.finish().unwrap();
                let mut a = vec![0f32; cols];
                let mut b = vec![0f32; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut a);
                    whole.dequantize_row(r, &mut b);
                    assert_eq!(a, b, "{dtype:?} pieces of {piece} rows, row {r}");
                }
            }
            let mut short = Packer::new(dtype, rows, cols, Simd::detect());
            short.push(&bytes[..(rows - 1) * row_bytes]).unwrap();
            let err = short.finish().unwrap_err().to_string();
            assert!(err.contains("blocks"), "{err}");
        }
    }

    /// Requantized formats give, piece by piece, the very blocks that dequantizing the whole
    /// tensor with candle and quantizing it to `Q8_0` gave (the packing before it was
    /// streamed), for tensors larger than one piece.
    #[test]
    fn requantizing_in_pieces_matches_requantizing_the_whole_tensor() {
        let (rows, cols) = (300, 512);
        assert!(rows * cols > 2 * REQUANTIZE_ELEMENTS, "several pieces");
        for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q6K] {
            let (q, packed) = matrix(rows, cols, dtype, 9);
            let values = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let whole: Vec<BlockQ8_0> =
                values.chunks_exact(QK).map(blocks::quantize_q8_0).collect();
            let Groups::Q8(groups) = &packed.groups else {
                panic!("{dtype:?} packs as Q8_0")
            };
            let want = blocks::interleave(&whole, cols / QK);
            assert_eq!(groups.len(), want.len(), "{dtype:?}");
            let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                packed.dequantize_row(r, &mut a);
                for (blk, out) in whole[r * cols / QK..(r + 1) * cols / QK]
                    .iter()
                    .zip(b.chunks_exact_mut(QK))
                {
                    for (o, &q) in out.iter_mut().zip(&blk.qs) {
                        *o = blk.d * f32::from(q);
                    }
                }
                assert_eq!(a, b, "{dtype:?} row {r}");
            }
        }
    }
}
