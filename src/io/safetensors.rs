//! The safetensors format: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the raw little-endian data.
//! Reading memory-maps the file; writing streams the tensors without copying them.
//! The format is recognised by its first bytes: a header length, then `{`.

use super::mapped::MappedFile;
use crate::error::{Error, Result};
use crate::model::TensorSpec;
use safetensors::SafeTensors;
use std::io::Write;

impl MappedFile {
    /// Parses the header (validated by the `safetensors` crate: sizes, offsets, bounds).
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(self.bytes())
            .map_err(|e| Error::weights(self.path(), format!("not a valid safetensors file: {e}")))
    }
}

/// Whether a file starts like a safetensors file: an 8-byte header length that fits in the
/// file, then the JSON header's `{`.
pub fn has_header(file: &[u8]) -> bool {
    file.len() > 8
        && file[8] == b'{'
        && u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) < file.len() as u64 - 8
}

/// One tensor to write: name, shape and f32 data.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl<'a> TensorOut<'a> {
    /// The tensors `specs` lists, cut in order from the flat buffer `params`.
    pub fn all_of(specs: &'a [TensorSpec], params: &'a [f32]) -> Vec<Self> {
        let mut offset = 0;
        specs
            .iter()
            .map(|s| {
                let data = &params[offset..offset + s.numel()];
                offset += s.numel();
                TensorOut {
                    name: &s.name,
                    shape: &s.shape,
                    data,
                }
            })
            .collect()
    }
}

/// Streams tensors in the safetensors format (F32), with `__metadata__` = {"format": "pt"} as
/// `transformers` expects.
pub fn write_safetensors(out: &mut dyn Write, tensors: &[TensorOut<'_>]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + 4 * t.data.len();
        header.insert(
            t.name.into(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // Pad the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for t in tensors {
        for chunk in t.data.chunks(1 << 14) {
            buf.clear();
            chunk.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            out.write_all(&buf)?;
        }
    }
    Ok(())
}
