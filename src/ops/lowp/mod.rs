//! Low-precision weights for inference: a weight matrix stored in bf16 or q8_0 ([`LowpMatrix`]),
//! and its product with f32 activations on the kernel the CPU does best ([`kernel`]).
//!
//! Decoding one token reads every weight once, so its speed is the weights' bytes over the
//! memory bandwidth: bf16 halves the bytes of f32, q8_0 (34 bytes per 32 weights) nearly
//! quarters them. A matrix is stored [N, K]: one row of K inputs per output, each row
//! zero-padded to a multiple of 32 (q8_0's block); q8_0 keeps its rows in groups of 16,
//! interleaved ([`q8_0::Groups`]). The product `y [M, N] = x [M, K] · Wᵀ` splits the N rows
//! (q8_0: the groups) across threads (decoding, about 1 MiB of weights per task, at least 2
//! tasks per thread; a prompt, 256 KiB and 4); within a task it computes tiles, R activation
//! rows by S weight rows (bf16: dot products; q8_0: S groups, 16 outputs in the lanes of a
//! register), so that a few rows (M > 1) read each weight once per R rows rather than once per
//! row. A bf16 prompt of 12 rows or more ([`panel_rows`]) goes to the AVX-512 [`panel`] kernels
//! where the CPU has them: each weight broadcast against 16 activation rows at once; where it
//! has AMX, a prompt of 6 rows or more in either dtype goes to AMX tiles of 16 weight rows by 16
//! prompt rows; on AVX2 alone, a bf16 prompt of 14 rows or more goes to panels in f32 (all in
//! [`panel`]). A q8_0 prompt stays on its tiles otherwise: with the outputs in the lanes they
//! add nothing across lanes, like the panels.

pub mod bf16;
pub mod half;
pub mod kernel;
#[cfg(target_arch = "x86_64")]
mod panel;
pub mod q8_0;

pub use kernel::{Bf16Kernel, Kernel, Kernels, Q8Kernel};

use half::f32_to_bf16;
use q8_0::{Groups, GROUP};
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// Weights per q8_0 block; rows are padded to a multiple of it in every dtype.
pub const BLOCK: usize = 32;

/// Bytes of weights a task of a prompt's product reads, about: large enough that scheduling a
/// task costs little next to computing it, small enough that every thread gets several tasks
/// and the threads finish together.
const TASK_BYTES: usize = 256 << 10;
/// The same when decoding (fewer than [`PREFILL_ROWS`] activation rows), where a task only
/// streams its rows: long tasks keep each of a tile's [`DECODE_STREAMS`] streams going for
/// longer after the prefetchers pick it up. GPT-2 124M in q8_0 decoded 7% faster with tasks of
/// 1 MiB, at least 2 a thread, than of 256 KiB, at least 4 (a probe timing 128 tokens inside
/// the pool, 8 alternating rounds, median ratio 0.927, Zen 5; bf16 level: 0.988); prompts split
/// so were mixed (bf16 and q8_0 at 16 and 64 rows: 0.87-1.07), so they keep the finer split.
const DECODE_TASK_BYTES: usize = 1 << 20;

/// Tiles: decoding (M < [`PREFILL_ROWS`]) reads `DECODE_STREAMS` weight rows side by side (more
/// reads in flight); a prompt reads `PREFILL_ROWS` activation rows against `PREFILL_COLS`
/// weight rows at a time. With the weights on huge pages ([`crate::memory::HugePageAlloc`]),
/// 2 streams decode faster than 4 (Zen 5, `gpt2 bench generate --preset gpt2 --runs 3`
/// alternating: q8_0 464-467 against 424-427 tokens/s with memory at 80-85 GB/s, 368-371
/// against 352-366 at 54; bf16 198-204 against 188-197 at 55), 1 or 8 slower (340, 298-324).
/// q8_0 stored in groups (a stream is then a run of groups of 16 rows) kept 2: three rounds of
/// 1, 2, 3 and 4 streams decoded at 359 / 374 / 362 / 318, 371 / 370 / 382 / 341 tokens/s at
/// 50-57 GB/s, and 439 / 483 with 1 and 2 at 76-80.
const DECODE_STREAMS: usize = 2;
const PREFILL_ROWS: usize = 4;
const PREFILL_COLS: usize = 2;
/// Activation rows per panel of the [`panel`] kernels: the f32 lanes of a 512-bit register.
const PANEL_ROWS: usize = 16;
/// A longer prompt goes through the panel kernels (and q8_0's tiles) this many rows at a time.
/// Each task of weight rows runs over every panel of the prompt, so with all of a long prompt
/// at once the panels (512 rows of K = 3072 in bf16 pairs: 3 MiB) come from L3 again for every
/// tile of weights; 64 rows (1-4 panels: at most 384 KiB in bf16, 768 KiB in f32 on AVX2, 192
/// KiB of q8) stay in L2, and the weights are read once per 64 rows. GPT-2 124M's 48 block
/// products of 512 rows (Zen 5, 2 threads, a probe): bf16 208-211 ms at once, 138-150 in
/// blocks of 32-64 rows; q8_0 (on its panels then, before [`q8_0::Groups`]) 212-265 against
/// 144-180; at 128 rows level. q8_0's tiles now: whole prompts of 256 and 512 tokens 1.1-1.2x
/// and 1.03-1.1x slower than in blocks of 64 (`gpt2 bench generate`, three pairs).
const PROMPT_BLOCK_ROWS: usize = 64;

