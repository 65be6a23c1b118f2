//! f32 products of a prompt's rows with a Conv1D weight as stored: `out [M, N] (=|+=) x [M, K] ·
//! w [K, N]` for [`MIN_ROWS`] to [`MAX_ROWS`] rows, on AVX-512 or on AVX2 + FMA.
//!
//! A general matrix multiply packs both operands into cache-sized blocks before it multiplies:
//! with a prompt of 16 rows, packing the weight (reading it from memory and writing a copy) costs
//! about as much as the product. Here the weight is read once, in place. The activations are
//! packed into panels of L rows, one row per 32-bit lane of a vector register (L = 16 on
//! AVX-512, 8 on AVX2; as the low-precision prompt kernels do), and each weight w[p, j] is
//! broadcast against row p of P panels at once: a tile of C output columns by P panels keeps C·P
//! registers of sums (one output per lane) over the rows, so a weight is read from memory once
//! per L·P prompt rows and nothing is added across lanes. The tile shapes fill the registers
//! (32 on AVX-512, 16 on AVX2) with sums, P panel lines and one broadcast weight ([`product`]).
//! A panel line is one masked gather from its L rows on AVX-512; on AVX2, whose gathers cost
//! several times as much on Zen 3, whole panels are packed 8 x 8 at a time, transposed in
//! registers.
//!
//! ```text
//!   x [M, K] ──pack──▶ panels [⌈M/L⌉][K][L lanes]
//!   for each task (one per thread: a run of tiles of C columns):
//!     for each block of 32 weight rows:
//!       for each tile j0.., each P panels g..:   sums[P][C] (L lanes each, in registers)
//!         for p in the block:  w = broadcast(w[p, j0 + j]);  sums[g][j] += w · panel[g][p]
//!     out[L·g + lane, j0 + j] (+)= sums[g][j][lane]
//! ```
//!
//! The weight rows lie N floats apart, each in another page, where the hardware prefetchers do
//! not follow one tile's column of lines. So a task reads a block of 32 rows across all its
//! tiles before the next block (32 streams, each a row's run of the task's columns, which they
//! do follow), its tiles' sums waiting in memory between blocks, and each tile asks for its
//! lines of the next block itself. Each output is one sum in order over p, whatever the thread
//! count.

use super::{thread_count, with_thread_buffer};
use faer::Par;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Rows from which a product with w stored [K, N] takes this kernel where the CPU has it (the
/// weight-streaming kernel of [`super::matvec`] is as fast for 3 rows and slower for 4), and up
/// to which (faer's own blocking is as fast at 64 and faster beyond): measured on GPT-2 124M's
/// prompts, 2 threads, on a Xeon (AVX-512) and on Zen 3 (AVX2).
pub const MIN_ROWS: usize = 4;
pub const MAX_ROWS: usize = 64;

/// Weight rows a task reads across all its tiles before the next rows: the task then reads
/// K_BLOCK streams, each a row's run of its columns, which the prefetchers follow. Its tiles'
/// sums wait in memory between blocks, so the fewer blocks the better: on Zen 5, 32 and 64
/// rows read a prompt of 16 about 5% faster than 16 rows (128 and more slower). 16 was chosen
/// on the Xeon and Zen 3, where 32 is unmeasured.
const K_BLOCK: usize = 32;

/// How far ahead (in weight rows) a tile asks for its weights: its lines of the next block.
const PREFETCH_ROWS: usize = K_BLOCK;

thread_local! {
    /// Each thread's packed panels and tile sums, kept from product to product
    /// ([`with_thread_buffer`]).
    static PANELS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SUMS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The instruction sets the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 Foundation: panels of 16 rows, 32 registers.
    Avx512,
    /// AVX2 + FMA: panels of 8 rows, 16 registers.
    Avx2,
}

impl Isa {
    /// Every instruction set the kernel has, best first.
    pub const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// The best one this CPU runs, if any.
    pub fn best() -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.available())
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        }
    }

    /// Its name for people.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2",
        }
    }

    /// Activation rows per panel: the f32 lanes of a register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => Avx512::LANES,
            Isa::Avx2 => Avx2::LANES,
        }
    }
}

