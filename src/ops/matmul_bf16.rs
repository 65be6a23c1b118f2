//! Matrix products for bf16 training: the two operands rounded to bf16 (as PyTorch's autocast
//! does), the products summed in f32, the output f32.
//!
//! `vdpbf16ps` (AVX512-BF16) multiplies 16 pairs of bf16 values and adds each pair's two
//! products to one f32 lane: `acc[j] += a[2j]·b[2j] + a[2j+1]·b[2j+1]`, twice the work of an
//! f32 FMA per instruction. The product is blocked as in GotoBLAS, with the bf16 rounding done
//! while packing:
//!
//! ```text
//! for each block of KC inner indices:     (more than one block of columns: pack all of this
//!                                          thread's rows of A [rows, KC] once, here)
//!   for each block of NC output columns:  pack B [KC, NC] -> panels of NR columns, k in pairs
//!     for each block of MC output rows:   (else pack A [MC, KC] here) -> panels of MR rows
//!       for each (MR x NR) tile:          out[tile] += A panel · B panel   (the micro-kernel)
//! ```
//!
//! A B panel is [KC/2][NR][2]: one 64-byte load gives 16 columns' pair (k, k+1); an A panel is
//! [KC/2][MR][2]: one 32-bit broadcast gives a row's pair. The micro-kernel keeps the MR x NR
//! tile (6 x 64 f32: 24 registers) in registers over the whole KC. The threads split the output
//! rows, and each packs its own B blocks (on the 2-core Zen 4 host, panels packed by the other
//! core made the products 2x slower). Every output entry sums its KC blocks in the same order
//! whichever thread computes it, so results do not depend on the thread count. The first block
//! of a product that does not accumulate writes its outputs rather than adding to zeros.
//!
//! Where the CPU has AMX ([`super::amx`]), `tdpbf16ps` does 16 x 16 x 32 products per
//! instruction on tiles held in their own registers: the micro-tile is 32 x 32 outputs (four C
//! tiles) from two A tiles of 16 rows and two B tiles of 16 columns, 16 pairs a step. The B
//! panels are the same (a tile row is 16 columns' pair: 64 bytes of a panel row); an A panel is
//! packed [MR][pairs] instead, so that a tile row is one row's 16 pairs. On the Xeon with AMX, 2 threads:
//! the products of a GPT-2 124M step run at 500-850 GFLOP/s (2.2-2.4x faer's f32), the
//! `vdpbf16ps` kernel at 170 (0.6x: this CPU does half as many `vdpbf16ps` as FMAs per cycle).
//!
//! A CPU without AVX512-BF16 runs the same packing with a plain-Rust micro-kernel of the same
//! arithmetic (slower than f32: training falls back to f32 products there).

use super::lowp::half::bf16_pair;
#[cfg(target_arch = "x86_64")]
use super::lowp::{kernel::has_feature, Bf16Kernel, Kernels};
use faer::Par;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Micro-tile rows and columns (NR = 4 vectors of 16 lanes) of the broadcasting kernels.
const MR: usize = 6;
const NR: usize = 64;
/// The AMX micro-tile's rows (two tiles of 16) and the pairs of one step (a tile row).
#[cfg(target_arch = "x86_64")]
const AMX_MR: usize = 2 * super::amx::ROWS;
#[cfg(target_arch = "x86_64")]
const AMX_PAIRS: usize = super::amx::ROW_BYTES / 4;
/// Inner indices per block, GPT-2's width: a B panel of KC x NR bf16 is 96 KiB (in L2), and
/// each block adds the tiles to the outputs again (benches/matmul.rs on Zen 5: the products
/// 1.1x faster than with 384, as fast as with 1536; on the Xeon AMX's tiles likewise).
const KC: usize = 768;
/// The most rows a micro-tile has, whichever kernel (AMX's two tiles of 16).
const MAX_MR: usize = 32;
/// Output rows per packed A block (192 x 768 bf16 = 288 KiB, in L2).
const MC: usize = 192;
// A block starts a panel, whichever kernel: packed rows are found by panel.
const _: () = assert!(MC.is_multiple_of(MR) && MC.is_multiple_of(MAX_MR));
/// Output columns per packed B block (768 x 2048 bf16 = 3 MiB, in L3).
const NC: usize = 2048;
/// AMX's: 768 x 4096 bf16 (6 MiB, in L3): a training step 5% faster than with 2048 on the Xeon,
/// 8192 no faster (measured when A was still packed again for each block of columns).
#[cfg(target_arch = "x86_64")]
const AMX_NC: usize = 4096;

