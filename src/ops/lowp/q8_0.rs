//! q8_0 weights, llama.cpp's quantization: blocks of 32 weights, each an f16 scale
//! `d = max|w| / 127` and 32 int8 `q = round(w / d)`, so `w ≈ d·q`: 34 bytes per 32 weights.
//!
//! A product quantizes the activations the same way on the fly (one f32 scale per block of 32),
//! then each pair of blocks is one integer dot product:
//! `Σ_i w_i·x_i ≈ d_w·d_x · Σ_i q_w,i·q_x,i`, the sum exact in i32, the scaling and the sum over
//! blocks in f32.
//!
//! The blocks are stored 16 weight rows to a group ([`Groups`]), interleaved by quads: a line
//! (64 bytes) holds one quad `q_w[32b + 4q .. 32b + 4q + 4]` of each of the group's 16 rows in
//! turn, and each pair of blocks starts with a line of their 32 f16 scales:
//!
//! ```text
//!   group g (rows 16g..16g + 16), nb blocks a row, for each pair of blocks (2p, 2p + 1):
//!     scales  [2 blocks][16 rows] f16              1 line
//!     quads   [2 blocks][8 quads][16 rows][4 int8]  16 lines
//!   (a last block alone: its scales in half a line, then its 8 lines)
//! ```
//!
//! The scales lie among the quads they scale, so a group is read in one sequential stream.
//! Every block keeps its 34 bytes (rows past N, to fill the last group, are zeros, and a last
//! block alone leaves half a line of scales empty), in the spirit of the layouts llama.cpp's CPU
//! backend repacks q8_0 into for its own kernels. Then one 512-bit register holds a quad of 16
//! rows, and one `vpdpbusd` of it with an activation quad broadcast to every lane adds 64
//! products into 16 lanes, one lane per output: a block of 16 rows is 8 of them, one conversion
//! of its 16 scales (`vcvtph2ps`) and one scaled add, and nothing is added across lanes. Stored
//! a row of blocks at a time (as llama.cpp's files hold them), each block's 32 int8 lay next to
//! its scale, and the kernel spent as many instructions gathering scales and spreading them over
//! lanes as multiplying: a 768 x 768 product from cache read 60 GB/s on one Zen 5 core, now 134
//! GB/s, well past the 40-45 GB/s a core gets from memory at its fastest.
//!
//! Kernels (see [`super::kernel`]): `avx512vnni` and `avxvnni` use `vpdpbusd`, which multiplies
//! unsigned by signed bytes: the weights get 128 added (`q_w + 128` in 1..=255, a flip of each
//! byte's top bit) and the sum is corrected by `-128 · Σ q_x`, a number per activation block
//! computed once per product. `avxvnni` (256 bits) takes a group as two halves of 8 rows.
//! `avx2` multiplies |q_w| by q_x·sign(q_w) (`vpmaddubsw`, pairs into i16, which cannot
//! overflow with |q| ≤ 127, then `vpmaddwd` into i32). `amx` serves prompts: `tdpbssd` takes a
//! block's 8 lines of a group, as stored, as its right tile (the layout AMX wants) against 16
//! prompt rows. `scalar` is plain Rust.

use super::half::{f16_to_f32, f32_to_f16};
use super::{Tile, BLOCK};
use rayon::prelude::*;

/// Weight rows in a group.
pub const GROUP: usize = 16;
/// Quads (4 int8) in a block.
const QUADS: usize = BLOCK / 4;
/// Bytes in a line: a quad of each row of a group.
const LINE: usize = 4 * GROUP;

/// 64 bytes of a group, on a cache line of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Line(pub [u8; LINE]);

/// 32 weights: `w_i ≈ d · qs[i]`, d an f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct BlockQ8_0 {
    d: u16,
    qs: [i8; BLOCK],
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
fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
    for (block, x) in out.iter_mut().zip(x.as_chunks::<BLOCK>().0) {
        // quantize with the scale as stored, so that d·q is as close to w as it can be
        block.d = f32_to_f16(scale(abs_max(x)).0);
        quantize_into(&mut block.qs, x, scale(127.0 * f16_to_f32(block.d)).1);
    }
}