/// How a model's weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
    Q8_0,
}

impl WeightDtype {
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Q8_0 => "q8_0",
        }
    }

    /// Bytes per weight: 4, 2, 34/32.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightDtype::F32 => 4.0,
            WeightDtype::Bf16 => 2.0,
            WeightDtype::Q8_0 => (2 + BLOCK) as f64 / BLOCK as f64,
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "bf16" => Ok(WeightDtype::Bf16),
            "q8_0" => Ok(WeightDtype::Q8_0),
            _ => Err(format!("unknown dtype '{s}': expected f32, bf16 or q8_0")),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Storage {
    Bf16(Vec<u16>), // [N, padded]
    Q8_0(Groups),   // ⌈N/16⌉ groups of 16 rows of padded / 32 blocks
}

/// A weight matrix [N, K] in bf16 or q8_0, each row padded with zeros to `padded` (a
/// multiple of 32) inputs.
pub struct LowpMatrix {
    rows: usize,
    cols: usize,
    padded: usize,
    data: Storage,
}

impl LowpMatrix {
    /// `w` [N, K] row-major: row i holds output i's weights (the LM head, wte).
    pub fn from_rows(w: &[f32], n: usize, k: usize, dtype: WeightDtype) -> Result<Self, String> {
        assert_eq!(w.len(), n * k);
        Self::from_row_chunks(n, k, dtype, n, |rows, out| {
            out.copy_from_slice(&w[rows.start * k..rows.end * k]);
            Ok(())
        })
    }

    /// `w` [K, N] row-major, a Conv1D weight (`y = x·W`): column i holds output i's weights.
    pub fn from_columns(w: &[f32], k: usize, n: usize, dtype: WeightDtype) -> Result<Self, String> {
        assert_eq!(w.len(), n * k);
        Self::from_row_chunks(n, k, dtype, n, |rows, out| {
            out.par_chunks_mut(k)
                .zip(rows)
                .for_each(|(row, i)| row.iter_mut().zip(w[i..].iter().step_by(n)).for_each(|(r, &w)| *r = w));
            Ok(())
        })
    }

