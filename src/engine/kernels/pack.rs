//! Packing a GGUF tensor into a [`QMatrix`]: the formats the kernels take as stored, streamed
//! a few rows at a time through a [`Packer`], and the other block formats requantized.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};

use super::blocks::{self, BlockQ4_1, BlockQ5_1, BlockQ8_0, QK, ROWS, RowBlock};
use super::{Groups, QMatrix, Simd};

impl QMatrix {
    /// Whether [`Packer`] takes `dtype` as stored: `Q4_0`, `Q4_1`, `Q4_K`,
    /// `Q5_0`, `Q5_1`, `Q5_K` and `Q8_0` keep every weight as the file has it (see [`blocks`]).
    pub(crate) fn stores(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, Q4_0 | Q4_1 | Q4K | Q5_0 | Q5_1 | Q5K | Q8_0)
    }

    /// Packs a GGUF tensor of shape `(rows, cols)`: the formats [`QMatrix::stores`] as they
    /// are, other block formats (`Q6_K`, `Q2_K`, `Q3_K`) requantized to `Q8_0` (finer than any
    /// of them, so nothing is lost that matters). Returns `None` for float tensors and shapes
    /// these kernels do not handle.
    pub(crate) fn pack(t: &QTensor, simd: Simd) -> Result<Option<Self>> {
        let dims = t.shape().dims();
        let &[rows, cols] = dims else { return Ok(None) };
        if cols % QK != 0 {
            return Ok(None);
        }
        if Self::stores(t.dtype()) {
            let mut p = Packer::new(t.dtype(), rows, cols, simd);
            p.push(&t.data()?);
            return p.finish().map(Some);
        }
        let groups = match t.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return Ok(None),
            _ => {
                let values = t
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let blocks: Vec<BlockQ8_0> =
                    values.chunks_exact(QK).map(blocks::quantize_q8_0).collect();
                Groups::Q8(blocks::interleave(&blocks, cols / QK))
            }
        };
        let m = Self {
            rows,
            cols,
            groups,
            simd,
        };
        m.check()?;
        Ok(Some(m))
    }
}

/// Blocks of whole rows not yet interleaved (fewer than eight rows' worth between pushes).
enum Pending {
    Q4(Vec<BlockQ4_1>),
    Q5(Vec<BlockQ5_1>),
    Q8(Vec<BlockQ8_0>),
}

/// Builds a [`QMatrix`] of a format [`QMatrix::stores`] from whole rows of the file's bytes,
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
    pub(crate) fn push(&mut self, bytes: &[u8]) {
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
            (Pending::Q8(p), Groups::Q8(g)) => absorb(p, blocks::parse_q8_0(bytes), g, per_row),
            _ => unreachable!("the pending blocks and the groups have one format"),
        };
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
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let (rows, cols) = (21, 256);
            let (q, whole) = matrix(rows, cols, dtype, 6);
            let bytes = q.data().unwrap();
            let row_bytes = bytes.len() / rows;
            for piece in [1, 3, 8, 20] {
                let mut p = Packer::new(dtype, rows, cols, Simd::detect());
                for chunk in bytes.chunks(piece * row_bytes) {
                    p.push(chunk);
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
            short.push(&bytes[..(rows - 1) * row_bytes]);
            let err = short.finish().unwrap_err().to_string();
            assert!(err.contains("blocks"), "{err}");
        }
    }
}