/// A q8_0 matrix of N rows of nb blocks, stored in ⌈N/16⌉ groups of 16 rows (rows past N zero):
/// the layout of the module's documentation.
pub struct Groups {
    lines: Vec<Line>,
    blocks: usize,
}

impl Groups {
    /// `n` rows of `blocks` blocks of zeros.
    pub fn zeros(n: usize, blocks: usize) -> Self {
        Groups {
            lines: vec![Line([0; LINE]); n.div_ceil(GROUP) * lines_per_group(blocks)],
            blocks,
        }
    }

    /// nb, the blocks of a row.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The stored lines, group after group.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Quantizes rows `first..` (`first` a multiple of 16) from `x` [rows, K] (K ≤ 32·nb),
    /// the groups in parallel.
    pub fn quantize_rows(&mut self, first: usize, x: &[f32], k: usize) {
        assert!(first.is_multiple_of(GROUP) && k <= self.blocks * BLOCK);
        let (nb, per_group) = (self.blocks, lines_per_group(self.blocks));
        self.lines[first / GROUP * per_group..]
            .par_chunks_mut(per_group)
            .zip(x.par_chunks(GROUP * k))
            .for_each_init(
                || (vec![0.0f32; nb * BLOCK], vec![BlockQ8_0 { d: 0, qs: [0; BLOCK] }; nb]),
                |(row, blocks), (group, x)| {
                    for (l, x) in x.chunks_exact(k).enumerate() {
                        row[..k].copy_from_slice(x);
                        quantize_row(row, blocks);
                        for (b, block) in blocks.iter().enumerate() {
                            for (q, quad) in block.qs.chunks_exact(4).enumerate() {
                                let line = &mut group[quad_line(b, q)].0[4 * l..4 * l + 4];
                                line.iter_mut().zip(quad).for_each(|(w, &q)| *w = q as u8);
                            }
                            set_scale(group, b, l, block.d);
                        }
                    }
                },
            );
    }

    /// The first `out.len()` (at most 32·nb) weights of row i, back to f32.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let per_group = lines_per_group(self.blocks);
        assert!(out.len() <= self.blocks * BLOCK);
        let group = &self.lines[i / GROUP * per_group..][..per_group];
        let l = i % GROUP;
        for (b, out) in out.chunks_mut(BLOCK).enumerate() {
            let d = f16_to_f32(scale_of(group, b, l));
            for (q, out) in out.chunks_mut(4).enumerate() {
                let quad = &group[quad_line(b, q)].0[4 * l..4 * l + 4];
                out.iter_mut().zip(quad).for_each(|(o, &q)| *o = d * q as i8 as f32);
            }
        }
    }
}

/// Lines of a group of rows of nb blocks: 17 a pair of blocks (a line of scales, 8 lines of
/// quads each), 9 for a last block alone.
pub fn lines_per_group(blocks: usize) -> usize {
    (2 * QUADS + 1) * (blocks / 2) + (QUADS + 1) * (blocks % 2)
}

/// The line of a group holding quad q of block b (of each of its rows).
fn quad_line(b: usize, q: usize) -> usize {
    (2 * QUADS + 1) * (b / 2) + 1 + QUADS * (b % 2) + q
}

/// Where the scale of row l's block b lies in a group: (line, byte).
fn scale_at(b: usize, l: usize) -> (usize, usize) {
    ((2 * QUADS + 1) * (b / 2), 2 * (GROUP * (b % 2) + l))
}

fn scale_of(group: &[Line], b: usize, l: usize) -> u16 {
    let (line, byte) = scale_at(b, l);
    u16::from_le_bytes([group[line].0[byte], group[line].0[byte + 1]])
}

fn set_scale(group: &mut [Line], b: usize, l: usize, d: u16) {
    let (line, byte) = scale_at(b, l);
    group[line].0[byte..byte + 2].copy_from_slice(&d.to_le_bytes());
}

/// Activations x [M, K] quantized by blocks of 32 (rows zero-padded to `padded` = 32·nb).
pub struct Activations {
    qs: Vec<i8>,    // [M', padded]
    d: Vec<f32>,    // [M', nb] the f32 scale of each block
    corr: Vec<i32>, // [M', nb] -128 · Σ qs of the block: the vpdpbusd correction
    rows: usize,    // M
    padded: usize,
}

