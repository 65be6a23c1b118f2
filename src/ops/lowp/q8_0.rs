//! q8_0 weights, llama.cpp's layout: blocks of 32 weights, each an f16 scale
//! `d = max|w| / 127` and 32 int8 `q = round(w / d)`, so `w ≈ d·q`: 34 bytes per 32 weights.
//!
//! A product quantizes the activations the same way on the fly (one f32 scale per block of 32),
//! then each pair of blocks is one integer dot product:
//! `Σ_i w_i·x_i ≈ d_w·d_x · Σ_i q_w,i·q_x,i`, the sum exact in i32, the scaling and the sum over
//! blocks in f32.
//!
//! Kernels (see [`super::kernel`]): `avx512vnni` and `avxvnni` use `vpdpbusd`, which multiplies
//! unsigned by signed bytes: the weights get 128 added (`q_w + 128` in 1..=255) and the sum is
//! corrected by `-128 · Σ q_x`, a number per activation block computed once per product.
//! `avx512vnni` reads a weight row's blocks four at a time, two to a 512-bit register, and
//! converts and applies their four scales in one vector (a block at a time, the scalar scale
//! work was half the kernel's instructions); `avxvnni` goes a block at a time on 256 bits. `avx2`
//! multiplies |q_w| by q_x·sign(q_w) (`vpmaddubsw`, pairs into i16, which cannot overflow with
//! |q| ≤ 127). `scalar` is plain Rust.

use super::half::{f16_to_f32, f32_to_f16};
use super::{Tile, BLOCK};

/// 32 weights: `w_i ≈ d · qs[i]`, d an f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; BLOCK],
}

/// The scale of a block whose largest magnitude is `amax`, and its inverse (0 for a block of zeros).
fn scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// `round(x · inverse)` (halves away from zero, as `f32::round`) into `qs`, clamped to ±127 (an
/// f16 scale may round below max|x|/127); NaN gives 0. Written as `trunc(v ± (0.5 - 2⁻²⁵))`,
/// with the float just below a half (LLVM's own lowering of round, exact for every f32), and the
/// integer r read from the bits of `r + 1.5·2²³` (those of 1.5·2²³, plus r), so that each step
/// vectorizes (`trunc` one instruction from SSE4.1 on; `.cargo/config.toml` builds for the
/// machine): with a saturating cast per value and a serial abs-max, 3072 activations took 6.15
/// µs to quantize, now 1.4-1.5 µs (Zen 5).
fn quantize_into(qs: &mut [i8; BLOCK], x: &[f32; BLOCK], inverse: f32) {
    const BELOW_HALF: f32 = 0.5 - 1.0 / (1 << 25) as f32;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: the floats from 2²³ to 2²⁴ are the integers
    for (q, &x) in qs.iter_mut().zip(x) {
        let v = x * inverse;
        let r = (v + BELOW_HALF.copysign(v)).trunc().clamp(-127.0, 127.0);
        let r = if r.is_nan() { 0.0 } else { r };
        *q = ((r + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8;
    }
}

/// max |x| over a block, NaN ignored (as `f32::max` does), in independent lanes
/// ([`crate::ops::fold_lanes`]) rather than one chain of 32 dependent maxima.
fn abs_max(x: &[f32; BLOCK]) -> f32 {
    crate::ops::fold_lanes(x, 0.0, |m, v| m.max(v.abs()))
}

/// One row of weights, `x` [32·nb] (zero-padded), into `out` [nb].
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
    for (block, x) in out.iter_mut().zip(x.as_chunks::<BLOCK>().0) {
        // quantize with the scale as stored, so that d·q is as close to w as it can be
        block.d = f32_to_f16(scale(abs_max(x)).0);
        quantize_into(&mut block.qs, x, scale(127.0 * f16_to_f32(block.d)).1);
    }
}

/// One row of weights back to f32, `out` [32·nb].
pub fn dequantize_row(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = f16_to_f32(block.d);
        out.iter_mut().zip(&block.qs).for_each(|(o, &q)| *o = d * q as f32);
    }
}

/// Activations x [M, K] quantized by blocks of 32 (rows zero-padded to `padded` = 32·nb).
pub struct Activations {
    qs: Vec<i8>,         // [M, padded]
    d: Vec<f32>,         // [M, nb] the f32 scale of each block
    corr: Vec<[i32; 8]>, // [M, nb] (-128 · Σ qs of the block, 0, ..., 0): the vpdpbusd correction
    padded: usize,
}