/// Which micro-kernel runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKernel {
    /// Intel AMX `tdpbf16ps` ([`super::amx`]): tiles of 32 x 64 outputs, 16 pairs a step.
    #[cfg(target_arch = "x86_64")]
    Amx,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    Scalar,
}

impl TileKernel {
    /// The CPU features the `vdpbf16ps` kernel needs: those of the bf16 weights' `avx512bf16`
    /// kernel, and AVX512BW, which its packing uses (the AMX kernel packs the same way).
    pub const SIMD_REQUIRES: [&str; 3] = ["avx512f", "avx512_bf16", "avx512bw"];

    /// The bf16 weights' kernel as `GPT2_KERNEL` leaves it ([`Kernels::from_env`]): `amx`
    /// (whose requirements include [`TileKernel::SIMD_REQUIRES`]) runs AMX tiles, `avx512bf16`
    /// `vdpbf16ps` where the CPU has [`TileKernel::SIMD_REQUIRES`], anything else plain Rust.
    /// Decided once per process: every product of a run asks.
    pub fn best() -> Self {
        static BEST: OnceLock<TileKernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            match Kernels::from_env().map(|k| k.bf16()) {
                Ok(Bf16Kernel::Amx) => return TileKernel::Amx,
                Ok(Bf16Kernel::Avx512Bf16) if TileKernel::SIMD_REQUIRES.iter().all(|f| has_feature(f)) => {
                    return TileKernel::Avx512Bf16
                }
                _ => {}
            }
            TileKernel::Scalar
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            TileKernel::Amx => "amx",
            #[cfg(target_arch = "x86_64")]
            TileKernel::Avx512Bf16 => "avx512bf16",
            TileKernel::Scalar => "scalar",
        }
    }

    /// Whether products in bf16 run faster than in f32 on this CPU (a SIMD kernel exists).
    pub fn accelerated() -> bool {
        TileKernel::best() != TileKernel::Scalar
    }

    /// Output columns per block.
    fn nc(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            TileKernel::Amx => AMX_NC,
            _ => NC,
        }
    }

    /// Rows of a micro-tile, and of a packed A panel.
    fn tile_rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            TileKernel::Amx => AMX_MR,
            _ => MR,
        }
    }

    /// Pairs a panel holds for `kc` inner indices: an AMX step takes 16 pairs, so its panels
    /// end in zero pairs up to a multiple of 16.
    fn pairs(self, kc: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            TileKernel::Amx => kc.div_ceil(2 * AMX_PAIRS) * AMX_PAIRS,
            _ => kc.div_ceil(2),
        }
    }

    /// Where an A panel of `pairs` pairs keeps row i's pair p: `p·along + i·across`. The
    /// broadcasting kernels read one pair of every row a step ([pairs][MR]); an AMX tile row is
    /// one row's 16 pairs ([MR][pairs]).
    fn a_layout(self, pairs: usize) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            TileKernel::Amx => (1, pairs),
            _ => {
                let _ = pairs;
                (MR, 1)
            }
        }
    }
}

/// `out [m, n] (=|+=) op(a) · op(b)` with the operands rounded to bf16 and f32 sums, where
/// op(a) is [m, k] and op(b) [k, n]; `a` is stored [m, k] (or [k, m] when `a_t`), `b` [k, n]
/// (or [n, k] when `b_t`), as for [`super::matmul::gemm`]. Output rows are split across the
/// threads of `par`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    out: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    m: usize,
    k: usize,
    n: usize,
    par: Par,
    kernel: TileKernel,
) {
    assert!(out.len() == m * n && a.len() == m * k && b.len() == k * n);
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    let a = Operand {
        data: a,
        transposed: a_t,
        rows: m,
        cols: k,
    };
    let b = Operand {
        data: b,
        transposed: b_t,
        rows: k,
        cols: n,
    };
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get(),
    };
    // Output rows in blocks of whole A panels, one per thread.
    let rows_per_task = m.div_ceil(threads).next_multiple_of(kernel.tile_rows());
    if threads == 1 || rows_per_task >= m {
        return gemm_rows(out, accumulate, 0..m, a, b, kernel);
    }
    out.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(task, out)| {
            let r0 = task * rows_per_task;
            gemm_rows(out, accumulate, r0..r0 + out.len() / n, a, b, kernel)
        });
}

