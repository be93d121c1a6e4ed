//! The decoder's weight matrices and token embeddings: packed for this crate's CPU kernels
//! where the format allows, otherwise candle's quantized matrices and dense tables.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::super::error::Result;
use super::super::kernels::{Activations, QMatrix, Simd};
use super::source::TensorSource;

/// A weight matrix: packed for this crate's CPU kernels, or candle's (GPUs, float weights).
#[derive(Debug)]
pub(super) enum Linear {
    Packed(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Linear {
    pub(super) fn load(src: &mut TensorSource<'_>, name: &str) -> Result<Self> {
        if let Some(simd) = src.packed
            && let Some(m) = src.packed_matrix(name, simd)?
        {
            return Ok(Linear::Packed(Arc::new(m)));
        }
        Self::from_qtensor(Arc::new(src.qtensor(name)?), src.packed)
    }

    pub(super) fn from_qtensor(t: Arc<QTensor>, packed: Option<Simd>) -> Result<Self> {
        if let Some(simd) = packed
            && let Some(m) = QMatrix::pack(&t, simd)?
        {
            return Ok(Linear::Packed(Arc::new(m)));
        }
        Ok(Linear::Candle(QMatMul::from_arc(t)?))
    }

    /// Each matrix's [`Linear::forward`] of the same `x`; packed ones share its quantization
    /// and one pass on the pool.
    pub(super) fn forward_each<const N: usize>(
        linears: &[Linear; N],
        x: &Tensor,
    ) -> Result<[Tensor; N]> {
        let packed: Vec<&QMatrix> = linears
            .iter()
            .filter_map(|l| match l {
                Linear::Packed(m) => Some(&**m),
                Linear::Candle(_) => None,
            })
            .collect();
        let (b, s, cols) = x.dims3()?;
        if packed.len() < N || packed.iter().any(|m| m.cols() != cols) {
            let out: Vec<Tensor> = linears
                .iter()
                .map(|l| l.forward(x))
                .collect::<Result<_>>()?;
            return Ok(out.try_into().expect("one output per matrix"));
        }
        let acts = Activations::quantize(&x.flatten_all()?.to_vec1::<f32>()?);
        let out: Vec<Tensor> = QMatrix::matmul_each(&packed, &acts)
            .into_iter()
            .zip(&packed)
            .map(|(y, m)| Tensor::from_vec(y, (b, s, m.rows()), x.device()))
            .collect::<candle_core::Result<_>>()?;
        Ok(out.try_into().expect("one output per matrix"))
    }

    /// `(batch, seq, cols)` to `(batch, seq, rows)`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Packed(m) => {
                let (b, s, _) = x.dims3()?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                Ok(Tensor::from_vec(
                    m.matmul(&input),
                    (b, s, m.rows()),
                    x.device(),
                )?)
            }
        }
    }
}

/// Token embeddings: rows of the packed matrix (shared with a tied output layer), or a
/// dequantized table.
#[derive(Debug)]
pub(super) enum Embeddings {
    Packed(Arc<QMatrix>),
    Dense(Tensor),
}

impl Embeddings {
    pub(super) fn lookup(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embeddings::Dense(t) => Ok(t.index_select(&Tensor::new(tokens, device)?, 0)?),
            Embeddings::Packed(m) => {
                let d = m.cols();
                let mut out = vec![0f32; tokens.len() * d];
                for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
                    m.dequantize_row(t as usize, row);
                }
                Ok(Tensor::from_vec(out, (tokens.len(), d), device)?)
            }
        }
    }
}