    /// Stores N rows of K weights in `dtype`, about `chunk_rows` at a time (a multiple of 16):
    /// `chunk(rows, out)` writes rows `rows` in f32 into `out` [rows.len(), K] (so a large matrix
    /// never needs a whole f32 copy). Every value must be finite.
    pub fn from_row_chunks(
        n: usize,
        k: usize,
        dtype: WeightDtype,
        chunk_rows: usize,
        mut chunk: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> Result<(), String>,
    ) -> Result<Self, String> {
        let padded = k.div_ceil(BLOCK) * BLOCK;
        let mut data = match dtype {
            WeightDtype::F32 => return Err("f32 weights are not stored as a LowpMatrix".into()),
            WeightDtype::Bf16 => Storage::Bf16(vec![0; n * padded]),
            WeightDtype::Q8_0 => Storage::Q8_0(Groups::zeros(n, padded / BLOCK)),
        };
        let chunk_rows = chunk_rows.div_ceil(GROUP).max(1) * GROUP;
        let mut buf = Vec::new();
        for first in (0..n).step_by(chunk_rows) {
            let rows = first..(first + chunk_rows).min(n);
            buf.resize(rows.len() * k, 0.0);
            chunk(rows, &mut buf)?;
            let bad = buf.par_iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                return Err(format!(
                    "holds {bad} NaN or infinite values, which {dtype} cannot store"
                ));
            }
            // each row from a zero-padded f32 copy [padded]
            match &mut data {
                Storage::Bf16(out) => out[first * padded..]
                    .par_chunks_mut(padded)
                    .zip(buf.par_chunks(k))
                    .for_each(|(out, x)| out.iter_mut().zip(x).for_each(|(o, &x)| *o = f32_to_bf16(x))),
                Storage::Q8_0(groups) => groups.quantize_rows(first, &buf, k),
            }
        }
        Ok(LowpMatrix {
            rows: n,
            cols: k,
            padded,
            data,
        })
    }

    /// N, the outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// K, the inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            Storage::Bf16(_) => WeightDtype::Bf16,
            Storage::Q8_0(_) => WeightDtype::Q8_0,
        }
    }

    /// Bytes the weights take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Storage::Bf16(w) => std::mem::size_of_val(w.as_slice()),
            Storage::Q8_0(w) => std::mem::size_of_val(w.lines()),
        }
    }

    /// The stored values as bytes (bf16 bits; q8_0 groups).
    pub fn as_bytes(&self) -> &[u8] {
        let (ptr, len) = match &self.data {
            Storage::Bf16(w) => (w.as_ptr() as *const u8, std::mem::size_of_val(w.as_slice())),
            Storage::Q8_0(w) => (w.lines().as_ptr() as *const u8, std::mem::size_of_val(w.lines())),
        };
        // SAFETY: `len` bytes from `ptr` are the initialised contents of one Vec, borrowed from self.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// Row i as f32, into `out` [K].
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let k = self.cols;
        match &self.data {
            Storage::Bf16(w) => bf16::dequantize_row(&w[i * self.padded..][..k], out),
            Storage::Q8_0(w) => {
                assert_eq!(out.len(), k);
                w.dequantize_row(i, out)
            }
        }
    }

    /// `out [M, N] = x [M, K] · Wᵀ`, on `kernels`: a prompt on the AVX-512, AMX or AVX2 panel
    /// kernels (or q8_0's AMX kernel) from [`panel_rows`] rows on, else in tiles; a long prompt
    /// on the panels and any q8_0 prompt 64 rows at a time (a last block too short for the
    /// panels in tiles).
    pub fn matmul(&self, out: &mut [f32], x: &[f32], m: usize, kernels: Kernels) {
        assert!(x.len() == m * self.cols && out.len() == m * self.rows);
        let prompt_kernels = panel_rows(self.dtype(), kernels).is_some_and(|rows| m >= rows);
        if m > PROMPT_BLOCK_ROWS && (prompt_kernels || self.dtype() == WeightDtype::Q8_0) {
            let (out_block, x_block) = (PROMPT_BLOCK_ROWS * self.rows, PROMPT_BLOCK_ROWS * self.cols);
            for (out, x) in out.chunks_mut(out_block).zip(x.chunks(x_block)) {
                self.matmul(out, x, x.len() / self.cols, kernels);
            }
            return;
        }
        let (k, padded) = (self.cols, self.padded);
        match &self.data {
            #[cfg(target_arch = "x86_64")]
            Storage::Bf16(w) if prompt_kernels => panel::bf16(out, x, m, k, w, padded, kernels.bf16()),
            Storage::Bf16(w) if m == 1 => bf16_t(out, w, x, k, padded, kernels.bf16()), // [1, N] is its own transpose
            Storage::Bf16(w) => {
                let mut out_t = vec![0.0; m * self.rows];
                bf16_t(&mut out_t, w, x, k, padded, kernels.bf16());
                transpose(out, &out_t, self.rows, m);
            }
            // one row of whole groups: out is already [⌈N/16⌉, 1] of 16 outputs
            Storage::Q8_0(w) if m == 1 && self.rows.is_multiple_of(GROUP) => {
                q8_0_product(out.as_chunks_mut::<GROUP>().0, w, x, k, padded, kernels.q8_0())
            }
            Storage::Q8_0(w) => {
                let mut by_group = vec![[0.0f32; GROUP]; self.rows.div_ceil(GROUP) * m];
                q8_0_product(&mut by_group, w, x, k, padded, kernels.q8_0());
                ungroup(out, &by_group, self.rows, m);
            }
        }
    }
}