thread_local! {
    /// Each thread's packed B block and A block, kept from product to product: fresh buffers
    /// of megabytes cost a page fault and a page clearing per 4 KiB, every product.
    static PACKED: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `out` (rows `rows` of the whole output, [rows.len(), n]) (=|+=) a[rows, :] · b, on this
/// thread: the first block of inner indices writes the outputs unless `accumulate`.
fn gemm_rows(
    out: &mut [f32],
    accumulate: bool,
    rows: std::ops::Range<usize>,
    a: Operand,
    b: Operand,
    kernel: TileKernel,
) {
    let (k, n) = (a.cols, b.cols);
    #[cfg(target_arch = "x86_64")]
    if kernel == TileKernel::Amx {
        // SAFETY: TileKernel::Amx is only made where Bf16Kernel::Amx is available (amx_tile,
        // amx_bf16, amx::granted()).
        unsafe { super::amx::configure(super::amx::Shape::Bf16) };
    }
    PACKED.with_borrow_mut(|(b_packed, a_packed)| {
        // Inner indices outermost: each output sums its blocks of them in order, as before,
        // and A's rows for one block of them can be packed once for every block of columns.
        let several_column_blocks = n > kernel.nc();
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let pairs = kernel.pairs(kc);
            if several_column_blocks {
                pack_a(a_packed, a, rows.start, rows.len(), p0, kc, kernel);
            }
            for j0 in (0..n).step_by(kernel.nc()) {
                let nc = kernel.nc().min(n - j0);
                b_packed.clear();
                b_packed.resize(nc.div_ceil(NR) * pairs * NR, 0);
                pack_b(b_packed, b, p0, kc, j0, nc, kernel);
                let block = Block {
                    j0,
                    nc,
                    p0,
                    kc,
                    b_packed,
                    replace: p0 == 0 && !accumulate,
                };
                let a_rows = match several_column_blocks {
                    true => ARows::Packed(a_packed),
                    false => ARows::ToPack(a, a_packed),
                };
                add_block(out, rows.clone(), a_rows, block, kernel);
            }
        }
    });
    #[cfg(target_arch = "x86_64")]
    if kernel == TileKernel::Amx {
        // SAFETY: as above.
        unsafe { super::amx::release() };
    }
}

/// A row-major matrix read as [rows, cols], stored transposed ([cols, rows]) when `transposed`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    transposed: bool,
    rows: usize,
    cols: usize,
}

impl Operand<'_> {
    /// Stored row `r` (a row of the matrix, or a column when transposed), from index `from`,
    /// `len` values (the stored row's end cuts it short).
    fn stored(&self, r: usize, from: usize, len: usize) -> &[f32] {
        let width = if self.transposed { self.rows } else { self.cols };
        &self.data[r * width..(r + 1) * width][from..(from + len).min(width)]
    }
}

/// Packs `pairs` pairs of neighbours in `src` (a zero after an odd last one) into
/// `dst[0], dst[stride], ...`.
fn pack_pairs_along(dst: &mut [u32], stride: usize, src: &[f32], pairs: usize, kernel: TileKernel) {
    assert!(pairs <= KC / 2 && src.len() <= 2 * pairs && dst.len() > (pairs - 1) * stride);
    let mut run = [0u32; KC / 2];
    round_pairs(&mut run, src, kernel);
    for (d, &pair) in dst.iter_mut().step_by(stride).zip(&run[..pairs]) {
        *d = pair;
    }
}

/// `run[p] = (src[2p], src[2p + 1])` rounded to bf16, a zero after an odd last one.
fn round_pairs(run: &mut [u32], src: &[f32], kernel: TileKernel) {
    assert!(run.len() >= src.len().div_ceil(2));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernels exist only where the CPU has AVX512F, BW and BF16 (best());
        // `run` holds src.len() / 2 pairs, rounded up (asserted).
        TileKernel::Amx | TileKernel::Avx512Bf16 => unsafe { x86::round_pairs(run, src) },
        TileKernel::Scalar => {
            for (pair, x) in run.iter_mut().zip(src.chunks(2)) {
                *pair = bf16_pair(x[0], x.get(1).copied().unwrap_or(0.0));
            }
        }
    }
}