/// One row of [`Activations`], as the kernels read it.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    corr: &'a [[i32; 8]],
}

impl Activations {
    pub fn quantize(x: &[f32], k: usize, padded: usize) -> Self {
        let (m, nb) = (x.len() / k, padded / BLOCK);
        let mut acts = Activations {
            qs: vec![0; m * padded],
            d: vec![0.0; m * nb],
            corr: vec![[0; 8]; m * nb],
            padded,
        };
        let mut row = vec![0.0f32; padded];
        for (i, x) in x.chunks_exact(k).enumerate() {
            row[..k].copy_from_slice(x);
            let qs = acts.qs[i * padded..(i + 1) * padded].as_chunks_mut::<BLOCK>().0;
            for (b, (qs, x)) in qs.iter_mut().zip(row.as_chunks::<BLOCK>().0).enumerate() {
                let (d, inverse) = scale(abs_max(x));
                quantize_into(qs, x, inverse);
                acts.d[i * nb + b] = d;
                acts.corr[i * nb + b][0] = -128 * qs.iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        acts
    }

    pub fn rows(&self) -> Vec<Row<'_>> {
        let nb = self.padded / BLOCK;
        (0..self.d.len() / nb.max(1))
            .map(|i| Row {
                qs: &self.qs[i * self.padded..(i + 1) * self.padded],
                d: &self.d[i * nb..(i + 1) * nb],
                corr: &self.corr[i * nb..(i + 1) * nb],
            })
            .collect()
    }
}

impl Row<'_> {
    /// Block b: its 32 int8, its scale and its `vpdpbusd` correction.
    pub fn block(&self, b: usize) -> (&[i8], f32, i32) {
        (&self.qs[b * BLOCK..(b + 1) * BLOCK], self.d[b], self.corr[b][0])
    }
}

/// Checks that S weight rows and R activation rows have the same number of blocks.
fn check_lengths<const R: usize, const S: usize>(w: &[&[BlockQ8_0]; S], x: &[Row; R]) {
    let nb = x[0].d.len();
    assert!(
        w.iter().all(|w| w.len() == nb)
            && x.iter()
                .all(|x| x.d.len() == nb && x.corr.len() == nb && x.qs.len() == nb * BLOCK)
    );
}

/// Plain Rust.
pub struct Scalar;

impl<'a> Tile<'a> for Scalar {
    type W = BlockQ8_0;
    type X = Row<'a>;

