//! Products of a prompt's many activation rows with bf16 weights as stored, on AVX-512
//! (`avx512bf16`), AMX tiles (`amx`) or AVX2 + FMA (`avx2`). (q8_0 weights are stored so that
//! their own tiles already put one output in each lane: [`super::q8_0`].)
//!
//! The dot-product tiles of [`super::product`] keep each output in a register of partial sums
//! and add its lanes at the end: right for a token or two, where reading the weights is all
//! the work. A prompt of M rows is arithmetic, and is better served the other way round: the
//! activations are packed once into panels of 16 rows, one row per 32-bit lane, and each stored
//! weight pair is broadcast against a whole panel. Every lane then sums one output, nothing is
//! added across lanes, and a weight is read from memory once per 16·P rows. A micro-kernel
//! computes MR weight rows × P panels (MR·P registers of sums):
//!
//! ```text
//!   x [M, K] ──pack──▶ panels [⌈M/16⌉][K/2 pairs][16 lanes]
//!   for each task of weight rows (whole tiles of MR rows, at least 4 tasks a thread):
//!     for each MR rows, for each P panels:   sums[MR][P] (16 lanes each)
//!       for each pair j:  w = broadcast(row r, j);  sums[r][p] += panel[p][j] · w
//!   out_t [N, 16·⌈M/16⌉] ──transpose──▶ out [M, N]
//! ```
//!
//! On AVX-512 and AMX the arithmetic is the dot-product kernels' (activations rounded to bf16);
//! only the order of the f32 sums differs.
//!
//! AVX2 has no bf16 dot product and 16 registers: there the panels hold the activations in f32,
//! and a tile widens its MR rows to f32, 256 weights at a time into a buffer that stays in L1,
//! then broadcasts each from there (a load, no shuffle) against the two 8-lane halves of each
//! panel: a weight costs one FMA per 8 prompt rows, as in an f32 product, and is read from
//! memory in its own bytes.
//!
//! AMX turns the roles round and computes `out_t = W · xᵀ` a tile at a time: a tile of 16 weight
//! rows is read straight from the stored rows (the tile's rows lie a weight row apart), and the
//! panels are already in the layout the tile instructions want for their right operand (16
//! lanes' pair per 64-byte row). See [`amx_product`].

use super::bf16;
use super::half::bf16_pair;
use super::Bf16Kernel;
use super::{for_each_task, transpose};
use crate::ops::amx;
use rayon::prelude::*;

/// Activation rows per panel, one per f32 lane.
const LANES: usize = super::PANEL_ROWS;

/// One kernel: packed activations and the micro-kernel that multiplies them with stored rows.
trait Panels: Sync {
    /// `out[r·stride + 16·p + lane] = rows[r] · x[16·(g + p) + lane]` for the MR rows and the
    /// P panels from panel `g`.
    fn tile<const MR: usize, const P: usize>(&self, out: &mut [f32], stride: usize, rows: [&[u16]; MR], g: usize);

    /// The weight rows MR of [`Panels::task`]'s tiles against `panels` panels. Every task but
    /// the last holds a multiple of them: rows left over are taken one at a time, a single
    /// chain of sums that waits on each instruction's latency (in GPT-2's prompts of 16 on 2
    /// threads, a bf16 task's 2-6 rows left over took a sixth of the products' time).
    fn tile_rows(&self, panels: usize) -> usize {
        match panels {
            1 => 12,
            2 => 8,
            3 => 6,
            _ => 5,
        }
    }

    /// A task's `rows` against all `panels`, in tiles of MR rows x P panels that fill the
    /// AVX-512 registers (MR·P sums, P panel registers and a broadcast in 32).
    fn task(&self, out_t: &mut [f32], stride: usize, rows: &[&[u16]], panels: usize)
    where
        Self: Sized,
    {
        match panels {
            1 => by_rows::<Self, 12, 1>(self, out_t, stride, rows, panels),
            2 => by_rows::<Self, 8, 2>(self, out_t, stride, rows, panels),
            3 => by_rows::<Self, 6, 3>(self, out_t, stride, rows, panels),
            _ => by_rows::<Self, 5, 4>(self, out_t, stride, rows, panels),
        }
    }
}

/// `out [M, N] = x · Wᵀ` for the weights `w` stored [N, `row_len`], the activations packed in
/// `kernel` (M rows, in ⌈M/16⌉ panels).
fn product<K: Panels>(kernel: &K, out: &mut [f32], m: usize, w: &[u16], row_len: usize) {
    let n = w.len() / row_len;
    let panels = m.div_ceil(LANES);
    let stride = panels * LANES;
    let mut out_t = vec![0.0f32; n * stride];
    for_each_task(
        &mut out_t,
        stride,
        w,
        row_len,
        kernel.tile_rows(panels),
        |out_t, rows| kernel.task(out_t, stride, rows, panels),
    );
    transpose(out, &out_t, n, stride);
}