/// One row of [`Activations`], as the kernels read it.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    corr: &'a [i32],
}

impl Activations {
    /// The M rows of x [M, K], and rows of zeros after them up to a multiple of `row_multiple`
    /// (so that AMX tiles of 16 rows can read past M).
    pub fn quantize(x: &[f32], k: usize, padded: usize, row_multiple: usize) -> Self {
        let (m, nb) = (x.len() / k, padded / BLOCK);
        let stored = m.div_ceil(row_multiple) * row_multiple;
        let mut acts = Activations {
            qs: vec![0; stored * padded],
            d: vec![0.0; stored * nb],
            corr: vec![0; stored * nb],
            rows: m,
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
                acts.corr[i * nb + b] = -128 * qs.iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        acts
    }

    /// The M rows.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let nb = self.padded / BLOCK;
        (0..self.rows)
            .map(|i| Row {
                qs: &self.qs[i * self.padded..(i + 1) * self.padded],
                d: &self.d[i * nb..(i + 1) * nb],
                corr: &self.corr[i * nb..(i + 1) * nb],
            })
            .collect()
    }
}

/// Checks that S groups and R activation rows have the same number of blocks.
fn check_lengths<const R: usize, const S: usize>(w: &[&[Line]; S], x: &[Row; R]) -> usize {
    let nb = x[0].d.len();
    assert!(
        w.iter().all(|w| w.len() == lines_per_group(nb))
            && x.iter()
                .all(|x| x.d.len() == nb && x.corr.len() == nb && x.qs.len() == nb * BLOCK)
    );
    nb
}

/// Plain Rust.
pub struct Scalar;

impl<'a> Tile<'a> for Scalar {
    type W = Line;
    type X = Row<'a>;
    type Out = [f32; GROUP];

