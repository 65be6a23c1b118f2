//! f32 products of a prompt's rows with a Conv1D weight as stored: `out [M, N] (=|+=) x [M, K] ·
//! w [K, N]` for [`MIN_ROWS`] to [`MAX_ROWS`] rows, on AVX-512.
//!
//! A general matrix multiply packs both operands into cache-sized blocks before it multiplies:
//! with a prompt of 16 rows, packing the weight (reading it from memory and writing a copy) costs
//! about as much as the product. Here the weight is read once, in place. The activations are
//! packed into panels of 16 rows, one row per 32-bit lane (as the low-precision prompt kernels
//! do), and each weight w[p, j] is broadcast against row p of P panels at once: a tile of C
//! output columns by P panels keeps C·P registers of sums (one output per lane) over the rows,
//! so a weight is read from memory once per 16·P prompt rows and nothing is added across lanes.
//! One panel takes tiles of 16 columns (a cache line of each weight row); two or more, 12 x 2 or
//! 8 x 3 (24 sums, and fewer loads per multiply-add than 16 x 1 twice).
//!
//! ```text
//!   x [M, K] ──pack──▶ panels [⌈M/16⌉][K][16 lanes]
//!   for each task (one per thread: a run of tiles of C columns):
//!     for each block of 16 weight rows:
//!       for each tile j0.., each P panels g..:   sums[P][C] (16 lanes each, in registers)
//!         for p in the block:  w = broadcast(w[p, j0 + j]);  sums[g][j] += w · panel[g][p]
//!     out[16·g + lane, j0 + j] (+)= sums[g][j][lane]
//! ```
//!
//! The weight rows lie N floats apart, each in another page, where the hardware prefetchers do
//! not follow one tile's column of lines. So a task reads a block of 16 rows across all its
//! tiles before the next block (16 streams, each a row's run of the task's columns, which they
//! do follow), its tiles' sums waiting in memory between blocks, and each tile asks for its
//! lines of the next block itself. Each output is one sum in order over p, whatever the thread
//! count.

use super::{thread_count, with_thread_buffer};
use faer::Par;
use rayon::prelude::*;
use std::cell::Cell;

/// Rows from which a product with w stored [K, N] takes this kernel where the CPU has it (the
/// weight-streaming kernel of [`super::matvec`] is as fast for 3 rows), and up to which (faer's
/// own blocking is as fast at 64 and faster beyond): measured on GPT-2 124M's layers, 2-core Xeon.
pub const MIN_ROWS: usize = 4;
pub const MAX_ROWS: usize = 64;

/// Activation rows per panel: the f32 lanes of a 512-bit register.
const LANES: usize = 16;

/// Weight rows a task reads across all its tiles before the next rows: the task then reads
/// K_BLOCK streams, each a row's run of its columns, which the prefetchers follow. Its tiles'
/// sums wait in memory between blocks.
const K_BLOCK: usize = 16;

/// How far ahead (in weight rows) a tile asks for its weights: its lines of the next block.
const PREFETCH_ROWS: usize = K_BLOCK;