    fn tile<const R: usize, const S: usize>(&self, w: [&[BlockQ8_0]; S], x: [Row<'a>; R]) -> [[f32; S]; R] {
        check_lengths(&w, &x);
        let mut acc = [[0.0f32; S]; R];
        for b in 0..x[0].d.len() {
            for (acc, x) in acc.iter_mut().zip(&x) {
                let qx = &x.qs[b * BLOCK..(b + 1) * BLOCK];
                for (acc, w) in acc.iter_mut().zip(&w) {
                    let dot: i32 = w[b].qs.iter().zip(qx).map(|(&a, &b)| a as i32 * b as i32).sum();
                    *acc += dot as f32 * (f16_to_f32(w[b].d) * x.d[b]);
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::f16_scale;
#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, AvxVnni, Vnni512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::{lane_sums, Tile};
    use super::{check_lengths, BlockQ8_0, Row, BLOCK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The f16 scale of a block as f32 (F16C).
    #[target_feature(enable = "f16c")]
    #[inline]
    pub unsafe fn f16_scale(d: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32)))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load_block(p: *const i8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    /// AVX2: `vpmaddubsw` + `vpmaddwd`.
    pub struct Avx2;

    impl<'a> Tile<'a> for Avx2 {
        type W = BlockQ8_0;
        type X = Row<'a>;

        fn tile<const R: usize, const S: usize>(&self, w: [&[BlockQ8_0]; S], x: [Row<'a>; R]) -> [[f32; S]; R] {
            check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has AVX2, FMA and F16C (Kernels); lengths checked.
            unsafe { avx2_tile(w, x) }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_tile<const R: usize, const S: usize>(w: [&[BlockQ8_0]; S], x: [Row; R]) -> [[f32; S]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); S]; R];
        for b in 0..x[0].d.len() {
            let mut wq = [_mm256_setzero_si256(); S];
            let mut dw = [0.0f32; S];
            for s in 0..S {
                let block = w[s].get_unchecked(b);
                wq[s] = load_block(block.qs.as_ptr());
                dw[s] = f16_scale(block.d);
            }
            for r in 0..R {
                let xq = load_block(x[r].qs.as_ptr().add(b * BLOCK));
                let dx = *x[r].d.get_unchecked(b);
                for s in 0..S {
                    // |w| · (x · sign(w)) = w · x, in pairs (i16), then in quads (i32)
                    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq[s], wq[s]), _mm256_sign_epi8(xq, wq[s]));
                    let quads = _mm256_madd_epi16(pairs, ones);
                    acc[r][s] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(quads), _mm256_set1_ps(dw[s] * dx), acc[r][s]);
                }
            }
        }
        lane_sums(&acc)
    }

    /// The 256-bit VNNI loop, two encodings of `vpdpbusd` (`$dp`), each under its features:
    /// `$blocks(w, x, blocks)` sums blocks `blocks` of each tile's dot products into 8 lanes.
    macro_rules! vnni_blocks {
        ($blocks:ident, $features:literal, $dp:ident) => {
            #[target_feature(enable = $features)]
            unsafe fn $blocks<const R: usize, const S: usize>(
                w: [&[BlockQ8_0]; S],
                x: [Row; R],
                blocks: Range<usize>,
            ) -> [[__m256; S]; R] {
                let flip = _mm256_set1_epi8(-128);
                let mut acc = [[_mm256_setzero_ps(); S]; R];
                for b in blocks {
                    let mut wu = [_mm256_setzero_si256(); S];
                    let mut dw = [0.0f32; S];
                    for s in 0..S {
                        let block = w[s].get_unchecked(b);
                        wu[s] = _mm256_xor_si256(load_block(block.qs.as_ptr()), flip); // q_w + 128 as u8
                        dw[s] = f16_scale(block.d);
                    }
                    for r in 0..R {
                        let xq = load_block(x[r].qs.as_ptr().add(b * BLOCK));
                        let corr = _mm256_loadu_si256(x[r].corr.as_ptr().add(b) as *const __m256i);
                        let dx = *x[r].d.get_unchecked(b);
                        for s in 0..S {
                            // corr + Σ (q_w + 128)·q_x = Σ q_w·q_x over the 8 lanes
                            let dot = $dp(corr, wu[s], xq);
                            acc[r][s] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw[s] * dx), acc[r][s]);
                        }
                    }
                }
                acc
            }
        };
    }

    vnni_blocks!(
        vnni256_blocks,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        _mm256_dpbusd_epi32
    );
    vnni_blocks!(avxvnni_blocks, "avx2,fma,f16c,avxvnni", _mm256_dpbusd_avx_epi32);

    /// AVX-VNNI `vpdpbusd` (VEX encoded), a block at a time.
    pub struct AvxVnni;

    impl<'a> Tile<'a> for AvxVnni {
        type W = BlockQ8_0;
        type X = Row<'a>;

        fn tile<const R: usize, const S: usize>(&self, w: [&[BlockQ8_0]; S], x: [Row<'a>; R]) -> [[f32; S]; R] {
            check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has these features (Kernels); lengths checked.
            unsafe { lane_sums(&avxvnni_blocks(w, x, 0..x[0].d.len())) }
        }
    }

    /// AVX512-VNNI `vpdpbusd` on 512-bit registers: a weight row's blocks four at a time (136
    /// bytes), two to a register, so that the per-block work (the f16 scale, the scaling of the
    /// i32 sums) is done in vectors, not one block at a time; the last nb mod 4 blocks on 256
    /// bits. With GPT-2's weights in cache, products of 1 and 4 rows ran 1.14x and 1.30x faster
    /// than a block at a time (Zen 5, 2 threads); from memory both read at the memory's speed.
    pub struct Vnni512;

    impl<'a> Tile<'a> for Vnni512 {
        type W = BlockQ8_0;
        type X = Row<'a>;

        fn tile<const R: usize, const S: usize>(&self, w: [&[BlockQ8_0]; S], x: [Row<'a>; R]) -> [[f32; S]; R] {
            check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has these features (Kernels); lengths checked.
            unsafe { vnni512_tile(w, x) }
        }
    }