    fn tile<const R: usize, const S: usize>(&self, w: [&[Line]; S], x: [Row<'a>; R]) -> [[[f32; GROUP]; S]; R] {
        let nb = check_lengths(&w, &x);
        let mut acc = [[[0.0f32; GROUP]; S]; R];
        for b in 0..nb {
            for (acc, x) in acc.iter_mut().zip(&x) {
                for (acc, group) in acc.iter_mut().zip(&w) {
                    let mut dots = [0i32; GROUP];
                    for (q, line) in group[quad_line(b, 0)..quad_line(b, QUADS)].iter().enumerate() {
                        let qx = &x.qs[b * BLOCK + 4 * q..][..4];
                        for (dot, quad) in dots.iter_mut().zip(line.0.chunks_exact(4)) {
                            *dot += quad
                                .iter()
                                .zip(qx)
                                .map(|(&w, &x)| w as i8 as i32 * x as i32)
                                .sum::<i32>();
                        }
                    }
                    for (l, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                        *acc += dot as f32 * (f16_to_f32(scale_of(group, b, l)) * x.d[b]);
                    }
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{amx_groups, Avx2, AvxVnni, Vnni512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::Tile;
    use super::{check_lengths, lines_per_group, quad_line, scale_at, Activations, Line, Row, BLOCK, GROUP, QUADS};
    use crate::ops::amx;
    use std::arch::x86_64::*;

    /// The 4 int8 of quad q of block b of an activation row, as one i32.
    #[inline(always)]
    unsafe fn x_quad(x: &Row, b: usize, q: usize) -> i32 {
        std::ptr::read_unaligned(x.qs.as_ptr().add(b * BLOCK + 4 * q) as *const i32)
    }

    /// The 16 f16 scales of block b of a group, as stored.
    #[inline(always)]
    unsafe fn scales_ptr(group: &[Line], b: usize) -> *const u8 {
        let (line, byte) = scale_at(b, 0);
        group.as_ptr().add(line).cast::<u8>().add(byte)
    }

    /// AVX512-VNNI on 512 bits: a line (one quad of 16 rows) per `vpdpbusd`.
    pub struct Vnni512;

    impl<'a> Tile<'a> for Vnni512 {
        type W = Line;
        type X = Row<'a>;
        type Out = [f32; GROUP];

        fn tile<const R: usize, const S: usize>(&self, w: [&[Line]; S], x: [Row<'a>; R]) -> [[[f32; GROUP]; S]; R] {
            let nb = check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has these features (Kernels); lengths checked.
            unsafe { vnni512_tile(w, x, nb) }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn vnni512_tile<const R: usize, const S: usize>(
        w: [&[Line]; S],
        x: [Row; R],
        nb: usize,
    ) -> [[[f32; GROUP]; S]; R] {
        let flip = _mm512_set1_epi8(-128);
        let mut sums = [[_mm512_setzero_ps(); S]; R];
        for b in 0..nb {
            // -128 · Σ q_x, then + Σ (q_w + 128)·q_x: Σ q_w·q_x in each row's lane
            let mut dots: [[__m512i; S]; R] =
                std::array::from_fn(|r| [_mm512_set1_epi32(*x[r].corr.get_unchecked(b)); S]);
            for q in 0..QUADS {
                let lines: [__m512i; S] = std::array::from_fn(|s| {
                    _mm512_xor_si512(_mm512_load_si512(w[s].as_ptr().add(quad_line(b, q)) as *const _), flip)
                });
                for r in 0..R {
                    let quad = _mm512_set1_epi32(x_quad(&x[r], b, q));
                    for s in 0..S {
                        dots[r][s] = _mm512_dpbusd_epi32(dots[r][s], lines[s], quad);
                    }
                }
            }
            let d_w: [__m512; S] =
                std::array::from_fn(|s| _mm512_cvtph_ps(_mm256_loadu_si256(scales_ptr(w[s], b) as *const _)));
            for r in 0..R {
                let d_x = _mm512_set1_ps(*x[r].d.get_unchecked(b));
                for s in 0..S {
                    sums[r][s] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r][s]), _mm512_mul_ps(d_w[s], d_x), sums[r][s]);
                }
            }
        }
        let mut out = [[[0.0; GROUP]; S]; R];
        for (out, sums) in out.iter_mut().zip(&sums) {
            for (out, &sum) in out.iter_mut().zip(sums) {
                _mm512_storeu_ps(out.as_mut_ptr(), sum);
            }
        }
        out
    }

    /// The 256-bit kernels: `$tile` computes a tile on two halves of 8 rows per group (a
    /// prompt's tiles of 4 rows x 2 groups hold more sums than AVX2's 16 registers, yet ran
    /// faster than 4 x 1 or 2 x 2: 7.0-7.2 against 8.5-8.8 or 8.0-8.2 ms for a prompt of 16 with
    /// `avxvnni`, 10.4-10.7 against 11.1-11.4 with `avx2`, Zen 5), `$dot`
    /// adding the products of a half-line of weights (`$w`, as `$load` makes it of the loaded
    /// `$line`) and an activation quad in every lane (`$x`) into i32 sums (`$acc`, which start
    /// from `$start` for a block whose activation correction is `$corr`).
    macro_rules! tile256 {
        ($tile:ident, $features:literal,
         load: |$line:ident| $load:expr,
         start: |$corr:ident| $start:expr,
         dot: |$acc:ident, $w:ident, $x:ident| $dot:expr) => {
            #[target_feature(enable = $features)]
            unsafe fn $tile<const R: usize, const S: usize>(
                w: [&[Line]; S],
                x: [Row; R],
                nb: usize,
            ) -> [[[f32; GROUP]; S]; R] {
                let mut sums = [[[_mm256_setzero_ps(); 2]; S]; R];
                for b in 0..nb {
                    let mut dots: [[[__m256i; 2]; S]; R] = std::array::from_fn(|r| {
                        let $corr = *x[r].corr.get_unchecked(b);
                        [[$start; 2]; S]
                    });
                    for q in 0..QUADS {
                        let lines: [[__m256i; 2]; S] = std::array::from_fn(|s| {
                            let line = w[s].as_ptr().add(quad_line(b, q)) as *const __m256i;
                            [0, 1].map(|h| {
                                let $line = _mm256_load_si256(line.add(h));
                                $load
                            })
                        });
                        for r in 0..R {
                            let $x = _mm256_set1_epi32(x_quad(&x[r], b, q));
                            for s in 0..S {
                                for h in 0..2 {
                                    let ($acc, $w) = (dots[r][s][h], lines[s][h]);
                                    dots[r][s][h] = $dot;
                                }
                            }
                        }
                    }
                    for s in 0..S {
                        let d_w = widen_scales(scales_ptr(w[s], b));
                        for r in 0..R {
                            let d_x = _mm256_set1_ps(*x[r].d.get_unchecked(b));
                            for h in 0..2 {
                                let scale = _mm256_mul_ps(d_w[h], d_x);
                                sums[r][s][h] =
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[r][s][h]), scale, sums[r][s][h]);
                            }
                        }
                    }
                }
                let mut out = [[[0.0; GROUP]; S]; R];
                for (out, sums) in out.iter_mut().zip(&sums) {
                    for (out, halves) in out.iter_mut().zip(sums) {
                        _mm256_storeu_ps(out.as_mut_ptr(), halves[0]);
                        _mm256_storeu_ps(out.as_mut_ptr().add(8), halves[1]);
                    }
                }
                out
            }
        };
    }

    /// 16 f16 scales at `p` as two halves of 8 f32 (F16C).
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    unsafe fn widen_scales(p: *const u8) -> [__m256; 2] {
        [
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const _)),
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const _)),
        ]
    }

