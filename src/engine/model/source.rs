//! Reading tensors out of a GGUF stream for the model loaders.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::GgufHeader;
use crate::engine::kernels::{Packer, QMatrix, Simd};

/// Reads tensors out of a GGUF stream, turning failures into errors that name the file.
pub(crate) struct TensorSource<'a> {
    pub(crate) header: &'a GgufHeader,
    pub(crate) reader: &'a mut dyn ReadSeek,
    pub(crate) device: Device,
    /// Pack matrices for [`crate::engine::kernels`] (CPU only), with or without SIMD.
    pub(crate) packed: Option<Simd>,
}

/// `Read + Seek` as one object-safe trait.
pub(crate) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

impl TensorSource<'_> {
    pub(crate) fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.header
            .content
            .tensor(&mut self.reader, name, &self.device)
            .map_err(|e| EngineError::InvalidGguf {
                file: self.header.file.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })
    }

    /// Tensor `name` packed for the kernels, read from the file a few rows at a time straight
    /// into its packed blocks (requantized in the same pieces where the kernels do not take
    /// the format as stored), so neither the file's bytes nor the tensor in `f32` are ever
    /// held whole beside them (reading whole through candle, Gemma 3 270M's load peaked
    /// 200 MiB above its resident size; a `Q2_K` tensor took 12 times its size in `f32`).
    /// `None` for float formats, and shapes that are not a matrix the kernels handle.
    pub(crate) fn packed_matrix(&mut self, name: &str, simd: Simd) -> Result<Option<QMatrix>> {
        let file = self.header.file.clone();
        let wrap = |reason: String| EngineError::InvalidGguf {
            file: file.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let Some(info) = self.header.content.tensor_infos.get(name) else {
            return Err(wrap("missing".into()));
        };
        let &[rows, cols] = info.shape.dims() else {
            return Ok(None);
        };
        let dtype = info.ggml_dtype;
        if !QMatrix::packs(dtype) || cols % dtype.block_size() != 0 || cols % 32 != 0 {
            return Ok(None);
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let start = self.header.content.tensor_data_offset + info.offset;
        self.reader
            .seek(SeekFrom::Start(start))
            .map_err(|e| wrap(e.to_string()))?;
        let mut m = Packer::new(dtype, rows, cols, simd);
        let per_chunk = (1 << 20) / row_bytes.max(1) + 1;
        let mut buf = vec![0u8; per_chunk.min(rows) * row_bytes];
        let mut done = 0;
        while done < rows {
            let n = per_chunk.min(rows - done);
            let chunk = &mut buf[..n * row_bytes];
            self.reader
                .read_exact(chunk)
                .map_err(|e| wrap(format!("reading its data: {e}")))?;
            m.push(chunk).map_err(|e| wrap(e.to_string()))?;
            done += n;
        }
        m.finish().map(Some).map_err(|e| wrap(e.to_string()))
    }

    /// Whether the file has tensor `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.header.content.tensor_infos.contains_key(name)
    }

    /// A small float tensor (norm weights, biases), read as `f32`.
    pub(crate) fn vector(&mut self, name: &str) -> Result<Tensor> {
        let device = self.device.clone();
        Ok(self.qtensor(name)?.dequantize(&device)?)
    }
}