/// `out_t [N, M] = W · xᵀ` for the bf16 weights `w` [N, `padded`] and x [M, K], in dot-product
/// tiles (with `amx`, the `vdpbf16ps` ones: AMX tiles serve prompts, [`panel_rows`]).
fn bf16_t(out_t: &mut [f32], w: &[u16], x: &[f32], k: usize, padded: usize, kernel: Bf16Kernel) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16 => product(
            &bf16::Avx512,
            out_t,
            w,
            padded,
            &row_slices(&bf16::round_rows(x, k, padded), padded),
        ),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx2 => product(
            &bf16::Avx2,
            out_t,
            w,
            padded,
            &row_slices(&pad_rows(x, k, padded), padded),
        ),
        Bf16Kernel::Scalar => product(
            &bf16::Scalar,
            out_t,
            w,
            padded,
            &row_slices(&pad_rows(x, k, padded), padded),
        ),
    }
}

/// The rows of length `len` of `x`.
fn row_slices<T>(x: &[T], len: usize) -> Vec<&[T]> {
    x.chunks_exact(len).collect()
}

/// `by_group [⌈N/16⌉, M]`: entry (g, r) the 16 outputs of group g for activation row r, of the
/// q8_0 `groups` times x [M, K] (quantized here, rows padded to `padded`): on AMX tiles where
/// the kernel is `amx` and the prompt has [`AMX_PROMPT_ROWS`] rows or more, else in tiles.
fn q8_0_product(by_group: &mut [[f32; GROUP]], groups: &Groups, x: &[f32], k: usize, padded: usize, kernel: Q8Kernel) {
    let per_group = q8_0::lines_per_group(groups.blocks());
    let w = groups.lines();
    let m = x.len() / k;
    #[cfg(target_arch = "x86_64")]
    if kernel == Q8Kernel::Amx && m >= AMX_PROMPT_ROWS {
        let acts = q8_0::Activations::quantize(x, k, padded, crate::ops::amx::ROWS);
        return for_each_task(by_group, m, w, per_group, 1, |out, groups| {
            // SAFETY: Q8Kernel::Amx is only chosen where it is available (amx_tile, amx_int8,
            // avx512f, f16c, amx::granted()); the activations hold whole tiles of 16 rows; each
            // task shapes its thread's tiles as Q8Block, which amx_groups wants, and releases them.
            unsafe {
                crate::ops::amx::configure(crate::ops::amx::Shape::Q8Block);
                q8_0::amx_groups(&mut crate::ops::amx::Hardware, out, groups, &acts);
                crate::ops::amx::release();
            }
        });
    }
    let acts = q8_0::Activations::quantize(x, k, padded, 1);
    let x = acts.rows();
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Q8Kernel::Amx | Q8Kernel::Avx512Vnni => product(&q8_0::Vnni512, by_group, w, per_group, &x),
        #[cfg(target_arch = "x86_64")]
        Q8Kernel::AvxVnni => product(&q8_0::AvxVnni, by_group, w, per_group, &x),
        #[cfg(target_arch = "x86_64")]
        Q8Kernel::Avx2 => product(&q8_0::Avx2, by_group, w, per_group, &x),
        Q8Kernel::Scalar => product(&q8_0::Scalar, by_group, w, per_group, &x),
    }
}

/// `out [M, N]` from `by_group [⌈N/16⌉, M]` of 16 outputs each: `out[r, n] = by_group[n/16, r][n % 16]`.
fn ungroup(out: &mut [f32], by_group: &[[f32; GROUP]], n: usize, m: usize) {
    out.par_chunks_mut(n).enumerate().for_each(|(r, out)| {
        for (g, out) in out.chunks_mut(GROUP).enumerate() {
            out.copy_from_slice(&by_group[g * m + r][..out.len()]);
        }
    });
}

