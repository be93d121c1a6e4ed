//! A bounded walk over a GGUF header, before candle parses it. candle's parser turns every
//! metadata array element into a 32-byte `Value` and every table entry into a map entry,
//! checking only that each array fits in the bytes left (and allowing up to 2^30
//! elements per array): a 512 MiB file holding one array of one-byte values became 16 GiB
//! of values, an allocation that aborts the game rather than fail. This walk reads only
//! lengths and counts, skipping the bytes between them, and refuses a header whose counts
//! the file's bytes cannot hold or that exceed the caps in [`crate::engine::limits`], naming
//! the metadata key or tensor at fault. Only a header that passes is handed to candle.
//!
//! The layout (GGUF v1 to v3): the magic `GGUF`, a `u32` version, the tensor and metadata
//! counts, then each metadata entry as a string key, a `u32` value type and the value
//! (an array is its element type, its length and the elements), then each tensor's name,
//! dimension count, dimensions, type and offset. Strings are a length and bytes; lengths
//! and counts are `u64` (`u32` in version 1).

use std::io::{self, Read, Seek, SeekFrom};

use crate::engine::limits::{
    MAX_METADATA_ARRAY_DEPTH, MAX_METADATA_ELEMENTS, MAX_METADATA_KEYS, MAX_TENSORS,
};

/// Longest metadata key the GGUF specification allows.
const MAX_KEY_BYTES: u64 = 65_535;
/// Longest tensor name the GGUF specification allows (ggml's `GGML_MAX_NAME`).
const MAX_TENSOR_NAME_BYTES: u64 = 64;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u64 = 4;
/// Skips up to this many bytes by reading them (a buffered reader keeps its buffer);
/// longer ones by seeking.
const SKIP_BY_READING: u64 = 1 << 16;

/// The value type codes of strings and arrays.
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Walks the header of the GGUF file of `len` bytes in `reader`, from its start, and says
/// what is wrong with it, if anything. Leaves the reader anywhere.
pub(super) fn scan<R: Read + Seek>(reader: &mut R, len: u64) -> Result<(), String> {
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let mut walk = Walk {
        reader,
        pos: 0,
        len,
        wide: true,
        elements: 0,
    };
    walk.header()
}

struct Walk<'r, R> {
    reader: &'r mut R,
    /// Bytes read or skipped so far.
    pos: u64,
    /// The file's size.
    len: u64,
    /// Lengths and counts are `u64` (versions 2 and 3), not `u32` (version 1).
    wide: bool,
    /// Metadata array elements seen so far, nested ones included.
    elements: u64,
}

