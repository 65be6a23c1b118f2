//! bf16 weights: the top 16 bits of each f32 (8 bits of exponent, 7 of mantissa), half the
//! bytes of f32 to read per token. Products accumulate in f32.
//!
//! Kernels (see [`super::kernel`]): `avx512bf16` rounds the activations to bf16 too and does
//! 32 products per `vdpbf16ps`; `avx2` and `scalar` widen each weight to f32 (a 16-bit shift)
//! and multiply it with the f32 activation.

use super::half::{bf16_to_f32, f32_to_bf16};
use super::Tile;

/// The rows of x [M, K] rounded to bf16, each padded with zeros to `padded` [M, padded].
pub fn round_rows(x: &[f32], k: usize, padded: usize) -> Vec<u16> {
    let mut out = vec![0u16; x.len() / k * padded];
    for (o, x) in out.chunks_exact_mut(padded).zip(x.chunks_exact(k)) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = f32_to_bf16(x));
    }
    out
}

/// Weights back to f32, `out` [n] from the first n of `row`.
pub fn dequantize_row(row: &[u16], out: &mut [f32]) {
    out.iter_mut().zip(row).for_each(|(o, &b)| *o = bf16_to_f32(b));
}

/// Plain Rust, in lanes the compiler vectorises.
pub struct Scalar;

const LANES: usize = 16;

impl<'a> Tile<'a> for Scalar {
    type W = u16;
    type X = &'a [f32];
    type Out = f32;

    fn tile<const R: usize, const S: usize>(&self, w: [&[u16]; S], x: [&'a [f32]; R]) -> [[f32; S]; R] {
        let mut acc = [[[0.0f32; LANES]; S]; R];
        for i in (0..x[0].len()).step_by(LANES) {
            for (acc, x) in acc.iter_mut().zip(&x) {
                let x = &x[i..i + LANES];
                for (acc, w) in acc.iter_mut().zip(&w) {
                    let w = &w[i..i + LANES];
                    for ((a, &w), &x) in acc.iter_mut().zip(w).zip(x) {
                        *a += bf16_to_f32(w) * x;
                    }
                }
            }
        }
        acc.map(|acc| acc.map(|lanes| lanes.iter().sum()))
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::{lane_sums, Tile};
    use std::arch::x86_64::*;

    /// AVX2 + FMA: 8 weights widened to f32 per step.
    pub struct Avx2;

    /// AVX512-BF16: 32 bf16 products per `vdpbf16ps`.
    pub struct Avx512;

    impl<'a> Tile<'a> for Avx2 {
        type W = u16;
        type X = &'a [f32];
        type Out = f32;

        fn tile<const R: usize, const S: usize>(&self, w: [&[u16]; S], x: [&'a [f32]; R]) -> [[f32; S]; R] {
            let n = x[0].len();
            assert!(n.is_multiple_of(8) && w.iter().all(|w| w.len() == n) && x.iter().all(|x| x.len() == n));
            // SAFETY: the kernel is only chosen where the CPU has AVX2 and FMA (Kernels), and
            // every row holds n values, a multiple of the 8 read per step.
            unsafe { avx2_tile(w, x) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_tile<const R: usize, const S: usize>(w: [&[u16]; S], x: [&[f32]; R]) -> [[f32; S]; R] {
        let mut acc = [[_mm256_setzero_ps(); S]; R];
        for i in (0..x[0].len()).step_by(8) {
            let mut wv = [_mm256_setzero_ps(); S];
            for s in 0..S {
                // bf16 → f32: the 16 bits become the top half of a 32-bit lane
                let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(w[s].as_ptr().add(i) as *const __m128i));
                wv[s] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits));
            }
            for r in 0..R {
                let xv = _mm256_loadu_ps(x[r].as_ptr().add(i));
                for s in 0..S {
                    acc[r][s] = _mm256_fmadd_ps(wv[s], xv, acc[r][s]);
                }
            }
        }
        lane_sums(&acc)
    }

    impl<'a> Tile<'a> for Avx512 {
        type W = u16;
        type X = &'a [u16];
        type Out = f32;

        fn tile<const R: usize, const S: usize>(&self, w: [&[u16]; S], x: [&'a [u16]; R]) -> [[f32; S]; R] {
            let n = x[0].len();
            assert!(n.is_multiple_of(32) && w.iter().all(|w| w.len() == n) && x.iter().all(|x| x.len() == n));
            // SAFETY: the kernel is only chosen where the CPU has AVX512F and AVX512-BF16, and
            // every row holds n values, a multiple of the 32 read per step.
            unsafe { avx512_tile(w, x) }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn avx512_tile<const R: usize, const S: usize>(w: [&[u16]; S], x: [&[u16]; R]) -> [[f32; S]; R] {
        let load = |p: *const u16| -> __m512bh { std::mem::transmute(_mm512_loadu_si512(p as *const _)) };
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        for i in (0..x[0].len()).step_by(32) {
            let mut wv: [__m512bh; S] = std::mem::zeroed();
            for s in 0..S {
                wv[s] = load(w[s].as_ptr().add(i));
            }
            for r in 0..R {
                let xv = load(x[r].as_ptr().add(i));
                for s in 0..S {
                    // acc[j] += w[2j]·x[2j] + w[2j+1]·x[2j+1], in f32
                    acc[r][s] = _mm512_dpbf16_ps(acc[r][s], wv[s], xv);
                }
            }
        }
        let mut out = [[0.0; S]; R];
        for r in 0..R {
            for s in 0..S {
                out[r][s] = _mm512_reduce_add_ps(acc[r][s]);
            }
        }
        out
    }
}