/// From how many rows a product with `dtype` weights runs on the panel kernels of [`panel`]
/// with `kernels` (bf16: AVX-512 where its kernel is `avx512bf16`, AMX, or f32 on AVX2:
/// [`AVX2_PROMPT_ROWS`]; q8_0: its AMX kernel, [`q8_0::amx_groups`]), None if it never does.
/// Below it the dot-product tiles, which waste no lanes, are faster: a panel costs the same for
/// 1 to 16 rows, and the 48 products of GPT-2 124M with cold weights took (bf16 tiles / panels)
/// 10.1 / 14.8 ms at 8 rows, 14.1-14.9 / 14.8-15.3 at 11, 14.2-15.4 / 15.1 at 12 (Zen 4, 2
/// threads).
pub fn panel_rows(dtype: WeightDtype, kernels: Kernels) -> Option<usize> {
    match dtype {
        #[cfg(target_arch = "x86_64")]
        WeightDtype::Bf16 if kernels.bf16() == Bf16Kernel::Amx => Some(AMX_PROMPT_ROWS),
        #[cfg(target_arch = "x86_64")]
        WeightDtype::Bf16 if kernels.bf16() == Bf16Kernel::Avx512Bf16 => Some(12),
        #[cfg(target_arch = "x86_64")]
        WeightDtype::Q8_0 if kernels.q8_0() == Q8Kernel::Amx => Some(AMX_PROMPT_ROWS),
        #[cfg(target_arch = "x86_64")]
        _ if f32_panels(dtype, kernels) => Some(AVX2_PROMPT_ROWS),
        _ => {
            let _ = kernels;
            None
        }
    }
}

/// Whether a prompt's products with `dtype` weights run on the AVX2 panels of [`panel`]
/// (activations and weights in f32) with `kernels`: bf16 weights where their kernel is `avx2`.
#[cfg(target_arch = "x86_64")]
fn f32_panels(dtype: WeightDtype, kernels: Kernels) -> bool {
    dtype == WeightDtype::Bf16 && kernels.bf16() == Bf16Kernel::Avx2
}

/// From how many rows bf16 weights take the AVX2 panels ([`f32_panels`]). The 48 products of
/// GPT-2 124M, 2 threads, kernel forced on Zen 5 (tiles / panels, ms): 15.5 / 19.8 at 12 rows,
/// 17.9 / 20.6 at 13, 20.9 / 20.4 at 14, 22.2-22.5 / 20.1-20.7 at 16, 36.0 / 30.3 at 32, 64.5 /
/// 58.8 at 64. Both are bound by the f32 FMAs of the same products: the panels gain on the
/// tiles' lane sums.
#[cfg(target_arch = "x86_64")]
const AVX2_PROMPT_ROWS: usize = 14;

/// From how many rows bf16 and q8_0 weights take AMX tiles: a tile costs the same for 1 to 16
/// rows; on the Xeon, GPT-2's products of 4 rows ran level with the dot-product tiles, of 8
/// rows 1.1-1.4x (q8_0, then stored in rows of blocks) to 1.2x (bf16) faster.
#[cfg(target_arch = "x86_64")]
const AMX_PROMPT_ROWS: usize = 6;

/// How a prompt's products with `dtype` weights run on `kernels` (None: in tiles), in words for
/// `gpt2 info`.
pub fn prompt_path(dtype: WeightDtype, kernels: Option<Kernels>) -> String {
    #[cfg(target_arch = "x86_64")]
    match dtype {
        WeightDtype::Bf16 if kernels.is_some_and(|k| k.bf16() == Bf16Kernel::Amx) => {
            return format!(
                "{AMX_PROMPT_ROWS} rows and more: AMX tdpbf16ps, 16 weight rows x {PANEL_ROWS} prompt rows per tile"
            )
        }
        WeightDtype::Q8_0 if kernels.is_some_and(|k| k.q8_0() == Q8Kernel::Amx) => {
            return format!(
                "{AMX_PROMPT_ROWS} rows and more: AMX tdpbssd, {} prompt rows x a block of {GROUP} weight rows per tile, as stored",
                crate::ops::amx::ROWS
            )
        }
        _ if kernels.is_some_and(|k| f32_panels(dtype, k)) => {
            return format!("{AVX2_PROMPT_ROWS} rows and more: panels of {PANEL_ROWS} rows in f32, each weight widened to f32 and broadcast against a panel")
        }
        _ => {}
    }
    match kernels.and_then(|k| panel_rows(dtype, k)) {
        Some(rows) => {
            format!("{rows} rows and more: panels of {PANEL_ROWS} rows, each weight broadcast against a panel")
        }
        None if dtype == WeightDtype::Q8_0 => format!(
            "tiles of {PREFILL_ROWS} rows x {PREFILL_COLS} groups of {GROUP} weight rows, one output per lane, \
             {PROMPT_BLOCK_ROWS} rows at a time"
        ),
        None => format!("dot-product tiles of {PREFILL_ROWS} rows"),
    }
}