/// Every row of `rows` against every panel: MR rows at a time, then one at a time.
fn by_rows<K: Panels, const MR: usize, const P: usize>(
    kernel: &K,
    out: &mut [f32],
    stride: usize,
    rows: &[&[u16]],
    panels: usize,
) {
    assert_eq!(
        MR,
        kernel.tile_rows(panels),
        "Panels::tile_rows disagrees with Panels::task"
    );
    let blocks = rows.len() / MR;
    for (i, block) in rows.chunks_exact(MR).enumerate() {
        let block: [&[u16]; MR] = std::array::from_fn(|r| block[r]);
        by_panels::<K, MR, P>(kernel, &mut out[i * MR * stride..], stride, block, panels);
    }
    for (i, &row) in rows.iter().enumerate().skip(blocks * MR) {
        by_panels::<K, 1, P>(kernel, &mut out[i * stride..], stride, [row], panels);
    }
}

/// The MR rows against every panel: P at a time, then one at a time.
fn by_panels<K: Panels, const MR: usize, const P: usize>(
    kernel: &K,
    out: &mut [f32],
    stride: usize,
    rows: [&[u16]; MR],
    panels: usize,
) {
    let groups = panels / P;
    for g in 0..groups {
        kernel.tile::<MR, P>(&mut out[g * P * LANES..], stride, rows, g * P);
    }
    for g in groups * P..panels {
        kernel.tile::<MR, 1>(&mut out[g * LANES..], stride, rows, g);
    }
}

/// bf16 weights [N, `padded`] (u16 bits) times x [M, K]: `out` [M, N], on AMX tiles where
/// `kernel` is `amx`, in f32 where it is `avx2`, else by `vdpbf16ps`.
pub fn bf16(out: &mut [f32], x: &[f32], m: usize, k: usize, w: &[u16], padded: usize, kernel: Bf16Kernel) {
    match kernel {
        Bf16Kernel::Amx => amx_bf16(&Bf16Panels::pack(x, m, k, padded), out, m, w, padded),
        Bf16Kernel::Avx2 => product(&F32Panels::pack(x, m, k, padded), out, m, w, padded),
        _ => product(&Bf16Panels::pack(x, m, k, padded), out, m, w, padded),
    }
}

/// `out [M, N] = x · Wᵀ` on AMX tiles, computed as `out_t = W · xᵀ`: then a tile of 16 weight
/// rows is read straight from the stored rows (a row's bytes apart), and a right tile is part of
/// a panel as packed, already in the layout the tile instructions want. Tasks hold multiples
/// of 32 rows; `tiles(out_t, rows, full, stride)` computes each task's first `full` rows (a
/// multiple of 16) with the tiles shaped for bf16, and the rows past them run on the AVX-512
/// panels.
///
/// # Safety
/// Only where the CPU has AMX-BF16 and [`amx::granted`].
unsafe fn amx_product(
    panels: &Bf16Panels,
    out: &mut [f32],
    m: usize,
    w: &[u16],
    row_len: usize,
    tiles: impl Fn(&mut [f32], &[&[u16]], usize, usize) + Sync,
) {
    let n = w.len() / row_len;
    let groups = m.div_ceil(LANES);
    let stride = groups * LANES;
    let mut out_t = vec![0.0f32; n * stride];
    for_each_task(&mut out_t, stride, w, row_len, 2 * amx::ROWS, |out_t, rows| {
        let full = rows.len() / amx::ROWS * amx::ROWS;
        assert!(rows
            .windows(2)
            .all(|r| r[1].as_ptr() == r[0].as_ptr().wrapping_add(row_len)));
        // SAFETY: the caller's promise.
        unsafe { amx::configure(amx::Shape::Bf16) };
        tiles(out_t, rows, full, stride);
        // SAFETY: as above.
        unsafe { amx::release() };
        for (i, &row) in rows.iter().enumerate().skip(full) {
            by_panels::<Bf16Panels, 1, 4>(panels, &mut out_t[i * stride..], stride, [row], groups);
        }
    });
    transpose(out, &out_t, n, stride);
}

