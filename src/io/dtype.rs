//! Numbers as weight files store them (F32, BF16, F16, little-endian) converted to f32 (the
//! 16-bit conversions themselves are [`crate::ops::lowp::half`]'s).

use crate::ops::lowp::half::{bf16_to_f32, f16_to_f32};
use safetensors::Dtype;

/// Bytes per value of the dtypes we read (F32, BF16, F16).
pub fn dtype_width(dtype: Dtype) -> std::result::Result<usize, String> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::BF16 | Dtype::F16 => Ok(2),
        other => Err(format!("dtype {other:?} is not supported (expected F32, BF16 or F16)")),
    }
}

/// Converts a tensor's bytes to f32 into `out` (F32, BF16 and F16 are accepted).
pub fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let width = dtype_width(dtype)?;
    if bytes.len() != out.len() * width {
        return Err(format!("holds {} bytes, expected {}", bytes.len(), out.len() * width));
    }
    match dtype {
        Dtype::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::BF16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
    }
    Ok(())
}