/// `out [M, N]` from `out_t [N, stride]` (stride ≥ M): `out[r, i] = out_t[i, r]`.
fn transpose(out: &mut [f32], out_t: &[f32], n: usize, stride: usize) {
    out.par_chunks_mut(n).enumerate().for_each(|(r, out)| {
        out.iter_mut()
            .zip(out_t[r..].iter().step_by(stride))
            .for_each(|(o, &v)| *o = v);
    });
}

/// The rows of x [M, K], each padded with zeros to `padded`.
fn pad_rows(x: &[f32], k: usize, padded: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len() / k * padded];
    for (o, x) in out.chunks_exact_mut(padded).zip(x.chunks_exact(k)) {
        o[..k].copy_from_slice(x);
    }
    out
}

/// One kernel: the products of S stored weight rows with R activation rows, `out[r][s] = w_s ·
/// x_r`. Rows are zero-padded to the same length. A stored "row" of bf16 is one weight row,
/// its output one f32; of q8_0, a group of 16 rows, its output 16 f32.
pub trait Tile<'a>: Sync {
    /// What a stored weight row is made of (bf16 bits, q8_0 lines).
    type W: Sync;
    /// One activation row as the kernel reads it.
    type X: Copy + Send + Sync + 'a;
    /// The outputs of one stored row and one activation row.
    type Out: Copy + Send;
    fn tile<const R: usize, const S: usize>(&self, w: [&[Self::W]; S], x: [Self::X; R]) -> [[Self::Out; S]; R];
}

/// `out_t [N, M] = W · xᵀ` with W stored [N, `row_len`] and x given as M rows.
fn product<'a, T: Tile<'a>>(kernel: &T, out_t: &mut [T::Out], w: &[T::W], row_len: usize, x: &[T::X]) {
    let m = x.len();
    for_each_task(out_t, m, w, row_len, 1, |out, rows| match m < PREFILL_ROWS {
        true => tiles::<T, 1, DECODE_STREAMS>(kernel, out, rows, x),
        false => tiles::<T, PREFILL_ROWS, PREFILL_COLS>(kernel, out, rows, x),
    });
}

/// Runs `task(out, rows)` on the rayon pool for each task of contiguous rows of W (stored [N,
/// `row_len`], [`rows_per_task`] rows a task for `per_row` activation rows, rounded down to a
/// multiple of `align`: every task but the last holds whole multiples), `out` the task's rows of
/// `out_t` [N, `per_row`]. Each output is one task's, so
/// results do not depend on how the rows are split.
fn for_each_task<W: Sync, O: Send>(
    out_t: &mut [O],
    per_row: usize,
    w: &[W],
    row_len: usize,
    align: usize,
    task: impl Fn(&mut [O], &[&[W]]) + Sync,
) {
    let n = w.len() / row_len.max(1);
    let rows_per_task = (rows_per_task(n, row_len * std::mem::size_of::<W>(), per_row) / align).max(1) * align;
    out_t
        .par_chunks_mut(rows_per_task * per_row)
        .zip(w.par_chunks(rows_per_task * row_len))
        .for_each(|(out, w)| task(out, &w.chunks_exact(row_len).collect::<Vec<_>>()));
}

/// How many of N weight rows of `row_bytes` each one task reads against `m` activation rows:
/// about [`TASK_BYTES`], at least 4 tasks per thread; decoding, about [`DECODE_TASK_BYTES`], at
/// least 2 tasks per thread.
fn rows_per_task(n: usize, row_bytes: usize, m: usize) -> usize {
    let (task_bytes, per_thread) = match m < PREFILL_ROWS {
        true => (DECODE_TASK_BYTES, 2),
        false => (TASK_BYTES, 4),
    };
    let by_bytes = task_bytes / row_bytes.max(1);
    let by_threads = n.div_ceil(per_thread * rayon::current_num_threads());
    by_bytes.min(by_threads).max(DECODE_STREAMS)
}

/// `out [rows, M]`: `out[i, r] = rows[i] · x[r]`, in tiles of R × S (smaller at the edges).
/// A tile's S weight rows lie 1/S of the task apart (rows i, q + i, 2q + i, ...): one core
/// keeps more reads in flight from S distant sequential streams than from one.
fn tiles<'a, T: Tile<'a>, const R: usize, const S: usize>(
    kernel: &T,
    out: &mut [T::Out],
    rows: &[&[T::W]],
    x: &[T::X],
) {
    let q = rows.len() / S;
    for i in 0..q {
        let at: [usize; S] = std::array::from_fn(|s| s * q + i);
        along_x::<T, R, S>(kernel, out, at, at.map(|j| rows[j]), x);
    }
    for (j, &row) in rows.iter().enumerate().skip(S * q) {
        along_x::<T, R, 1>(kernel, out, [j], [row], x);
    }
}