/// `out [M, N] (=|+=) x [M, K] · w [K, N]`, w row-major, on `isa`.
///
/// # Panics
/// Where the CPU lacks `isa` ([`Isa::available`] false), or the shapes disagree.
#[allow(clippy::too_many_arguments)]
pub fn product(
    isa: Isa,
    out: &mut [f32],
    accumulate: bool,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    par: Par,
) {
    assert!(
        isa.available(),
        "the f32 prompt kernel on {} needs a CPU with it",
        isa.name()
    );
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
    let product = Product {
        out,
        accumulate,
        x,
        w,
        m,
        k,
        n,
        par,
    };
    // C·P sums, P panel lines and a broadcast weight in the registers: 16 x 1, 8 x 3 and 12 x 2
    // of AVX-512's 32 (16 columns being a cache line of each weight row), 12 x 1, 4 x 3 and 6 x 2
    // of AVX2's 16.
    match (isa, m.div_ceil(isa.lanes())) {
        (Isa::Avx512, 1) => product.tiles::<Avx512, 16, 1>(),
        (Isa::Avx512, 3) => product.tiles::<Avx512, 8, 3>(),
        (Isa::Avx512, _) => product.tiles::<Avx512, 12, 2>(),
        (Isa::Avx2, 1) => product.tiles::<Avx2, 12, 1>(),
        (Isa::Avx2, 3) => product.tiles::<Avx2, 4, 3>(),
        (Isa::Avx2, _) => product.tiles::<Avx2, 6, 2>(),
    }
}

/// One product's operands and shapes.
struct Product<'a> {
    out: &'a mut [f32],
    accumulate: bool,
    x: &'a [f32],
    w: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    par: Par,
}

