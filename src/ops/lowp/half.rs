//! 16-bit floats: bf16 and IEEE half precision (f16) to and from f32, rounding to nearest even.
//! Low-precision weights and their q8_0 scales are stored in them, and so are the tensors of
//! bf16/f16 weight files and llm.c's bf16 files (`crate::io`), and the keys and values of a
//! half-precision KV cache ([`widen_f16`], [`narrow_f16_saturating`]).

/// bf16 to f32: the bf16 bits are the top half of the f32's.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 to bf16, rounding to nearest even (as torch's `.to(torch.bfloat16)`).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two f32 rounded to bf16 in one 32-bit word, `lo` in the low half: the pair one lane of
/// `vdpbf16ps` multiplies.
#[inline(always)]
pub fn bf16_pair(lo: f32, hi: f32) -> u32 {
    f32_to_bf16(lo) as u32 | (f32_to_bf16(hi) as u32) << 16
}

/// f32 to IEEE half precision, rounding to nearest even; beyond 65504 is infinite, below
/// 2^-24 is zero, in between the subnormals keep what bits they can.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | 0x7e00; // NaN
    }
    let exp = (abs >> 23) as i32 - 127;
    let mant = abs & 0x7f_ffff;
    // Keeps `value >> shift` rounded to nearest even.
    let round = |value: u32, shift: u32| {
        let (kept, rest, half) = (value >> shift, value & ((1 << shift) - 1), 1 << (shift - 1));
        kept + (rest > half || (rest == half && kept & 1 == 1)) as u32
    };
    let magnitude = match exp {
        16.. => 0x7c00, // infinite, or too large for f16
        // normal: a carry out of the mantissa moves to the next exponent (or to infinity)
        -14..=15 => (((exp + 15) as u32) << 10) + round(mant, 13),
        // subnormal: value / 2^-24 = (1.mant · 2^23) · 2^(exp + 1)
        -25..=-15 => round(mant | 0x80_0000, (-(exp + 1)) as u32),
        _ => 0,
    };
    sign | magnitude as u16
}

/// IEEE half precision to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
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
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13), // NaN, made quiet (as F16C does)
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// `out[i] = f16_to_f32(h[i])`: eight at a time with F16C's `vcvtph2ps` where the CPU has it
/// (the same values: widening is exact), one at a time otherwise. Half-precision keys and
/// values of the KV cache are widened so, a block of keys at a time.
pub fn widen_f16(h: &[u16], out: &mut [f32]) {
    assert_eq!(h.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has F16C; the lengths are equal.
        return unsafe { widen_f16_f16c(h, out) };
    }
    out.iter_mut().zip(h).for_each(|(o, &h)| *o = f16_to_f32(h));
}

/// `out[i] = f32_to_f16(x[i].clamp(-65504, 65504))`: rounded to nearest even, a value beyond the
/// largest f16 held at it rather than made infinite (an infinite key would turn every score of
/// its query into NaN); NaN stays NaN. Eight at a time with F16C's `vcvtps2ph` where the CPU
/// has it (which rounds the same way), one at a time otherwise.
pub fn narrow_f16_saturating(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has F16C; the lengths are equal.
        return unsafe { narrow_f16_f16c(x, out) };
    }
    out.iter_mut().zip(x).for_each(|(h, &x)| *h = f32_to_f16_saturating(x));
}

/// The largest finite f16.
const F16_MAX: f32 = 65504.0;

/// One value as [`narrow_f16_saturating`] narrows it, without F16C.
fn f32_to_f16_saturating(x: f32) -> u16 {
    f32_to_f16(x.clamp(-F16_MAX, F16_MAX))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn narrow_f16_f16c(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let (x_chunks, x_tail) = x.as_chunks::<8>();
    let (out_chunks, out_tail) = out.as_chunks_mut::<8>();
    let (low, high) = (_mm256_set1_ps(-F16_MAX), _mm256_set1_ps(F16_MAX));
    for (x, out) in x_chunks.iter().zip(out_chunks) {
        // min/max return their second operand where the first is NaN: NaN lanes put back after
        let x = _mm256_loadu_ps(x.as_ptr());
        let clamped = _mm256_max_ps(_mm256_min_ps(x, high), low);
        let clamped = _mm256_blendv_ps(clamped, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(clamped);
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, h);
    }
    out_tail
        .iter_mut()
        .zip(x_tail)
        .for_each(|(h, &x)| *h = f32_to_f16_saturating(x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(h: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let (h_chunks, h_tail) = h.as_chunks::<8>();
    let (out_chunks, out_tail) = out.as_chunks_mut::<8>();
    for (h, out) in h_chunks.iter().zip(out_chunks) {
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)),
        );
    }
    out_tail.iter_mut().zip(h_tail).for_each(|(o, &h)| *o = f16_to_f32(h));
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

    #[test]
    fn f16_rounding_is_to_nearest_even_and_round_trips() {
        // every finite f16 comes back as itself
        for h in (0u16..=0xffff).filter(|h| h & 0x7c00 != 0x7c00) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
        // halfway between 1 and the next f16 (1 + 2^-10): ties go to the even mantissa
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds past the largest f16, 65504
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7e00, 0x7e00);
        // subnormal halfway cases: 1.5 and 2.5 units of 2^-24
        assert_eq!(f32_to_f16(1.5 * 5.960_464_5e-8), 0x0002);
        assert_eq!(f32_to_f16(2.5 * 5.960_464_5e-8), 0x0002);
    }

    #[test]
    fn widening_a_slice_gives_each_value_as_f16_to_f32_does() {
        // every f16 bit pattern (NaNs compared by bits), in a length that leaves a tail
        let h: Vec<u16> = (0u16..=0xffff).chain([0x3c00, 0x8001, 0x7bff]).collect();
        let mut out = vec![0.0; h.len()];
        widen_f16(&h, &mut out);
        for (&h, &o) in h.iter().zip(&out) {
            assert_eq!(o.to_bits(), f16_to_f32(h).to_bits(), "{h:#x}");
        }
    }

    #[test]
    fn narrowing_a_slice_rounds_as_f32_to_f16_and_saturates() {
        let mut x: Vec<f32> = crate::ops::test_util::random_vec(1001, 4)
            .iter()
            .map(|v| v * 300.0)
            .collect();
        // ties, subnormals, the largest f16 and beyond, infinities
        x.extend([
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            1.5 * 5.960_464_5e-8,
            2.5 * 5.960_464_5e-8,
            1e-9,
        ]);
        x.extend([
            65504.0,
            65519.0,
            65520.0,
            1e6,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
        ]);
        let mut out = vec![0; x.len()];
        narrow_f16_saturating(&x, &mut out);
        for (&x, &h) in x.iter().zip(&out) {
            assert_eq!(h, f32_to_f16(x.clamp(-65504.0, 65504.0)), "{x}");
        }
        assert_eq!(f16_to_f32(out[out.len() - 5]), 65504.0); // 1e6 held at the largest f16
        let mut nan = [0; 9];
        narrow_f16_saturating(&[f32::NAN; 9], &mut nan);
        assert!(nan.iter().all(|&h| f16_to_f32(h).is_nan()));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16(-2.0), 0xc000);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_to_f32(0x3f82), 1.0 + 2.0 / 128.0);
    }
}