thread_local! {
    /// Each thread's packed panels and tile sums, kept from product to product
    /// ([`with_thread_buffer`]).
    static PANELS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SUMS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether this CPU runs the kernel (AVX-512 Foundation).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `out [M, N] (=|+=) x [M, K] · w [K, N]`, w row-major.
///
/// # Panics
/// Where the CPU lacks AVX-512 ([`available`] false), or the shapes disagree.
#[allow(clippy::too_many_arguments)]
pub fn product(out: &mut [f32], accumulate: bool, x: &[f32], w: &[f32], m: usize, k: usize, n: usize, par: Par) {
    assert!(available(), "the f32 prompt kernel needs AVX-512");
    assert!(out.len() == m * n && x.len() == m * k && w.len() == k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    // C·P sums, P panel rows and a broadcast weight in the 32 registers.
    match m.div_ceil(LANES) {
        1 => tiles::<16, 1>(out, accumulate, x, w, m, k, n, par),
        3 => tiles::<8, 3>(out, accumulate, x, w, m, k, n, par),
        _ => tiles::<12, 2>(out, accumulate, x, w, m, k, n, par),
    }
}

/// [`product`] in tiles of C columns by P panels (the panels padded with zero rows to a multiple
/// of P).
#[allow(clippy::too_many_arguments)]
fn tiles<const C: usize, const P: usize>(
    out: &mut [f32],
    accumulate: bool,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    par: Par,
) {
    // The columns past the last whole tile, zero-padded to a tile: [K, C].
    let full_tiles = n / C;
    let tail: Vec<f32> = match n % C {
        0 => Vec::new(),
        cols => w
            .chunks_exact(n)
            .flat_map(|row| {
                row[full_tiles * C..]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0.0, C - cols))
            })
            .collect(),
    };
    // One task per thread, each a run of whole tiles: the longer a task's runs of a weight row,
    // the better the prefetchers follow them (two or three tasks a thread measured slower).
    let task_cols = n.div_ceil(C).div_ceil(thread_count(par)) * C;
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(task_cols)).map(|_| Vec::with_capacity(m)).collect();
    for row in out.chunks_exact_mut(n) {
        for (task, cols) in tasks.iter_mut().zip(row.chunks_mut(task_cols)) {
            task.push(cols);
        }
    }
    let panel_count = m.div_ceil(LANES).next_multiple_of(P);
    with_thread_buffer(&PANELS, panel_count * k * LANES, |panels| {
        // SAFETY: `available` checked AVX-512.
        unsafe { pack_panels(panels, x, m, k) };
        let task = |(t, mut out): (usize, Vec<&mut [f32]>)| {
            let tiles = out[0].len().div_ceil(C);
            let first = t * task_cols / C;
            let weights = |tile: usize, k0: usize| match first + tile < full_tiles {
                true => (&w[k0 * n + (first + tile) * C..], n),
                false => (&tail[k0 * C..], C),
            };
            with_thread_buffer(&SUMS, tiles * panel_count * C * LANES, |sums| {
                // sums [tile][panel][C columns][16 lanes]
                for k0 in (0..k).step_by(K_BLOCK) {
                    let rows = K_BLOCK.min(k - k0);
                    let blocks = sums.chunks_exact_mut(P * C * LANES);
                    let groups = panels.chunks_exact(P * k * LANES).cycle();
                    for (i, (sums, group)) in blocks.zip(groups).enumerate() {
                        let (tile_w, row_stride) = weights(i / (panel_count / P), k0);
                        let group: [&[f32]; P] = std::array::from_fn(|g| &group[(g * k + k0) * LANES..]);
                        // SAFETY: `available` checked AVX-512.
                        unsafe { avx512_tile::<C, P>(sums, k0 > 0, group, tile_w, row_stride, rows) };
                    }
                }
                // out[r, C·tile + j] (+)= sums[tile][r / 16][j][r % 16]
                let per_tile = panel_count * C * LANES;
                for (r, out_row) in out.iter_mut().enumerate() {
                    let (panel, lane) = (r / LANES, r % LANES);
                    for (tile_sums, out) in sums.chunks_exact(per_tile).zip(out_row.chunks_mut(C)) {
                        let lanes = tile_sums[panel * C * LANES..].iter().skip(lane).step_by(LANES);
                        for (o, &v) in out.iter_mut().zip(lanes) {
                            *o = if accumulate { *o + v } else { v };
                        }
                    }
                }
            });
        };
        match par {
            Par::Seq => tasks.into_iter().enumerate().for_each(task),
            Par::Rayon(_) => tasks.into_par_iter().enumerate().for_each(task),
        }
    });
}

/// x [M, K] into ⌈M/16⌉ panels [K][16]: `panels[g][p][lane] = x[16·g + lane, p]`, zero past row M
/// (and past the panels x fills): each line of a panel gathered from its 16 prompt rows at once.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panels(panels: &mut [f32], x: &[f32], m: usize, k: usize) {
    use std::arch::x86_64::*;
    assert!(x.len() == m * k && panels.len().is_multiple_of(k * LANES) && LANES * k <= i32::MAX as usize);
    // Lane r reads row 16·g + r: k floats after lane r - 1.
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(k as i32),
    );
    for (g, panel) in panels.chunks_exact_mut(k * LANES).enumerate() {
        let rows = m.saturating_sub(g * LANES).min(LANES);
        let present: __mmask16 = ((1u32 << rows) - 1) as u16;
        let first = x.as_ptr().wrapping_add(g * LANES * k);
        for (p, line) in panel.chunks_exact_mut(LANES).enumerate() {
            // Masked lanes are not read: rows past M may lie past the end of x.
            let gathered =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), present, offsets, first.wrapping_add(p).cast());
            _mm512_storeu_ps(line.as_mut_ptr(), gathered);
        }
    }
}