/// [`amx_product`] in bf16: an A tile is 16 weight rows x 16 pairs, `2·padded` bytes a row, a
/// B tile 16 pairs x 16 lanes, 1 KiB of a panel. Each C tile (16 weight rows x 16 prompt rows)
/// sums all K before it is stored into `out_t`, two by two of each operand where there are two.
fn amx_bf16(panels: &Bf16Panels, out: &mut [f32], m: usize, w: &[u16], padded: usize) {
    const TILE: usize = amx::ROWS;
    let (groups, per_panel) = (m.div_ceil(LANES), panels.per_panel);
    let tiles = |out_t: &mut [f32], rows: &[&[u16]], full: usize, stride: usize| {
        for r0 in (0..full).step_by(2 * TILE) {
            let a = amx::Tiles {
                base: rows[r0].as_ptr() as *const u8,
                stride: 2 * padded,
                next_tile: TILE * 2 * padded,
                next_step: amx::ROW_BYTES,
            };
            for g in (0..groups).step_by(2) {
                let b = amx::Tiles {
                    base: panels.pairs[g * per_panel * LANES..].as_ptr() as *const u8,
                    stride: amx::ROW_BYTES,
                    next_tile: 4 * per_panel * LANES,
                    next_step: TILE * amx::ROW_BYTES,
                };
                let c = out_t[r0 * stride + g * LANES..].as_mut_ptr() as *mut u8;
                let (row_tiles, col_tiles) = ((full - r0).min(2 * TILE) / TILE, (groups - g).min(2));
                // SAFETY: the tiles are configured (amx_product). Every tile read lies in the
                // task's first `full` rows (16 pairs a step, padded / 32 steps) or in the panels
                // (groups g, g + 1 < groups when two); every C tile in out_t.
                unsafe { amx::product_bf16(row_tiles, col_tiles, c, 4 * stride, false, a, b, padded / (2 * TILE)) }
            }
        }
    };
    // SAFETY: Bf16Kernel::Amx is only chosen where it is available (amx_tile, amx_bf16,
    // amx::granted()).
    unsafe { amx_product(panels, out, m, w, padded, tiles) }
}

/// x rounded to bf16 in panels: `pairs[(g·K/2 + j)·16 + lane]` holds x[16g + lane][2j, 2j + 1]
/// as two bf16 (the first in the low half, as `vdpbf16ps` pairs them); rows past M are zero.
struct Bf16Panels {
    pairs: Vec<u32>,
    per_panel: usize, // K/2 (padded)
}

impl Bf16Panels {
    fn pack(x: &[f32], m: usize, k: usize, padded: usize) -> Self {
        let per_panel = padded / 2;
        let mut pairs = vec![0u32; m.div_ceil(LANES) * per_panel * LANES];
        pairs
            .par_chunks_mut(per_panel * LANES)
            .zip(x.par_chunks(LANES * k))
            .for_each(|(panel, x)| {
                for (lane, x) in x.chunks_exact(k).enumerate() {
                    for (j, pair) in x.chunks(2).enumerate() {
                        panel[j * LANES + lane] = bf16_pair(pair[0], pair.get(1).copied().unwrap_or(0.0));
                    }
                }
            });
        Bf16Panels { pairs, per_panel }
    }
}

impl Panels for Bf16Panels {
    fn tile<const MR: usize, const P: usize>(&self, out: &mut [f32], stride: usize, rows: [&[u16]; MR], g: usize) {
        let n = self.per_panel;
        assert!(
            rows.iter().all(|r| r.len() == 2 * n)
                && self.pairs.len() >= (g + P) * n * LANES
                && out.len() >= (MR - 1) * stride + P * LANES
        );
        // SAFETY: chosen only where the CPU has AVX512F and AVX512-BF16 (LowpMatrix::matmul:
        // the kernel is avx512bf16 or amx, which needs them too);
        // every row holds 2n weights, the panels g..g + P exist and `out` holds the tile.
        unsafe { x86::bf16_tile::<MR, P>(out, stride, rows, &self.pairs[g * n * LANES..], n) }
    }
}

/// x in f32 panels for the AVX2 tiles: `lines[(g·padded + j)·16 + lane]` = x[16g + lane][j];
/// rows past M and columns past K are zero.
struct F32Panels {
    lines: Vec<f32>,
    padded: usize,
}

impl F32Panels {
    fn pack(x: &[f32], m: usize, k: usize, padded: usize) -> Self {
        let mut lines = vec![0.0f32; m.div_ceil(LANES) * padded * LANES];
        lines
            .par_chunks_mut(padded * LANES)
            .zip(x.par_chunks(LANES * k))
            .for_each(|(panel, x)| {
                for (lane, x) in x.chunks_exact(k).enumerate() {
                    for (j, &v) in x.iter().enumerate() {
                        panel[j * LANES + lane] = v;
                    }
                }
            });
        F32Panels { lines, padded }
    }
}

