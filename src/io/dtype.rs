//! Numbers as weight files store them (F32, BF16, F16, little-endian) converted to f32.

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
            .for_each(|(o, b)| *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
    }
    Ok(())
}

/// IEEE half precision to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: value = frac · 2^-24
            let value = frac as f32 * (1.0 / (1 << 24) as f32);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        for (bits, value) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
    }
}