    /// Blocks a step of the 512-bit loop reads from each weight row.
    const GROUP: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn vnni512_tile<const R: usize, const S: usize>(w: [&[BlockQ8_0]; S], x: [Row; R]) -> [[f32; S]; R] {
        const SIZE: usize = std::mem::size_of::<BlockQ8_0>(); // 34: the scale d, then 32 q
        let nb = x[0].d.len();
        let groups = nb / GROUP;
        let flip = _mm512_set1_epi8(-128);
        // The group's 4 scales are its 16-bit words 0, 17, 34 and 51 (bytes 0, 34, 68, 102).
        let scale_words = _mm512_setr_epi32(17 << 16, (51 << 16) | 34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        // Spread the scales d_w·d_x of blocks (0, 1) or (2, 3) over the halves of a register.
        let halves = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        for g in 0..groups {
            let b = g * GROUP;
            let mut d_w = [_mm_setzero_ps(); S];
            let mut wu = [[_mm512_setzero_si512(); 2]; S];
            for s in 0..S {
                let p = w[s].as_ptr().add(b) as *const u8;
                // only the scales' words: whole loads would let LLVM build the q from them by shifts
                let head = _mm512_maskz_loadu_epi16(1 | 1 << 17, p as *const _);
                let next = _mm512_maskz_loadu_epi16(1 << 2 | 1 << 19, p.add(64) as *const _);
                d_w[s] = _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
                    head,
                    scale_words,
                    next,
                )));
                for (h, pair_u) in wu[s].iter_mut().enumerate() {
                    let q = p.add(2 * h * SIZE + 2); // the q of blocks 2h and 2h + 1
                    let pair = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(load_block(q as _)),
                        load_block(q.add(SIZE) as _),
                    );
                    *pair_u = _mm512_xor_si512(pair, flip); // q_w + 128 as u8
                }
            }
            for r in 0..R {
                let d_x = _mm_loadu_ps(x[r].d.as_ptr().add(b));
                let scales: [__m512; S] = std::array::from_fn(|s| _mm512_castps128_ps512(_mm_mul_ps(d_w[s], d_x)));
                for (h, spread) in halves.iter().enumerate() {
                    let xq = _mm512_loadu_si512(x[r].qs.as_ptr().add((b + 2 * h) * BLOCK) as *const _);
                    let corr = _mm512_loadu_si512(x[r].corr.as_ptr().add(b + 2 * h) as *const _);
                    for s in 0..S {
                        // corr + Σ (q_w + 128)·q_x = Σ q_w·q_x over each half's 8 lanes
                        let dot = _mm512_dpbusd_epi32(corr, wu[s][h], xq);
                        let scale = _mm512_permutexvar_ps(*spread, scales[s]);
                        acc[r][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][s]);
                    }
                }
            }
        }
        let mut out = lane_sums(&vnni256_blocks(w, x, groups * GROUP..nb));
        for (out, acc) in out.iter_mut().zip(&acc) {
            for (out, &acc) in out.iter_mut().zip(acc) {
                *out += _mm512_reduce_add_ps(acc);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizing_rounds_as_f32_round_does() {
        // Every half from -127.5 to 127.5 and the floats on either side of it, values beyond
        // ±127 up to the infinities, NaN (to 0), and a spread of others.
        let mut values = vec![
            f32::NAN,
            0.0,
            -0.0,
            300.0,
            -300.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
        ];
        for k in -128..128 {
            let half = k as f32 + 0.5;
            let bits = half.to_bits();
            values.extend([half, f32::from_bits(bits - 1), f32::from_bits(bits + 1)]);
        }
        values.extend((0..10_000).map(|i| (i as f32 * 0.0377).sin() * 130.0));
        for chunk in values.chunks(BLOCK) {
            let mut x = [0.0f32; BLOCK];
            x[..chunk.len()].copy_from_slice(chunk);
            let mut qs = [0i8; BLOCK];
            quantize_into(&mut qs, &x, 1.0);
            for (&q, v) in qs.iter().zip(x) {
                assert_eq!(q, v.round().clamp(-127.0, 127.0) as i8, "{v}");
            }
        }
    }

    #[test]
    fn a_blocks_abs_max_is_the_largest_magnitude_nan_ignored() {
        // The largest magnitude in each of the 8 lanes and in none, at the start, middle and
        // end of a lane's run, among NaNs, infinities and signed zeros.
        let specials = [f32::NAN, -0.0, f32::NEG_INFINITY, f32::INFINITY, -1e-30];
        for lane in 0..=BLOCK {
            for special in specials {
                let mut x: [f32; BLOCK] = std::array::from_fn(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25);
                if lane < BLOCK {
                    x[lane] = -9.5;
                    x[(lane + 11) % BLOCK] = special;
                }
                let expected = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert_eq!(abs_max(&x).to_bits(), expected.to_bits(), "lane {lane}, {special}");
            }
        }
        assert_eq!(abs_max(&[f32::NAN; BLOCK]), 0.0);
    }
}
