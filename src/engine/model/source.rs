//! Reading tensors out of a GGUF stream for the model loaders.

use std::io::{Read, Seek};

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::GgufHeader;
use crate::engine::kernels::Simd;

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