/// `out[at[s], r] = w[s] · x[r]` for the S weight rows `w` (rows `at` of the task) and every
/// activation row, R at a time.
fn along_x<'a, T: Tile<'a>, const R: usize, const S: usize>(
    kernel: &T,
    out: &mut [T::Out],
    at: [usize; S],
    w: [&[T::W]; S],
    x: &[T::X],
) {
    let m = x.len();
    let mut put = |r: usize, dots: [T::Out; S]| at.iter().zip(dots).for_each(|(&i, d)| out[i * m + r] = d);
    let groups = m / R;
    for g in 0..groups {
        let xs: [T::X; R] = std::array::from_fn(|j| x[g * R + j]);
        for (j, dots) in kernel.tile::<R, S>(w, xs).into_iter().enumerate() {
            put(g * R + j, dots);
        }
    }
    for (r, &xr) in x.iter().enumerate().skip(groups * R) {
        let [dots] = kernel.tile::<1, S>(w, [xr]);
        put(r, dots);
    }
}

/// The sum of each accumulator's 8 lanes: a tile's dot products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn lane_sums<const R: usize, const S: usize>(
    acc: &[[std::arch::x86_64::__m256; S]; R],
) -> [[f32; S]; R] {
    use std::arch::x86_64::*;
    let mut out = [[0.0; S]; R];
    for r in 0..R {
        for s in 0..S {
            let v = acc[r][s];
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            out[r][s] = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_vec;

    /// Every kernel of `dtype` this CPU has, each forced by name as `GPT2_KERNEL` would.
    fn kernels_of(dtype: WeightDtype) -> Vec<(&'static str, Kernels)> {
        let names: Vec<&str> = match dtype {
            WeightDtype::Bf16 => Bf16Kernel::ALL.iter().map(|k| k.name()).collect(),
            _ => Q8Kernel::ALL.iter().map(|k| k.name()).collect(),
        };
        names
            .into_iter()
            .filter_map(|name| Kernels::forced(name).ok().map(|k| (name, k)))
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_f64_product_on_odd_shapes() {
        // K not a multiple of 8, 16 or 32 (and odd numbers of q8_0 blocks: a last block alone);
        // N crossing tasks (64 rows) and tiles, a multiple of 16 or not (a q8_0 group ending in
        // rows of zeros; one activation row of whole groups is written in place); M crossing
        // tiles of 4 and, from panel_rows rows
        // on, panels of 16 (1 to 5 of them: every P of the AVX-512 panel kernels, with a partial
        // last panel) and their row blocks; K beyond one run of the AVX2 panels (256); tasks (of
        // 32 rows for AMX) ending in a lone tile of 16 weight rows and a few rows more; prompts
        // past one block of PROMPT_BLOCK_ROWS, ending in a block of 6, 22 or 1 rows.
        for (m, k, n) in [
            (1, 1, 1),
            (1, 33, 7),
            (1, 70, 48),
            (1, 300, 37),
            (2, 70, 65),
            (3, 100, 131),
            (4, 47, 3),
            (9, 129, 200),
            (16, 64, 13),
            (17, 31, 29),
            (40, 96, 70),
            (20, 64, 50),
            (40, 96, 250),
            (20, 300, 30),
            (15, 300, 400),
            (64, 33, 26),
            (70, 65, 41),
            (150, 40, 33),
            (129, 24, 17),
        ] {
            let x = random_vec(m * k, 1);
            let w = random_vec(n * k, 2); // [N, K]
            for dtype in [WeightDtype::Bf16, WeightDtype::Q8_0] {
                let mat = LowpMatrix::from_rows(&w, n, k, dtype).unwrap();
                let mut stored = vec![0.0; n * k];
                stored
                    .chunks_exact_mut(k)
                    .enumerate()
                    .for_each(|(i, row)| mat.dequantize_row(i, row));
                let x_max = x.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64;
                for (name, kernels) in kernels_of(dtype) {
                    let mut out = vec![f32::NAN; m * n];
                    mat.matmul(&mut out, &x, m, kernels);
                    for (r, c) in (0..m).flat_map(|r| (0..n).map(move |c| (r, c))) {
                        let (xr, wr) = (&x[r * k..(r + 1) * k], &stored[c * k..(c + 1) * k]);
                        let exact: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let abs_sum: f64 = xr.iter().zip(wr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        let w_sum: f64 = wr.iter().map(|&b| (b as f64).abs()).sum();
                        // what rounding the activations costs: bf16 (2^-9 relative), q8 (half a step of max|x|/127)
                        let bound = match (dtype, name) {
                            (WeightDtype::Bf16, "avx512bf16" | "amx") => abs_sum / 256.0,
                            (WeightDtype::Bf16, _) => abs_sum * 1e-5,
                            _ => w_sum * x_max / 254.0,
                        } + 1e-5;
                        let err = (out[r * n + c] as f64 - exact).abs();
                        assert!(
                            err <= bound,
                            "{dtype} {name} m={m} k={k} n={n} [{r},{c}]: error {err} > {bound}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_conv1d_weight_is_stored_by_columns() {
        let (k, n) = (37, 5);
        let w = random_vec(k * n, 3); // [K, N]
        let w_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect(); // [N, K]
        for dtype in [WeightDtype::Bf16, WeightDtype::Q8_0] {
            let (a, b) = (
                LowpMatrix::from_columns(&w, k, n, dtype).unwrap(),
                LowpMatrix::from_rows(&w_t, n, k, dtype).unwrap(),
            );
            let (mut ra, mut rb) = (vec![0.0; k], vec![0.0; k]);
            for i in 0..n {
                a.dequantize_row(i, &mut ra);
                b.dequantize_row(i, &mut rb);
                assert_eq!(ra, rb);
            }
        }
    }

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        // blocks of all sizes, a zero block, an outlier among small weights, a ragged last block
        let k = 5 * BLOCK + 7;
        let mut w: Vec<f32> = random_vec(k, 4);
        let scales = [1.0f32, 1e-3, 0.0, 50.0, 0.02, 3.0];
        for (i, x) in w.iter_mut().enumerate() {
            *x *= scales[i / BLOCK];
        }
        w[3 * BLOCK + 5] = 40.0;
        let mat = LowpMatrix::from_rows(&w, 1, k, WeightDtype::Q8_0).unwrap();
        assert_eq!(mat.bytes(), GROUP * 6 * 34); // one group of 16 rows, 15 of them zeros
        let mut back = vec![0.0; k];
        mat.dequantize_row(0, &mut back);
        for (b, (w, back)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let amax = w.iter().fold(0.0f32, |a, b| a.max(b.abs()));
            let step = amax / 127.0 * (1.0 + 1.0 / 1024.0); // the f16 scale, rounded
            for (x, y) in w.iter().zip(back) {
                assert!((x - y).abs() <= step / 2.0, "block {b}: {x} -> {y}, step {step}");
            }
            // the largest weight of a block is stored to within f16's precision
            let top = w.iter().zip(back).find(|(x, _)| x.abs() == amax).unwrap();
            assert!((top.0 - top.1).abs() <= amax / 1024.0, "block {b}: {top:?}");
        }
    }

    #[test]
    fn bf16_round_trip_is_within_half_an_ulp() {
        let w = random_vec(100, 5);
        let mat = LowpMatrix::from_rows(&w, 4, 25, WeightDtype::Bf16).unwrap();
        assert_eq!(mat.bytes(), 4 * 32 * 2);
        let mut back = vec![0.0; 25];
        for (i, w) in w.chunks(25).enumerate() {
            mat.dequantize_row(i, &mut back);
            for (x, y) in w.iter().zip(&back) {
                assert!((x - y).abs() <= x.abs() / 256.0, "{x} -> {y}");
            }
        }
    }

    #[test]
    fn non_finite_weights_and_f32_are_refused() {
        let mut w = random_vec(64, 6);
        w[10] = f32::NAN;
        w[11] = f32::INFINITY;
        for dtype in [WeightDtype::Bf16, WeightDtype::Q8_0] {
            let err = LowpMatrix::from_rows(&w, 2, 32, dtype).err().unwrap();
            assert!(err.contains("2 NaN or infinite") && err.contains(dtype.name()), "{err}");
        }
        assert!(LowpMatrix::from_rows(&[1.0], 1, 1, WeightDtype::F32).is_err());
        assert_eq!("q8_0".parse::<WeightDtype>(), Ok(WeightDtype::Q8_0));
        assert!("int4"
            .parse::<WeightDtype>()
            .unwrap_err()
            .contains("expected f32, bf16 or q8_0"));
    }
}