/// One tile over `k` weight rows: `sums[(g·C + j)·16 + lane] (+)= Σ_p w[p·row_stride + j] ·
/// panels[g][p·16 + lane]` for the C columns j and the P panels g, added to the sums there when
/// `accumulate`.
///
/// # Safety
/// The CPU has AVX-512F (the lengths are checked: `w` holds (k - 1)·row_stride + C values,
/// each panel 16·k and `sums` P·C·16).
#[target_feature(enable = "avx512f")]
unsafe fn avx512_tile<const C: usize, const P: usize>(
    sums: &mut [f32],
    accumulate: bool,
    panels: [&[f32]; P],
    w: &[f32],
    row_stride: usize,
    k: usize,
) {
    use std::arch::x86_64::*;
    assert!(w.len() >= (k - 1) * row_stride + C && panels.iter().all(|p| p.len() >= k * LANES));
    let (sums, _) = sums.as_chunks_mut::<LANES>();
    assert_eq!(sums.len(), P * C);
    // acc[j][g]: column j of the tile against panel g.
    let mut acc: [[__m512; P]; C] = match accumulate {
        true => std::array::from_fn(|j| std::array::from_fn(|g| _mm512_loadu_ps(sums[g * C + j].as_ptr()))),
        false => [[_mm512_setzero_ps(); P]; C],
    };
    let w = w.as_ptr();
    for p in 0..k {
        let lanes: [__m512; P] = std::array::from_fn(|g| _mm512_loadu_ps(panels[g].as_ptr().add(p * LANES)));
        let row = w.add(p * row_stride);
        // A prefetch never faults: past the last row it asks for nothing useful, and no harm.
        _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(PREFETCH_ROWS * row_stride).cast());
        for (j, column) in acc.iter_mut().enumerate() {
            let weight = _mm512_set1_ps(*row.add(j));
            for (sum, &lanes) in column.iter_mut().zip(&lanes) {
                *sum = _mm512_fmadd_ps(weight, lanes, *sum);
            }
        }
    }
    for (j, column) in acc.into_iter().enumerate() {
        for (g, sum) in column.into_iter().enumerate() {
            _mm512_storeu_ps(sums[g * C + j].as_mut_ptr(), sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_vec;

    #[test]
    fn prompt_products_match_the_f64_product_on_odd_shapes() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        // M within a panel, a whole panel, and panels plus a few rows (tiles of 16 x 1, 12 x 2,
        // 8 x 3, and 12 x 2 over 4 panels); N in whole tiles, with a tail, narrower than a tile,
        // and over several tasks; K within a block of rows, across blocks, and long.
        for (m, k, n) in [
            (MIN_ROWS, 3, 7),
            (5, 1, 20),
            (16, 64, 48),
            (17, 33, 70),
            (40, 130, 16 * 9 + 5),
            (50, 20, 30),
            (MAX_ROWS, 768, 96),
        ] {
            let x = random_vec(m * k, 1);
            let w = random_vec(k * n, 2);
            let start = random_vec(m * n, 3);
            for accumulate in [false, true] {
                let mut sequential = start.clone();
                product(&mut sequential, accumulate, &x, &w, m, k, n, Par::Seq);
                for par in [Par::Seq, Par::rayon(0)] {
                    let mut out = start.clone();
                    product(&mut out, accumulate, &x, &w, m, k, n, par);
                    assert_eq!(out, sequential, "m={m} k={k} n={n}: the thread count changed a sum");
                    for (i, &got) in out.iter().enumerate() {
                        let (r, c) = (i / n, i % n);
                        let dot: f64 = (0..k).map(|p| x[r * k + p] as f64 * w[p * n + c] as f64).sum();
                        let expected = dot + if accumulate { start[i] as f64 } else { 0.0 };
                        assert!(
                            (got as f64 - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                            "m={m} k={k} n={n} accumulate={accumulate} out[{r}, {c}]: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}