impl<R: Read + Seek> Walk<'_, R> {
    fn header(&mut self) -> Result<(), String> {
        self.skip(4, "the magic")?;
        self.wide = match self.u32("the version")? {
            1 => false,
            2 | 3 => true,
            v => return Err(format!("GGUF version {v} is not one of 1, 2 and 3")),
        };
        let tensors = self.length("the tensor count")?;
        let keys = self.length("the metadata count")?;
        if keys > MAX_METADATA_KEYS {
            return Err(format!(
                "{keys} metadata entries, more than the {MAX_METADATA_KEYS} allowed"
            ));
        }
        if tensors > MAX_TENSORS {
            return Err(format!(
                "{tensors} tensors, more than the {MAX_TENSORS} allowed"
            ));
        }
        // Each entry takes at least its fixed parts: a key, a type and a one-byte value; a
        // name, a dimension count, a type and an offset.
        let prefix = self.prefix();
        let needed = keys * (prefix + 4 + 1) + tensors * (prefix + 4 + 4 + 8);
        if needed > self.remaining() {
            return Err(format!(
                "the header declares {keys} metadata entries and {tensors} tensors, at least \
                 {needed} bytes, but {} bytes follow",
                self.remaining()
            ));
        }
        for i in 0..keys {
            let key = self.name(MAX_KEY_BYTES, || format!("metadata entry {i}'s key"))?;
            let ty = self.u32("a value type")?;
            self.value(ty, 0)
                .map_err(|e| format!("metadata key `{key}`: {e}"))?;
        }
        let width = if self.wide { 8 } else { 4 };
        for i in 0..tensors {
            let name = self.name(MAX_TENSOR_NAME_BYTES, || format!("tensor {i}'s name"))?;
            let in_tensor = |e: String| format!("tensor `{name}`: {e}");
            let dims = self.u32("a dimension count").map_err(in_tensor)?;
            if u64::from(dims) > MAX_DIMS {
                return Err(in_tensor(format!(
                    "{dims} dimensions, more than the {MAX_DIMS} allowed"
                )));
            }
            self.skip(u64::from(dims) * width, "its dimensions")
                .and_then(|()| self.skip(4 + 8, "its type and offset"))
                .map_err(in_tensor)?;
        }
        Ok(())
    }

    /// Walks one value of type `ty`, `depth` arrays deep.
    fn value(&mut self, ty: u32, depth: usize) -> Result<(), String> {
        if let Some(size) = fixed_size(ty) {
            return self.skip(size, "a value");
        }
        match ty {
            STRING => {
                let n = self.length("a string's length")?;
                self.skip(n, "a string")
            }
            ARRAY => {
                if depth >= MAX_METADATA_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {MAX_METADATA_ARRAY_DEPTH} deep"
                    ));
                }
                let elem = self.u32("an array's element type")?;
                let n = self.length("an array's length")?;
                let min = match (fixed_size(elem), elem) {
                    (Some(size), _) => size,
                    (None, STRING) => self.prefix(),
                    (None, ARRAY) => 4 + self.prefix(),
                    _ => return Err(format!("an array of unknown value type {elem}")),
                };
                let needed = n.saturating_mul(min);
                if needed > self.remaining() {
                    return Err(format!(
                        "an array of {n} elements takes at least {needed} bytes, but {} bytes \
                         follow",
                        self.remaining()
                    ));
                }
                self.elements = self.elements.saturating_add(n);
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(format!(
                        "an array of {n} elements brings the metadata arrays to {} elements, \
                         more than the {MAX_METADATA_ELEMENTS} allowed in all",
                        self.elements
                    ));
                }
                match fixed_size(elem) {
                    Some(size) => self.skip(n * size, "an array's elements"),
                    None => (0..n).try_for_each(|_| self.value(elem, depth + 1)),
                }
            }
            other => Err(format!("unknown value type {other}")),
        }
    }

    /// A key or tensor name of at most `max` bytes, for messages.
    fn name(&mut self, max: u64, what: impl Fn() -> String) -> Result<String, String> {
        let n = self.length(&what())?;
        if n > max {
            return Err(format!(
                "{} is {n} bytes long, more than the {max} allowed",
                what()
            ));
        }
        self.need(n, &what())?;
        let mut bytes = vec![0; n as usize];
        self.reader
            .read_exact(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", what()))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Bytes in a string's length or an array's count.
    fn prefix(&self) -> u64 {
        if self.wide { 8 } else { 4 }
    }

    fn need(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} takes {n} bytes, but {} bytes follow (the file is truncated or \
                 inconsistent)",
                self.remaining()
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        self.need(N as u64, what)?;
        let mut b = [0; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|e| format!("cannot read {what}: {e}"))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn length(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.bytes(what).map(u64::from_le_bytes)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    /// Moves past `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        self.need(n, what)?;
        let failed = |e: io::Error| format!("cannot read {what}: {e}");
        if n <= SKIP_BY_READING {
            let read =
                io::copy(&mut self.reader.by_ref().take(n), &mut io::sink()).map_err(failed)?;
            if read != n {
                return Err(format!("{what}: the file ended early"));
            }
        } else {
            // `n` is at most the file's size, which a seek offset holds.
            let offset = i64::try_from(n).map_err(|e| failed(io::Error::other(e)))?;
            self.reader
                .seek(SeekFrom::Current(offset))
                .map_err(failed)?;
        }
        self.pos += n;
        Ok(())
    }
}

/// The size of a value of a fixed-size type: the integers, floats and booleans.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GGUF v3 header: metadata entries as (key, encoded type and value), then tensors as
    /// (name, dimension count, dimensions).
    fn header(kvs: &[(&str, Vec<u8>)], tensors: &[(&str, u32, u64)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (key, value) in kvs {
            out.extend(string(key));
            out.extend(value);
        }
        for (name, n_dims, dim) in tensors {
            out.extend(string(name));
            out.extend(n_dims.to_le_bytes());
            for _ in 0..*n_dims {
                out.extend(dim.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(0u64.to_le_bytes());
        }
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend(s.as_bytes());
        out
    }

    /// An array value (type code included) of `n` elements of type `elem`, encoded `body`.
    fn array(elem: u32, n: u64, body: &[u8]) -> Vec<u8> {
        let mut out = ARRAY.to_le_bytes().to_vec();
        out.extend(elem.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(body);
        out
    }

    fn typed(ty: u32, body: &[u8]) -> Vec<u8> {
        let mut out = ty.to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        scan(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn gguf_scan_passes_an_ordinary_header() {
        let mut tokens = Vec::new();
        for t in ["a", "b", "ab"] {
            tokens.extend(string(t));
        }
        let bytes = header(
            &[
                ("general.architecture", typed(STRING, &string("llama"))),
                ("llama.block_count", typed(4, &30u32.to_le_bytes())),
                ("tokenizer.ggml.tokens", array(STRING, 3, &tokens)),
                ("tokenizer.ggml.scores", array(6, 3, &[0; 12])),
                // An array of two arrays of one byte: nested once, which candle writes.
                ("nested", array(ARRAY, 2, &array(0, 1, &[7])[4..].repeat(2))),
            ],
            &[("token_embd.weight", 2, 64)],
        );
        assert_eq!(check(&bytes), Ok(()));
    }

    #[test]
    fn gguf_scan_refuses_arrays_the_file_cannot_hold_and_names_the_key() {
        // 2^40 one-byte values in a file of a few dozen bytes.
        let bytes = header(&[("huge", array(0, 1 << 40, &[1, 2, 3]))], &[]);
        let err = check(&bytes).unwrap_err();
        assert!(
            err.contains("`huge`") && err.contains("1099511627776"),
            "{err}"
        );
        // Strings take at least their length prefix each.
        let bytes = header(&[("strings", array(STRING, 1000, &[0; 4000]))], &[]);
        let err = check(&bytes).unwrap_err();
        assert!(err.contains("`strings`") && err.contains("8000"), "{err}");
    }

    #[test]
    fn gguf_scan_caps_the_metadata_array_elements_in_all() {
        // Two arrays that fit the file, each under the cap, together over it.
        let half = MAX_METADATA_ELEMENTS / 2 + 1;
        let body = vec![0u8; half as usize];
        let bytes = header(
            &[
                ("first", array(0, half, &body)),
                ("second", array(0, half, &body)),
            ],
            &[],
        );
        let err = check(&bytes).unwrap_err();
        assert!(err.contains("`second`") && err.contains("in all"), "{err}");
        let one = header(&[("first", array(0, half, &body))], &[]);
        assert_eq!(check(&one), Ok(()));
    }

    #[test]
    fn gguf_scan_refuses_strings_longer_than_the_file() {
        let mut value = STRING.to_le_bytes().to_vec();
        value.extend((1u64 << 50).to_le_bytes());
        let err = check(&header(&[("general.name", value)], &[])).unwrap_err();
        assert!(
            err.contains("`general.name`") && err.contains("truncated"),
            "{err}"
        );
        // A key longer than the specification allows.
        let long = "k".repeat(70_000);
        let err = check(&header(&[(long.as_str(), typed(0, &[1]))], &[])).unwrap_err();
        assert!(err.contains("70000 bytes long"), "{err}");
    }

    #[test]
    fn gguf_scan_caps_the_nesting_of_arrays() {
        // An array of arrays of arrays.
        let inner = array(0, 1, &[7]);
        let middle = array(ARRAY, 1, &inner[4..]);
        let outer = array(ARRAY, 1, &middle[4..]);
        let err = check(&header(&[("deep", outer)], &[])).unwrap_err();
        assert!(err.contains("`deep`") && err.contains("nested"), "{err}");
    }

    #[test]
    fn gguf_scan_refuses_counts_the_file_cannot_hold() {
        let mut bytes = header(&[], &[]);
        // A thousand metadata entries in a 24-byte file.
        bytes[16..24].copy_from_slice(&1000u64.to_le_bytes());
        let err = check(&bytes).unwrap_err();
        assert!(err.contains("1000 metadata entries and 0 tensors"), "{err}");
        bytes[16..24].copy_from_slice(&(MAX_METADATA_KEYS + 1).to_le_bytes());
        let err = check(&bytes).unwrap_err();
        assert!(err.contains("allowed"), "{err}");
        bytes[16..24].copy_from_slice(&0u64.to_le_bytes());
        bytes[8..16].copy_from_slice(&(MAX_TENSORS + 1).to_le_bytes());
        let err = check(&bytes).unwrap_err();
        assert!(err.contains("tensors, more than"), "{err}");
    }

    #[test]
    fn gguf_scan_checks_the_tensor_table() {
        let err = check(&header(&[], &[("w", 5, 2)])).unwrap_err();
        assert!(err.contains("`w`") && err.contains("5 dimensions"), "{err}");
        let long = "t".repeat(65);
        let err = check(&header(&[], &[(long.as_str(), 1, 2)])).unwrap_err();
        assert!(err.contains("65 bytes long"), "{err}");
        let mut cut = header(&[], &[("w", 2, 64)]);
        cut.truncate(cut.len() - 3);
        let err = check(&cut).unwrap_err();
        assert!(err.contains("`w`") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn gguf_scan_reads_version_one_lengths() {
        // Version 1: `u32` counts and lengths.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(0u32.to_le_bytes());
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(4u32.to_le_bytes());
        bytes.extend(b"name");
        bytes.extend(STRING.to_le_bytes());
        bytes.extend(2u32.to_le_bytes());
        bytes.extend(b"hi");
        assert_eq!(check(&bytes), Ok(()));
        bytes.truncate(bytes.len() - 1);
        assert!(check(&bytes).unwrap_err().contains("`name`"));
    }
}