    tile256!(avxvnni_tile, "avx2,fma,f16c,avxvnni",
        // q_w + 128 as u8
        load: |line| _mm256_xor_si256(line, _mm256_set1_epi8(-128)),
        start: |corr| _mm256_set1_epi32(corr),
        // corr + Σ (q_w + 128)·q_x
        dot: |acc, w, x| _mm256_dpbusd_avx_epi32(acc, w, x));
    tile256!(avx2_tile, "avx2,fma,f16c",
        load: |line| line,
        start: |corr| { let _ = corr; _mm256_setzero_si256() },
        // |w| · (x · sign(w)) = w · x, in pairs (i16), then in quads (i32)
        dot: |acc, w, x| _mm256_add_epi32(acc, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
            _mm256_set1_epi16(1))));

    /// AVX-VNNI `vpdpbusd` (VEX encoded), a group as two halves of 8 rows.
    pub struct AvxVnni;

    impl<'a> Tile<'a> for AvxVnni {
        type W = Line;
        type X = Row<'a>;
        type Out = [f32; GROUP];

        fn tile<const R: usize, const S: usize>(&self, w: [&[Line]; S], x: [Row<'a>; R]) -> [[[f32; GROUP]; S]; R] {
            let nb = check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has these features (Kernels); lengths checked.
            unsafe { avxvnni_tile(w, x, nb) }
        }
    }

    /// AVX2: `vpmaddubsw` + `vpmaddwd`, a group as two halves of 8 rows.
    pub struct Avx2;

    impl<'a> Tile<'a> for Avx2 {
        type W = Line;
        type X = Row<'a>;
        type Out = [f32; GROUP];

        fn tile<const R: usize, const S: usize>(&self, w: [&[Line]; S], x: [Row<'a>; R]) -> [[[f32; GROUP]; S]; R] {
            let nb = check_lengths(&w, &x);
            // SAFETY: chosen only where the CPU has AVX2, FMA and F16C (Kernels); lengths checked.
            unsafe { avx2_tile(w, x, nb) }
        }
    }

    /// AMX: `out[g·M + p]` = the 16 outputs of group g for prompt row p, for each of `groups`
    /// (of `x`'s blocks) and each row of `x` (quantized with rows to a multiple of 16): for each 16 prompt rows and block b, `tdpbssd` multiplies the rows'
    /// block (a left tile of 16 rows of 32 int8, read in place) by the group's 8 lines of the
    /// block (the right tile, as stored) into 16 x 16 exact i32 dot products, which AVX-512
    /// adds in with both scales (the dot-product kernels' arithmetic, summed in another order).
    ///
    /// # Safety
    /// Where the CPU has AVX512F and F16C, with `tiles` shaped as `Shape::Q8Block` (the loads
    /// read as many bytes as that shape says); for [`amx::Hardware`], where the CPU has
    /// AMX-INT8, [`amx::granted`] and after `amx::configure(Shape::Q8Block)` on this thread.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn amx_groups<U: amx::TileOps>(
        tiles: &mut U,
        out: &mut [[f32; GROUP]],
        groups: &[&[Line]],
        x: &Activations,
    ) {
        #[repr(align(64))]
        struct Dots([[i32; GROUP]; amx::ROWS]);
        let (m, padded) = (x.rows, x.padded);
        let nb = padded / BLOCK;
        assert!(
            groups.iter().all(|g| g.len() == lines_per_group(nb))
                && out.len() == groups.len() * m
                && x.qs.len() >= m.div_ceil(amx::ROWS) * amx::ROWS * padded
        );
        let mut dots = Dots([[0; GROUP]; amx::ROWS]);
        for (group, out) in groups.iter().zip(out.chunks_exact_mut(m)) {
            for p0 in (0..m).step_by(amx::ROWS) {
                let mut sums = [_mm512_setzero_ps(); amx::ROWS];
                for b in 0..nb {
                    tiles.zero::<0>();
                    tiles.load::<4>(x.qs.as_ptr().add(p0 * padded + b * BLOCK) as *const u8, padded);
                    tiles.load::<6>(group.as_ptr().add(quad_line(b, 0)) as *const u8, amx::ROW_BYTES);
                    tiles.dot_i8::<0, 4, 6>();
                    tiles.store::<0>(dots.0.as_mut_ptr() as *mut u8, amx::ROW_BYTES);
                    let d_w = _mm512_cvtph_ps(_mm256_loadu_si256(scales_ptr(group, b) as *const _));
                    for (p, sum) in sums.iter_mut().enumerate() {
                        let d_x = _mm512_set1_ps(*x.d.get_unchecked((p0 + p) * nb + b));
                        let dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots.0[p].as_ptr() as *const _));
                        *sum = _mm512_fmadd_ps(dot, _mm512_mul_ps(d_w, d_x), *sum);
                    }
                }
                for (out, sum) in out[p0..].iter_mut().zip(sums) {
                    _mm512_storeu_ps(out.as_mut_ptr(), sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_amx_kernel_on_emulated_tiles_matches_the_scalar_kernel() {
        use crate::ops::amx::{Emulated, Shape};
        use crate::ops::test_util::random_vec;
        // its scaling runs on AVX-512 (every CPU with AMX has it)
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("f16c")) {
            return;
        }
        // prompts of 1 to 3 tiles of 16 rows, partial ones included; odd numbers of blocks
        for (m, k, n) in [(1, 32, 16), (6, 70, 40), (17, 100, 33), (33, 300, 20), (16, 64, 17)] {
            let (x, w) = (random_vec(m * k, 7), random_vec(n * k, 8));
            let padded = k.div_ceil(BLOCK) * BLOCK;
            let mut groups = Groups::zeros(n, padded / BLOCK);
            groups.quantize_rows(0, &w, k);
            let group_lines: Vec<&[Line]> = groups.lines().chunks(lines_per_group(padded / BLOCK)).collect();
            let acts = Activations::quantize(&x, k, padded, crate::ops::amx::ROWS);
            let mut out = vec![[f32::NAN; GROUP]; group_lines.len() * m];
            // SAFETY: AVX512F and F16C checked above; the emulated tiles are shaped as Q8Block.
            unsafe { amx_groups(&mut Emulated::new(Shape::Q8Block), &mut out, &group_lines, &acts) };
            for (g, &group) in group_lines.iter().enumerate() {
                for (r, &row) in acts.rows().iter().enumerate() {
                    let [[expected]] = Scalar.tile::<1, 1>([group], [row]);
                    for (l, (&got, &want)) in out[g * m + r].iter().zip(&expected).enumerate() {
                        let bound = 1e-5 * (1.0 + want.abs());
                        assert!(
                            (got - want).abs() <= bound,
                            "m={m} k={k} n={n} group {g} row {r} lane {l}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

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