/// `dst[j] = (first[j], second[j])` in bf16, second zero where absent (an odd last row).
fn pack_pairs_across(dst: &mut [u32], first: &[f32], second: Option<&[f32]>, kernel: TileKernel) {
    assert!(dst.len() >= first.len() && second.is_none_or(|s| s.len() == first.len()));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; dst holds first.len() entries (asserted).
        TileKernel::Amx | TileKernel::Avx512Bf16 => unsafe { x86::interleave_pairs(dst, first, second) },
        TileKernel::Scalar => match second {
            Some(second) => dst
                .iter_mut()
                .zip(first.iter().zip(second))
                .for_each(|(d, (&x, &y))| *d = bf16_pair(x, y)),
            None => dst.iter_mut().zip(first).for_each(|(d, &x)| *d = bf16_pair(x, 0.0)),
        },
    }
}

/// A packed block of B: columns j0..j0 + nc, inner indices p0..p0 + kc, in panels of NR
/// columns, [pairs][NR] each (`TileKernel::pairs`).
#[derive(Clone, Copy)]
struct Block<'a> {
    j0: usize,
    nc: usize,
    p0: usize,
    kc: usize,
    b_packed: &'a [u32],
    /// Whether its sums replace the outputs (the first block of a product that does not
    /// accumulate) rather than add to them.
    replace: bool,
}

/// A's rows for a block of B: packed already (all of this thread's rows, for several blocks of
/// columns), or to be packed MC rows at a time into the buffer (reused from block to block).
enum ARows<'a> {
    Packed(&'a [u32]),
    ToPack(Operand<'a>, &'a mut Vec<u32>),
}

/// `out` (rows `rows` of the whole output, [rows.len(), n]) (=|+=) a[rows, block's k] · the
/// B block, on this thread, MC rows at a time (an A block of MC x KC stays in L2 while every
/// panel of the B block passes it).
fn add_block(out: &mut [f32], rows: std::ops::Range<usize>, mut a_rows: ARows, block: Block, kernel: TileKernel) {
    let n = out.len() / rows.len();
    let (pairs, mr) = (kernel.pairs(block.kc), kernel.tile_rows());
    for i0 in rows.clone().step_by(MC) {
        let mc = MC.min(rows.end - i0);
        let a_block = match &mut a_rows {
            ARows::Packed(packed) => &packed[(i0 - rows.start) * pairs..][..mc.div_ceil(mr) * mr * pairs],
            ARows::ToPack(a, packed) => {
                pack_a(packed, *a, i0, mc, block.p0, block.kc, kernel);
                &packed[..]
            }
        };
        for (jp, b_panel) in block.b_packed.chunks_exact(pairs * NR).enumerate() {
            let (col, cols) = (block.j0 + jp * NR, NR.min(block.nc - jp * NR));
            for (ip, a_panel) in a_block.chunks_exact(pairs * mr).enumerate() {
                let (row, tile_rows) = (i0 + ip * mr, mr.min(mc - ip * mr));
                let tile = OutTile {
                    out: &mut out[(row - rows.start) * n + col..],
                    ld: n,
                    rows: tile_rows,
                    cols,
                    replace: block.replace,
                };
                add_tile(kernel, tile, a_panel, b_panel, pairs);
            }
        }
    }
}