impl Product<'_> {
    /// The product in tiles of C columns by P panels of `S`'s lanes (the panels padded with zero
    /// rows to a multiple of P).
    fn tiles<S: Vector, const C: usize, const P: usize>(self) {
        let Product {
            out,
            accumulate,
            x,
            w,
            m,
            k,
            n,
            par,
        } = self;
        let lanes = S::LANES;
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
        // One task per thread, each a run of whole tiles: the longer a task's runs of a weight
        // row, the better the prefetchers follow them (two or three tasks a thread measured
        // slower).
        let task_cols = n.div_ceil(C).div_ceil(thread_count(par)) * C;
        let mut tasks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(task_cols)).map(|_| Vec::with_capacity(m)).collect();
        for row in out.chunks_exact_mut(n) {
            for (task, cols) in tasks.iter_mut().zip(row.chunks_mut(task_cols)) {
                task.push(cols);
            }
        }
        let panel_count = m.div_ceil(lanes).next_multiple_of(P);
        with_thread_buffer(&PANELS, panel_count * k * lanes, |panels| {
            // SAFETY: `product` checked that the CPU has S's instruction set.
            unsafe { S::pack_panels(panels, x, m, k) };
            let task = |(t, mut out): (usize, Vec<&mut [f32]>)| {
                let tiles = out[0].len().div_ceil(C);
                let first = t * task_cols / C;
                let weights = |tile: usize, k0: usize| match first + tile < full_tiles {
                    true => (&w[k0 * n + (first + tile) * C..], n),
                    false => (&tail[k0 * C..], C),
                };
                with_thread_buffer(&SUMS, tiles * panel_count * C * lanes, |sums| {
                    // sums [tile][panel][C columns][L lanes]
                    for k0 in (0..k).step_by(K_BLOCK) {
                        // SAFETY: as for the packing.
                        unsafe { S::block::<C, P>(sums, panels, k, k0, |tile| weights(tile, k0)) };
                    }
                    // out[r, C·tile + j] (+)= sums[tile][r / L][j][r % L]
                    for (tile, tile_sums) in sums.chunks_exact(panel_count * C * lanes).enumerate() {
                        for (r, out_row) in out.iter_mut().enumerate() {
                            let row_sums = &tile_sums[(r / lanes) * C * lanes + r % lanes..];
                            for (j, o) in out_row[tile * C..].iter_mut().take(C).enumerate() {
                                let v = row_sums[j * lanes];
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
}

/// A vector register of f32 lanes on one instruction set: the few instructions the packing and
/// the tiles use, and the two functions compiled for it ([`Vector::pack_panels`],
/// [`Vector::block`]: [`pack_panels`] or [`block`] with the instruction set enabled, so that the
/// instructions inline into them).
trait Vector {
    const LANES: usize;
    type V: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn load(from: *const f32) -> Self::V;
    unsafe fn store(to: *mut f32, v: Self::V);
    /// Every lane `*from`.
    unsafe fn broadcast(from: *const f32) -> Self::V;
    /// `a · b + c`, one rounding.
    unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane r `*first.add(r · stride)` for r < rows, zero past them (not read: they may lie past
    /// the end of the slice).
    unsafe fn gather(first: *const f32, stride: usize, rows: usize) -> Self::V;

    /// [`pack_panels`] on this instruction set.
    unsafe fn pack_panels(panels: &mut [f32], x: &[f32], m: usize, k: usize);
    /// [`block`] on this instruction set.
    unsafe fn block<'w, const C: usize, const P: usize>(
        sums: &mut [f32],
        panels: &[f32],
        k: usize,
        k0: usize,
        weights: impl Fn(usize) -> (&'w [f32], usize),
    );
}

/// AVX-512 Foundation.
struct Avx512;

impl Vector for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(from: *const f32) -> __m512 {
        _mm512_loadu_ps(from)
    }
    #[inline(always)]
    unsafe fn store(to: *mut f32, v: __m512) {
        _mm512_storeu_ps(to, v)
    }
    #[inline(always)]
    unsafe fn broadcast(from: *const f32) -> __m512 {
        _mm512_set1_ps(*from)
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn gather(first: *const f32, stride: usize, rows: usize) -> __m512 {
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        let present: __mmask16 = ((1u32 << rows) - 1) as u16;
        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), present, offsets, first.cast())
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn pack_panels(panels: &mut [f32], x: &[f32], m: usize, k: usize) {
        pack_panels::<Self>(panels, x, m, k)
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn block<'w, const C: usize, const P: usize>(
        sums: &mut [f32],
        panels: &[f32],
        k: usize,
        k0: usize,
        weights: impl Fn(usize) -> (&'w [f32], usize),
    ) {
        block::<Self, C, P>(sums, panels, k, k0, weights)
    }
}

/// AVX2 with FMA.
struct Avx2;

impl Vector for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(from: *const f32) -> __m256 {
        _mm256_loadu_ps(from)
    }
    #[inline(always)]
    unsafe fn store(to: *mut f32, v: __m256) {
        _mm256_storeu_ps(to, v)
    }
    #[inline(always)]
    unsafe fn broadcast(from: *const f32) -> __m256 {
        _mm256_broadcast_ss(&*from)
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn gather(first: *const f32, stride: usize, rows: usize) -> __m256 {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let offsets = _mm256_mullo_epi32(lane, _mm256_set1_epi32(stride as i32));
        // A lane is read where its mask's sign bit is set: lane < rows.
        let present = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(rows as i32), lane));
        _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), first, offsets, present)
    }

    /// Whole panels 8 x 8 at a time: 8 rows' runs of 8 values loaded and transposed in registers
    /// into 8 panel lines (AVX2's gathers cost several times as much on Zen 3); the rest
    /// gathered.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_panels(panels: &mut [f32], x: &[f32], m: usize, k: usize) {
        const L: usize = Avx2::LANES;
        let whole = (m / L) * L * k;
        let (whole_panels, rest) = panels.split_at_mut(whole);
        for (panel, x) in whole_panels.chunks_exact_mut(k * L).zip(x.chunks_exact(k * L)) {
            for p0 in (0..k / L * L).step_by(L) {
                let rows: [__m256; L] = std::array::from_fn(|r| _mm256_loadu_ps(x.as_ptr().add(r * k + p0)));
                for (i, line) in transpose_8x8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(panel.as_mut_ptr().add((p0 + i) * L), line);
                }
            }
            for p in k / L * L..k {
                _mm256_storeu_ps(panel.as_mut_ptr().add(p * L), Self::gather(x.as_ptr().add(p), k, L));
            }
        }
        pack_panels::<Self>(rest, &x[whole..], m % L, k)
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<'w, const C: usize, const P: usize>(
        sums: &mut [f32],
        panels: &[f32],
        k: usize,
        k0: usize,
        weights: impl Fn(usize) -> (&'w [f32], usize),
    ) {
        block::<Self, C, P>(sums, panels, k, k0, weights)
    }
}

/// The 8 x 8 floats `rows` transposed: lane r of output i is lane i of row r.
#[inline(always)]
unsafe fn transpose_8x8(rows: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // pairs of rows interleaved, then quads, then the 128-bit halves exchanged
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let q0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
    let q1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
    let q2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
    let q3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
    let q4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
    let q5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
    let q6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
    let q7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(q0, q4),
        _mm256_permute2f128_ps::<0x20>(q1, q5),
        _mm256_permute2f128_ps::<0x20>(q2, q6),
        _mm256_permute2f128_ps::<0x20>(q3, q7),
        _mm256_permute2f128_ps::<0x31>(q0, q4),
        _mm256_permute2f128_ps::<0x31>(q1, q5),
        _mm256_permute2f128_ps::<0x31>(q2, q6),
        _mm256_permute2f128_ps::<0x31>(q3, q7),
    ]
}

/// x [M, K] into panels [K][L] of `S`'s L lanes: `panels[g][p][lane] = x[L·g + lane, p]`, zero
/// past row M (and past the panels x fills): each line of a panel gathered from its L prompt
/// rows at once.
///
/// # Safety
/// The CPU has S's instruction set.
#[inline(always)]
unsafe fn pack_panels<S: Vector>(panels: &mut [f32], x: &[f32], m: usize, k: usize) {
    let lanes = S::LANES;
    assert!(x.len() == m * k && panels.len().is_multiple_of(k * lanes) && lanes * k <= i32::MAX as usize);
    for (g, panel) in panels.chunks_exact_mut(k * lanes).enumerate() {
        let rows = m.saturating_sub(g * lanes).min(lanes);
        let first = x.as_ptr().wrapping_add(g * lanes * k);
        for (p, line) in panel.chunks_exact_mut(lanes).enumerate() {
            S::store(line.as_mut_ptr(), S::gather(first.wrapping_add(p), k, rows));
        }
    }
}

/// One block of [`K_BLOCK`] weight rows from row `k0` across a task's tiles (tile t: C columns
/// of `weights(t)` = (its weights from row k0 on, their row stride)), each against every P of
/// the panels (the sums of tile t and panels g.. at `sums[((t·panels + g)·C + j)·L + lane]`).
///
/// # Safety
/// The CPU has S's instruction set.
#[inline(always)]
unsafe fn block<'w, S: Vector, const C: usize, const P: usize>(
    sums: &mut [f32],
    panels: &[f32],
    k: usize,
    k0: usize,
    weights: impl Fn(usize) -> (&'w [f32], usize),
) {
    let lanes = S::LANES;
    let rows = K_BLOCK.min(k - k0);
    let panel_count = panels.len() / (k * lanes);
    for (t, tile_sums) in sums.chunks_exact_mut(panel_count * C * lanes).enumerate() {
        let (w, row_stride) = weights(t);
        for (sums, group) in tile_sums
            .chunks_exact_mut(P * C * lanes)
            .zip(panels.chunks_exact(P * k * lanes))
        {
            let group: [&[f32]; P] = std::array::from_fn(|g| &group[(g * k + k0) * lanes..]);
            tile::<S, C, P>(sums, k0 > 0, group, w, row_stride, rows);
        }
    }
}

/// One tile over `k` weight rows: `sums[(g·C + j)·L + lane] (+)= Σ_p w[p·row_stride + j] ·
/// panels[g][p·L + lane]` for the C columns j and the P panels g, added to the sums there when
/// `accumulate`.
///
/// # Safety
/// The CPU has S's instruction set (the lengths are checked: `w` holds (k - 1)·row_stride + C
/// values, each panel L·k and `sums` P·C·L).
#[inline(always)]
unsafe fn tile<S: Vector, const C: usize, const P: usize>(
    sums: &mut [f32],
    accumulate: bool,
    panels: [&[f32]; P],
    w: &[f32],
    row_stride: usize,
    k: usize,
) {
    let lanes = S::LANES;
    assert!(w.len() >= (k - 1) * row_stride + C && panels.iter().all(|p| p.len() >= k * lanes));
    assert_eq!(sums.len(), P * C * lanes);
    let sum = |g: usize, j: usize| sums.as_ptr().wrapping_add((g * C + j) * lanes);
    // acc[j][g]: column j of the tile against panel g.
    let mut acc: [[S::V; P]; C] = match accumulate {
        true => std::array::from_fn(|j| std::array::from_fn(|g| S::load(sum(g, j)))),
        false => [[S::zero(); P]; C],
    };
    let w = w.as_ptr();
    for p in 0..k {
        let lines: [S::V; P] = std::array::from_fn(|g| S::load(panels[g].as_ptr().add(p * lanes)));
        let row = w.add(p * row_stride);
        // A prefetch never faults: past the last row it asks for nothing useful, and no harm.
        _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(PREFETCH_ROWS * row_stride).cast());
        for (j, column) in acc.iter_mut().enumerate() {
            let weight = S::broadcast(row.add(j));
            for (sum, &line) in column.iter_mut().zip(&lines) {
                *sum = S::mul_add(weight, line, *sum);
            }
        }
    }
    let sums = sums.as_mut_ptr();
    for (j, column) in acc.into_iter().enumerate() {
        for (g, sum) in column.into_iter().enumerate() {
            S::store(sums.add((g * C + j) * lanes), sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_vec;

    #[test]
    fn prompt_products_match_the_f64_product_on_odd_shapes() {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.available()).collect();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2 with FMA");
            return;
        }
        // On each instruction set the CPU has: M within a panel, a whole panel, and panels plus
        // a few rows (every tile shape: one panel, three, two and more than three); N in whole
        // tiles, with a tail, narrower than a tile, and over several tasks; K within a block of
        // rows, across blocks, and long.
        for isa in isas {
            for (m, k, n) in [
                (4, 3, 7),
                (5, 1, 20),
                (8, 9, 25),
                (16, 64, 48),
                (17, 33, 70),
                (24, 17, 13),
                (40, 130, 16 * 9 + 5),
                (50, 20, 30),
                (64, 768, 96),
            ] {
                let x = random_vec(m * k, 1);
                let w = random_vec(k * n, 2);
                let start = random_vec(m * n, 3);
                for accumulate in [false, true] {
                    let mut sequential = start.clone();
                    product(isa, &mut sequential, accumulate, &x, &w, m, k, n, Par::Seq);
                    for par in [Par::Seq, Par::rayon(0)] {
                        let mut out = start.clone();
                        product(isa, &mut out, accumulate, &x, &w, m, k, n, par);
                        assert_eq!(
                            out, sequential,
                            "{isa:?} m={m} k={k} n={n}: the thread count changed a sum"
                        );
                        for (i, &got) in out.iter().enumerate() {
                            let (r, c) = (i / n, i % n);
                            let dot: f64 = (0..k).map(|p| x[r * k + p] as f64 * w[p * n + c] as f64).sum();
                            let expected = dot + if accumulate { start[i] as f64 } else { 0.0 };
                            assert!(
                                (got as f64 - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                                "{isa:?} m={m} k={k} n={n} accumulate={accumulate} out[{r}, {c}]: {got} vs {expected}"
                            );
                        }
                    }
                }
            }
        }
    }
}