impl Panels for F32Panels {
    fn tile<const MR: usize, const P: usize>(&self, out: &mut [f32], stride: usize, rows: [&[u16]; MR], g: usize) {
        let padded = self.padded;
        assert!(
            rows.iter().all(|r| r.len() == padded)
                && self.lines.len() >= (g + P) * padded * LANES
                && out.len() >= (MR - 1) * stride + P * LANES
        );
        // SAFETY: chosen only where the CPU has AVX2 and FMA (LowpMatrix::matmul: bf16's kernel
        // is avx2, which needs them); every row holds `padded` weights, the panels
        // g..g + P exist and `out` holds the tile.
        unsafe { x86::f32_tile::<MR, P>(out, stride, rows, &self.lines[g * padded * LANES..], padded) }
    }

    fn tile_rows(&self, panels: usize) -> usize {
        match panels {
            1 => 6,
            _ => 2,
        }
    }

    /// In the 16 AVX2 registers: MR·P·2 sums, 2·P panel halves and a broadcast.
    fn task(&self, out_t: &mut [f32], stride: usize, rows: &[&[u16]], panels: usize) {
        match panels {
            1 => by_rows::<Self, 6, 1>(self, out_t, stride, rows, panels),
            _ => by_rows::<Self, 2, 2>(self, out_t, stride, rows, panels),
        }
    }
}

mod x86 {
    use super::{bf16, LANES};
    use std::arch::x86_64::*;

    /// MR bf16 rows of 2n weights against P panels of n pairs (`pairs` from the first).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_tile<const MR: usize, const P: usize>(
        out: &mut [f32],
        stride: usize,
        rows: [&[u16]; MR],
        pairs: &[u32],
        n: usize,
    ) {
        let mut sums = [[_mm512_setzero_ps(); P]; MR];
        for j in 0..n {
            let x: [__m512bh; P] = std::array::from_fn(|p| {
                std::mem::transmute(_mm512_loadu_si512(pairs.as_ptr().add((p * n + j) * LANES) as *const _))
            });
            for r in 0..MR {
                // weights 2j and 2j + 1 of row r, in every lane
                let pair = std::ptr::read_unaligned(rows[r].as_ptr().add(2 * j) as *const i32);
                let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for p in 0..P {
                    // sums[lane] += x[2j]·w[2j] + x[2j+1]·w[2j+1], in f32
                    sums[r][p] = _mm512_dpbf16_ps(sums[r][p], x[p], w);
                }
            }
        }
        store(out, stride, &sums);
    }

    /// MR rows of `padded` weights, widened to f32 [`RUN`] at a time, against P panels of f32
    /// lines (`lines` from the first), each panel as two halves of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_tile<const MR: usize, const P: usize>(
        out: &mut [f32],
        stride: usize,
        rows: [&[u16]; MR],
        lines: &[f32],
        padded: usize,
    ) {
        const RUN: usize = 256;
        let mut weights = [[0.0f32; RUN]; MR];
        let mut sums = [[[_mm256_setzero_ps(); 2]; P]; MR];
        for from in (0..padded).step_by(RUN) {
            let len = RUN.min(padded - from);
            for (row, weights) in rows.iter().zip(&mut weights) {
                bf16::dequantize_row(&row[from..], &mut weights[..len]);
            }
            for j in 0..len {
                let line = |p: usize, half: usize| lines.as_ptr().add((p * padded + from + j) * LANES + 8 * half);
                let x: [[__m256; 2]; P] = std::array::from_fn(|p| std::array::from_fn(|h| _mm256_loadu_ps(line(p, h))));
                for r in 0..MR {
                    let w = _mm256_broadcast_ss(weights[r].get_unchecked(j));
                    for p in 0..P {
                        for h in 0..2 {
                            sums[r][p][h] = _mm256_fmadd_ps(w, x[p][h], sums[r][p][h]);
                        }
                    }
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (p, halves) in sums.iter().enumerate() {
                for (h, &s) in halves.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * stride + p * LANES + 8 * h), s);
                }
            }
        }
    }

    /// `out[r·stride + 16p..][..16] = sums[r][p]`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const MR: usize, const P: usize>(out: &mut [f32], stride: usize, sums: &[[__m512; P]; MR]) {
        for (r, sums) in sums.iter().enumerate() {
            for (p, &s) in sums.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(r * stride + p * LANES), s);
            }
        }
    }
}
