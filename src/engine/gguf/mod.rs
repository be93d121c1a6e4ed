//! Reading GGUF files: the header, typed metadata access, and errors that name the file.
//!
//! A GGUF file is data from the internet, and its header is read in three passes before any
//! weight: [`scan`] walks it with caps of our own (candle's parser would turn a huge
//! metadata array into many times its size in memory), candle parses it, and
//! [`GgufHeader::read`] checks the tensor table (every tensor inside the file, none
//! overlapping another).

mod caps;
mod scan;

pub(crate) use caps::check as check_limits;

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};

use super::error::{EngineError, Result};

/// A parsed GGUF header with the name of the file it came from, for error messages.
pub(crate) struct GgufHeader {
    pub(crate) file: String,
    pub(crate) content: Content,
}

impl GgufHeader {
    /// Walks the header (metadata and tensor table) of a GGUF stream within our caps, parses
    /// it, and checks that every tensor lies inside the file and shares no byte with another,
    /// so that a truncated or hostile file fails here, before any weight loads.
    pub(crate) fn read<R: Read + Seek>(reader: &mut R, file: &str) -> Result<Self> {
        let invalid = |reason: String| EngineError::InvalidGguf {
            file: file.to_owned(),
            reason,
        };
        let mut magic = [0u8; 4];
        reader
            .read_exact(&mut magic)
            .map_err(|e| invalid(format!("cannot read the header: {e}")))?;
        if &magic != b"GGUF" {
            return Err(invalid(format!(
                "the file starts with {magic:02x?}, not the GGUF magic \"GGUF\""
            )));
        }
        let file_len = reader
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| invalid(e.to_string()))?;
        scan::scan(reader, file_len).map_err(invalid)?;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| invalid(e.to_string()))?;
        // candle's parser divides by `general.alignment` (a 0 panics) and multiplies
        // dimensions: a panic there is a bad file, not a crash.
        let content =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(reader)))
                .map_err(|_| {
                    invalid("the header is inconsistent (the parser gave up on it)".into())
                })?
                .map_err(|e| invalid(e.to_string()))?;
        if let Some(alignment) = content.metadata.get("general.alignment")
            && alignment
                .to_u32()
                .is_ok_and(|a| a == 0 || !a.is_power_of_two())
        {
            return Err(invalid("general.alignment must be a power of two".into()));
        }
        // Each tensor's data as (start, end, name), relative to the data section.
        let mut regions = Vec::with_capacity(content.tensor_infos.len());
        for (name, info) in &content.tensor_infos {
            let dims = info.shape.dims();
            // Checked: a product of hostile dimensions overflows (and panics in candle).
            let elems = dims
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    invalid(format!(
                        "tensor `{name}` has dimensions {dims:?}: a zero, or too many elements"
                    ))
                })?;
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(invalid(format!(
                    "tensor `{name}` has {elems} elements, not a multiple of its block size {block}"
                )));
            }
            let bytes = ((elems / block) as u64).saturating_mul(info.ggml_dtype.type_size() as u64);
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if end > file_len {
                return Err(invalid(format!(
                    "the file is truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
                )));
            }
            regions.push((info.offset, info.offset + bytes, name.as_str()));
        }
        // Tensors share no bytes, as llama.cpp requires (it wants them back to back): a file
        // whose tensors all start at offset 0 made every one a separate copy of the same
        // bytes, tens of GB from a small file.
        regions.sort_unstable();
        if let Some(pair) = regions.windows(2).find(|w| w[0].1 > w[1].0) {
            let [(a_start, a_end, a), (b_start, b_end, b)] = [pair[0], pair[1]];
            return Err(invalid(format!(
                "tensors `{a}` (bytes {a_start}..{a_end} of the data) and `{b}` (bytes \
                 {b_start}..{b_end}) overlap"
            )));
        }
        Ok(Self {
            file: file.to_owned(),
            content,
        })
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::Metadata {
            file: self.file.clone(),
            key: key.to_owned(),
            problem: "missing".to_owned(),
        }
    }

    fn wrong(&self, key: &str, problem: impl std::fmt::Display) -> EngineError {
        EngineError::Metadata {
            file: self.file.clone(),
            key: key.to_owned(),
            problem: problem.to_string(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub(crate) fn string(&self, key: &str) -> Result<&str> {
        let value = self.get(key).ok_or_else(|| self.missing(key))?;
        value
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.wrong(key, e))
    }

    pub(crate) fn opt_string(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// Reads any integer-typed value as `u64`.
    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let n = match value {
            Value::U8(v) => u64::from(*v),
            Value::U16(v) => u64::from(*v),
            Value::U32(v) => u64::from(*v),
            Value::U64(v) => *v,
            Value::I8(v) => u64::try_from(*v).map_err(|e| self.wrong(key, e))?,
            Value::I16(v) => u64::try_from(*v).map_err(|e| self.wrong(key, e))?,
            Value::I32(v) => u64::try_from(*v).map_err(|e| self.wrong(key, e))?,
            Value::I64(v) => u64::try_from(*v).map_err(|e| self.wrong(key, e))?,
            other => {
                return Err(self.wrong(key, format!("{:?}, not an integer", other.value_type())));
            }
        };
        Ok(Some(n))
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        let n = self.opt_u64(key)?.ok_or_else(|| self.missing(key))?;
        usize::try_from(n).map_err(|e| self.wrong(key, e))
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt_u64(key)?
            .map(|n| usize::try_from(n).map_err(|e| self.wrong(key, e)))
            .transpose()
    }

    pub(crate) fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.wrong(key, format!("{:?}, not a float", other.value_type()))),
        }
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    pub(crate) fn string_array(&self, key: &str) -> Result<Vec<String>> {
        let value = self.get(key).ok_or_else(|| self.missing(key))?;
        let items = value.to_vec().map_err(|e| self.wrong(key, e))?;
        items
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| self.wrong(key, e)))
            .collect()
    }

    pub(crate) fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let items = value.to_vec().map_err(|e| self.wrong(key, e))?;
        items
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => i32::try_from(*x).map_err(|e| self.wrong(key, e)),
                Value::I8(x) => Ok(i32::from(*x)),
                Value::U8(x) => Ok(i32::from(*x)),
                other => Err(self.wrong(key, format!("has a {:?} element", other.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(crate) fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let items = value.to_vec().map_err(|e| self.wrong(key, e))?;
        items
            .iter()
            .map(|v| v.to_f32().map_err(|e| self.wrong(key, e)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