/// Packs b[p0..p0 + kc, j0..j0 + nc] into zeroed panels of NR columns, [pairs][NR] each
/// (columns past nc and pairs past kc stay zero). Reading the f32 source is the cost, so it is
/// read in the order it is stored.
fn pack_b(packed: &mut [u32], b: Operand, p0: usize, kc: usize, j0: usize, nc: usize, kernel: TileKernel) {
    let panel_len = packed.len() / nc.div_ceil(NR);
    if b.transposed {
        // column j of b is stored row j: its k values are neighbours. 16 columns are rounded
        // into runs, then each panel row takes their 16 pairs p side by side (a whole 64-byte
        // line written at once, where a column at a time would write 4 bytes of every line).
        let mut runs = [[0u32; KC / 2]; 16];
        for (jp, panel) in packed.chunks_exact_mut(panel_len).enumerate() {
            let (col, cols) = (j0 + jp * NR, NR.min(nc - jp * NR));
            for c0 in (0..cols).step_by(16) {
                let width = 16.min(cols - c0);
                for (j, run) in runs[..width].iter_mut().enumerate() {
                    round_pairs(run, b.stored(col + c0 + j, p0, kc), kernel);
                }
                for (p, slot) in panel.chunks_exact_mut(NR).take(kc.div_ceil(2)).enumerate() {
                    for (out, run) in slot[c0..c0 + width].iter_mut().zip(&runs[..width]) {
                        *out = run[p];
                    }
                }
            }
        }
    } else {
        // rows 2p and 2p + 1 of b, each read across the whole block, into every panel's row p
        for p in 0..kc.div_ceil(2) {
            let r = p0 + 2 * p;
            let first = b.stored(r, j0, nc);
            let second = (2 * p + 1 < kc).then(|| b.stored(r + 1, j0, nc));
            for (jp, panel) in packed.chunks_exact_mut(panel_len).enumerate() {
                let cols = jp * NR..(jp * NR + NR).min(nc);
                let second = second.map(|s| &s[cols.clone()]);
                pack_pairs_across(&mut panel[p * NR..][..NR], &first[cols], second, kernel);
            }
        }
    }
}

/// Packs a[i0..i0 + mc, p0..p0 + kc] into panels of the kernel's tile rows, laid out as
/// [`TileKernel::a_layout`] says; rows past mc and pairs past kc are zero.
fn pack_a(packed: &mut Vec<u32>, a: Operand, i0: usize, mc: usize, p0: usize, kc: usize, kernel: TileKernel) {
    let (mr, pairs) = (kernel.tile_rows(), kernel.pairs(kc));
    let (along, across) = kernel.a_layout(pairs);
    packed.clear();
    packed.resize(mc.div_ceil(mr) * pairs * mr, 0);
    assert!(mr <= MAX_MR);
    if a.transposed && across == 1 {
        // column p of a is stored row p, and a panel's pair line p ([MR], across = 1) is the
        // interleave of its rows' entries in stored rows 2p and 2p + 1: for up to MC rows at a
        // time, one interleave of the two stored runs, then each panel's MR pairs copied.
        let mut line = [0u32; MC];
        for r0 in (0..mc).step_by(MC) {
            let len = MC.min(mc - r0);
            for p in 0..kc.div_ceil(2) {
                let c = p0 + 2 * p;
                let second = (2 * p + 1 < kc).then(|| a.stored(c + 1, i0 + r0, len));
                pack_pairs_across(&mut line[..len], a.stored(c, i0 + r0, len), second, kernel);
                for (q, pairs_of_panel) in line[..len].chunks(mr).enumerate() {
                    let panel = (r0 / mr + q) * pairs * mr;
                    packed[panel + p * along..][..pairs_of_panel.len()].copy_from_slice(pairs_of_panel);
                }
            }
        }
        return;
    }
    if a.transposed {
        // column p of a is stored row p: pairs of k sit in two stored rows. 16 pairs of every
        // row of a panel at a time, then placed row by row; the 32 stored rows are read
        // across the block, panel after panel.
        let mut columns = [[0u32; MAX_MR]; 16];
        for q0 in (0..kc.div_ceil(2)).step_by(16) {
            let count = 16.min(kc.div_ceil(2) - q0);
            for (ip, panel) in packed.chunks_exact_mut(pairs * mr).enumerate() {
                let (row, rows) = (i0 + ip * mr, mr.min(mc - ip * mr));
                for (q, column) in columns[..count].iter_mut().enumerate() {
                    let c = p0 + 2 * (q0 + q);
                    let second = (c + 1 < p0 + kc).then(|| a.stored(c + 1, row, rows));
                    pack_pairs_across(&mut column[..rows], a.stored(c, row, rows), second, kernel);
                }
                for i in 0..rows {
                    for (q, column) in columns[..count].iter().enumerate() {
                        panel[(q0 + q) * along + i * across] = column[i];
                    }
                }
            }
        }
        return;
    }
    // row i of a is stored row i: its k values are neighbours
    for (ip, panel) in packed.chunks_exact_mut(pairs * mr).enumerate() {
        let (row, rows) = (i0 + ip * mr, mr.min(mc - ip * mr));
        for i in 0..rows {
            let run = a.stored(row + i, p0, kc);
            pack_pairs_along(&mut panel[i * across..], along, run, kc.div_ceil(2), kernel);
        }
    }
}

/// Where a micro-tile's sums go: `out[i·ld + j]` for its first `rows` rows and `cols`
/// columns, written (`replace`) or added to.
struct OutTile<'a> {
    out: &'a mut [f32],
    ld: usize,
    rows: usize,
    cols: usize,
    replace: bool,
}

impl OutTile<'_> {
    /// Row i's outputs from column `col` on, one per value, written or added to.
    fn put(&mut self, i: usize, col: usize, values: &[f32]) {
        let out = &mut self.out[i * self.ld + col..][..values.len()];
        match self.replace {
            true => out.copy_from_slice(values),
            false => out.iter_mut().zip(values).for_each(|(o, v)| *o += v),
        }
    }
}

/// `tile (=|+=) a_panel · b_panel`, summing the panels' `pairs` pairs.
fn add_tile(kernel: TileKernel, mut tile: OutTile, a_panel: &[u32], b_panel: &[u32], pairs: usize) {
    let mr = kernel.tile_rows();
    let OutTile { rows, cols, ld, .. } = tile;
    assert!(a_panel.len() == pairs * mr && b_panel.len() == pairs * NR);
    assert!((1..=mr).contains(&rows) && cols <= NR && tile.out.len() >= (rows - 1) * ld + cols);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: TileKernel::Amx is only made where Bf16Kernel::Amx is available, and gemm_rows
        // configured this thread's tiles; the panels hold `pairs` (a multiple of 16) full steps
        // and `out` the tile (asserted above).
        TileKernel::Amx => unsafe { x86::add_amx_tile(tile, a_panel, b_panel, pairs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: TileKernel::Avx512Bf16 is only made where the CPU has AVX512F, BW and
        // BF16 (best()); the panels hold `pairs` full steps and `out` the tile's
        // rows x cols entries (asserted above).
        TileKernel::Avx512Bf16 => unsafe { x86::add_tile(tile, a_panel, b_panel, pairs) },
        TileKernel::Scalar => {
            for (i, sums) in scalar_tile(a_panel, b_panel).iter().enumerate().take(rows) {
                tile.put(i, 0, &sums[..cols]);
            }
        }
    }
}

/// The micro-kernel in plain Rust, with `vdpbf16ps`'s arithmetic as Intel documents it: the
/// products of bf16 values are exact in f32; the pair's second product is added to the sum,
/// then its first.
fn scalar_tile(a_panel: &[u32], b_panel: &[u32]) -> [[f32; NR]; MR] {
    let half = |pair: u32, second: bool| f32::from_bits(if second { pair & 0xffff_0000 } else { pair << 16 });
    let mut tile = [[0.0f32; NR]; MR];
    for (a, b) in a_panel.chunks_exact(MR).zip(b_panel.chunks_exact(NR)) {
        for (row, &a) in tile.iter_mut().zip(a) {
            let (a0, a1) = (half(a, false), half(a, true));
            for (t, &b) in row.iter_mut().zip(b) {
                *t = (*t + a1 * half(b, true)) + a0 * half(b, false);
            }
        }
    }
    tile
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::amx;
    use super::{OutTile, AMX_MR, AMX_PAIRS, MR, NR};
    use std::arch::x86_64::*;

    /// `run[p] = (src[2p], src[2p + 1])` rounded to bf16 (a zero past the end of src).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_pairs(run: &mut [u32], src: &[f32]) {
        let first = |count: usize| ((1u32 << count.min(16)) - 1) as __mmask16;
        for (i, chunk) in src.chunks(32).enumerate() {
            let lo = _mm512_maskz_loadu_ps(first(chunk.len()), chunk.as_ptr());
            let hi = _mm512_maskz_loadu_ps(first(chunk.len().saturating_sub(16)), chunk.as_ptr().wrapping_add(16));
            // 32 bf16 in order, lo's 16 then hi's: 16 pairs
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(
                run.as_mut_ptr().add(16 * i) as *mut i32,
                first(chunk.len().div_ceil(2)),
                pairs,
            );
        }
    }

    /// `dst[j] = (first[j], second[j])` rounded to bf16 (second zero when None).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn interleave_pairs(dst: &mut [u32], first: &[f32], second: Option<&[f32]>) {
        // after cvtne2ps: u16 lanes 0..16 first, 16..32 second; lane 2j <- j, 2j + 1 <- 16 + j
        const ORDER: [u16; 32] = {
            let mut order = [0; 32];
            let mut j = 0;
            while j < 16 {
                (order[2 * j], order[2 * j + 1]) = (j as u16, 16 + j as u16);
                j += 1;
            }
            order
        };
        let order = _mm512_loadu_si512(ORDER.as_ptr() as *const _);
        for j in (0..first.len()).step_by(16) {
            let mask = ((1u32 << (first.len() - j).min(16)) - 1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(mask, first.as_ptr().add(j));
            let y = match second {
                Some(second) => _mm512_maskz_loadu_ps(mask, second.as_ptr().add(j)),
                None => _mm512_setzero_ps(),
            };
            let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y, x));
            let pairs = _mm512_permutexvar_epi16(order, halves);
            _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(j) as *mut i32, mask, pairs);
        }
    }

    /// The tile in 24 registers (acc[i][v]: row i's columns 16v..16v + 16), added to `out` (or
    /// stored, when `replace`) with masked loads and stores at the edges.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn add_tile(tile: OutTile, a_panel: &[u32], b_panel: &[u32], pairs: usize) {
        let OutTile {
            out,
            ld,
            rows,
            cols,
            replace,
        } = tile;
        const VECTORS: usize = NR / 16;
        for i in 0..rows {
            for v in 0..cols.div_ceil(16) {
                _mm_prefetch::<_MM_HINT_T0>(out.as_ptr().add(i * ld + 16 * v) as *const i8);
            }
        }
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; MR];
        let (mut a, mut b) = (a_panel.as_ptr(), b_panel.as_ptr());
        for _ in 0..pairs {
            let bv: [__m512bh; VECTORS] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_si512(b.add(16 * v) as *const _)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i) as i32));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        // lanes of vector v that lie within the tile's cols
        let masks: [__mmask16; VECTORS] =
            std::array::from_fn(|v| ((1u32 << cols.saturating_sub(16 * v).min(16)) - 1) as __mmask16);
        for (i, acc) in acc.iter().enumerate().take(rows) {
            let row = out.as_mut_ptr().add(i * ld);
            for (v, (&acc, &mask)) in acc.iter().zip(&masks).enumerate() {
                let p = row.add(16 * v);
                let sum = if replace {
                    acc
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), acc)
                };
                _mm512_mask_storeu_ps(p, mask, sum);
            }
        }
    }

    /// The tile as AMX computes it: for each half of the 64 columns, the 32 x 32 outputs in
    /// four C tiles (two A tiles of 16 rows, [rows][pairs], by two B tiles of 16 columns, read
    /// from the [pairs][NR] panel 256 bytes a row). A whole 32 x 32 is read from `out` (unless
    /// `replace`), summed into and stored back as tiles; an edge is computed into `sums` and
    /// added to `out` (or stored), its tiles wholly past `rows` or `cols` skipped.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_amx_tile(mut tile: OutTile, a_panel: &[u32], b_panel: &[u32], pairs: usize) {
        let OutTile {
            ld,
            rows,
            cols,
            replace,
            ..
        } = tile;
        const HALF: usize = 2 * amx::ROWS;
        let a = amx::Tiles {
            base: a_panel.as_ptr() as *const u8,
            stride: 4 * pairs,
            next_tile: amx::ROWS * 4 * pairs,
            next_step: amx::ROW_BYTES,
        };
        let steps = pairs / AMX_PAIRS;
        for h in 0..cols.div_ceil(HALF) {
            let b = amx::Tiles {
                base: b_panel.as_ptr().add(HALF * h) as *const u8,
                stride: 4 * NR,
                next_tile: amx::ROW_BYTES,
                next_step: AMX_PAIRS * 4 * NR,
            };
            let width = HALF.min(cols - HALF * h);
            if rows == AMX_MR && width == HALF {
                let c = tile.out.as_mut_ptr().add(HALF * h) as *mut u8;
                amx::product_bf16(2, 2, c, 4 * ld, !replace, a, b, steps);
                continue;
            }
            let mut sums = [[0.0f32; HALF]; AMX_MR];
            let c = sums.as_mut_ptr() as *mut u8;
            let (row_tiles, col_tiles) = (rows.div_ceil(amx::ROWS), width.div_ceil(amx::ROWS));
            amx::product_bf16(row_tiles, col_tiles, c, 4 * HALF, false, a, b, steps);
            for (i, sums) in sums.iter().enumerate().take(rows) {
                tile.put(i, HALF * h, &sums[..width]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lowp::half::{bf16_to_f32, f32_to_bf16};
    #[cfg(target_arch = "x86_64")]
    use crate::ops::lowp::Kernel;
    use crate::ops::test_util::random_vec;

    /// The product of the bf16-rounded operands, summed in f64.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let round = |x: f32| bf16_to_f32(f32_to_bf16(x)) as f64;
        (0..m * n)
            .map(|i| (0..k).map(|p| round(a[i / n * k + p]) * round(b[p * n + i % n])).sum())
            .collect()
    }

    fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| x[(i % rows) * cols + i / rows]).collect()
    }

    #[test]
    fn every_kernel_and_layout_gives_the_product_of_the_rounded_operands() {
        let two = Par::Rayon(std::num::NonZeroUsize::new(2).unwrap());
        let mut kernels = vec![TileKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if TileKernel::SIMD_REQUIRES.iter().all(|f| has_feature(f)) {
                kernels.push(TileKernel::Avx512Bf16);
            }
            if Bf16Kernel::Amx.available() {
                kernels.push(TileKernel::Amx);
            }
        }
        println!("micro-kernels tested on this CPU: {kernels:?}");
        // Odd sizes: partial tiles, an odd k (a half-empty last pair), more than one KC, MC and NC
        // block (NC: 2048, or AMX's 4096).
        for (m, k, n) in [
            (1, 1, 1),
            (7, 5, 3),
            (13, 301, 70),
            (101, 517, 130),
            (200, 40, 2100),
            (40, 70, 4200),
            (64, 1601, 96),
        ] {
            let (a, b) = (random_vec(m * k, 1), random_vec(k * n, 2));
            let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
            let expected = reference(&a, &b, m, k, n);
            let start = random_vec(m * n, 3);
            for &kernel in &kernels {
                for (a_t, b_t, par) in [
                    (false, false, Par::Seq),
                    (true, false, two),
                    (false, true, two),
                    (true, true, Par::Seq),
                ] {
                    let lhs = if a_t { &at } else { &a };
                    let rhs = if b_t { &bt } else { &b };
                    let mut out = start.clone();
                    gemm_bf16(&mut out, true, lhs, a_t, rhs, b_t, m, k, n, par, kernel);
                    for ((o, s), e) in out.iter().zip(&start).zip(&expected) {
                        let got = (o - s) as f64;
                        assert!(
                            (got - e).abs() <= 1e-5 * (1.0 + k as f64),
                            "{m}x{k}x{n} {kernel:?} a_t={a_t} b_t={b_t}: {got} vs {e}"
                        );
                    }
                    let mut replaced = start.clone();
                    gemm_bf16(&mut replaced, false, lhs, a_t, rhs, b_t, m, k, n, par, kernel);
                    assert!(replaced
                        .iter()
                        .zip(&expected)
                        .all(|(o, e)| (*o as f64 - e).abs() <= 1e-5 * (1.0 + k as f64)));
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (m, k, n) = (50, 600, 200);
        let (a, b) = (random_vec(m * k, 4), random_vec(k * n, 5));
        let run = |par, kernel| {
            let mut out = vec![0.0; m * n];
            gemm_bf16(&mut out, false, &a, false, &b, false, m, k, n, par, kernel);
            out
        };
        let one = run(Par::Seq, TileKernel::best());
        let three = run(Par::Rayon(std::num::NonZeroUsize::new(3).unwrap()), TileKernel::best());
        assert_eq!(one, three);
    }
}
