//! Matrix multiplies, through the `faer` crate, on row-major slices.
//!
//! A GPT-2 "Conv1D" layer stores its weight as [in, out], so a linear layer is `y = x W + b`
//! with no transpose: the same layout Hugging Face and OpenAI use.
//!
//! Products with few rows (decoding) go to the weight-streaming kernels of [`super::matvec`], and
//! a prompt's rows times a weight as stored to [`super::prompt_f32`] where the CPU has AVX-512 or AVX2.

use super::lowp::kernel::{has_feature, KERNEL_ENV};
use super::matmul_bf16::{gemm_bf16, TileKernel};
use super::matvec::{matmul_small_m, matmul_small_m_t, SMALL_M, SMALL_M_T};
#[cfg(target_arch = "x86_64")]
use super::prompt_f32;
use super::{thread_count, with_thread_buffer};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// A row-major [rows, cols] view, transposed on request.
fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_, f32> {
    let m = MatRef::from_row_major_slice(data, rows, cols);
    if transposed {
        m.transpose()
    } else {
        m
    }
}

/// `out [m, n] (=|+=) op(a) · op(b)` where op(a) is [m, k] and op(b) is [k, n]; `a` is stored
/// as [m, k] (or [k, m] when `a_t`), `b` as [k, n] (or [n, k] when `b_t`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
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
) {
    debug_assert_eq!(out.len(), m * n);
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) =
        prompt_f32::Isa::best().filter(|_| !a_t && !b_t && (prompt_f32::MIN_ROWS..=prompt_f32::MAX_ROWS).contains(&m))
    {
        return prompt_f32::product(isa, out, accumulate, a, b, m, k, n, par);
    }
    match (a_t, b_t) {
        (false, false) if m <= SMALL_M => return matmul_small_m(out, accumulate, a, b, m, k, n, par),
        (false, true) if m <= SMALL_M_T => return matmul_small_m_t(out, accumulate, a, b, m, k, n, par),
        _ => {}
    }
    let lhs = if a_t { view(a, k, m, true) } else { view(a, m, k, false) };
    let rhs = if b_t { view(b, n, k, true) } else { view(b, k, n, false) };
    let accum = if accumulate { Accum::Add } else { Accum::Replace };
    let out = MatMut::from_row_major_slice_mut(out, m, n);
    let threads = thread_count(par);
    if threads == 1 || n < threads * MIN_COLS_PER_TASK {
        return matmul(out, accum, lhs, rhs, 1.0, par);
    }
    // One block of output columns per thread, each a sequential product: the threads meet once,
    // where faer's own split meets at every panel.
    let width = n.div_ceil(threads).next_multiple_of(COL_ALIGN);
    let mut blocks = Vec::with_capacity(threads);
    let (mut rest, mut start) = (out, 0);
    while start < n {
        let w = width.min(n - start);
        let (block, right) = rest.split_at_col_mut(w);
        blocks.push((block, start, w));
        (rest, start) = (right, start + w);
    }
    blocks
        .into_par_iter()
        .for_each(|(block, start, w)| matmul(block, accum, lhs, rhs.subcols(start, w), 1.0, Par::Seq));
}

/// The instruction set and the rows with which a product with a weight as stored (`x · w`) goes
/// to [`super::prompt_f32`] on this CPU, if any (fewer rows go to [`super::matvec`], more to
/// faer).
pub fn prompt_f32_path() -> Option<(&'static str, usize, std::ops::RangeInclusive<usize>)> {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = prompt_f32::Isa::best() {
        return Some((isa.name(), isa.lanes(), prompt_f32::MIN_ROWS..=prompt_f32::MAX_ROWS));
    }
    None
}

/// What a training pass's matrix products compute in: f32, or bf16 operands with f32 sums
/// (PyTorch autocast's split: LayerNorm, softmax, GELU, attention, the loss and the optimizer
/// stay f32, and so do the weights, gradients and moments; see [`super::matmul_bf16`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision a run asking for this one gets on this CPU, and why it differs: bf16
    /// needs AVX512-BF16 (elsewhere bf16 products would be slower than f32 ones).
    pub fn on_this_cpu(self) -> (Precision, Option<String>) {
        if self == Precision::F32 || TileKernel::accelerated() {
            return (self, None);
        }
        let why = match std::env::var(KERNEL_ENV) {
            Ok(kernel) if !kernel.is_empty() => {
                format!("{KERNEL_ENV}={kernel} rules out the amx and avx512bf16 kernels")
            }
            _ => {
                let needed = TileKernel::SIMD_REQUIRES;
                let missing: Vec<&str> = needed.into_iter().filter(|f| !has_feature(f)).collect();
                format!("this CPU lacks {}", missing.join(", "))
            }
        };
        (
            Precision::F32,
            Some(format!("--precision bf16: {why}, so the products run in f32")),
        )
    }

    /// [`gemm`] in this precision. Products of few rows stay f32: they are bound by reading
    /// the weights, not by arithmetic.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        self,
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
    ) {
        match self {
            Precision::Bf16 if m > SMALL_M => {
                gemm_bf16(out, accumulate, a, a_t, b, b_t, m, k, n, par, TileKernel::best())
            }
            _ => gemm(out, accumulate, a, a_t, b, b_t, m, k, n, par),
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{s}': expected f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Output columns per thread below which a product is left to faer's own parallel split.
const MIN_COLS_PER_TASK: usize = 256;
/// Column blocks start at multiples of this (whole SIMD registers).
const COL_ALIGN: usize = 16;

thread_local! {
    /// Set while this thread runs a batch shard (see [`sequential`]).
    static SEQUENTIAL: Cell<bool> = const { Cell::new(false) };
    /// This thread's buffer for [`with_transposed`] (see [`with_thread_buffer`]).
    static TRANSPOSED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `work` on a transposed copy [cols, rows] of `src` [rows, cols], kept in a buffer of
/// this thread that later calls reuse.
fn with_transposed<R>(src: &[f32], rows: usize, cols: usize, par: Par, work: impl FnOnce(&[f32]) -> R) -> R {
    with_thread_buffer(&TRANSPOSED, rows * cols, |copy| {
        transpose(copy, src, rows, cols, par);
        work(copy)
    })
}

/// `dst [cols, rows] = srcᵀ` for src [rows, cols], in square tiles (a tile's rows and columns
/// stay in cache while it is read across and written down), blocks of TILE rows of dst (TILE
/// columns of src) in parallel.
pub fn transpose(dst: &mut [f32], src: &[f32], rows: usize, cols: usize, par: Par) {
    const TILE: usize = 32;
    assert!(dst.len() == rows * cols && src.len() == rows * cols);
    if dst.is_empty() {
        return;
    }
    let tile_rows = |(block, dst): (usize, &mut [f32])| {
        let c0 = block * TILE;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for (c, dst_row) in (c0..).zip(dst.chunks_exact_mut(rows)) {
                for (d, r) in dst_row[r0..r1].iter_mut().zip(r0..r1) {
                    *d = src[r * cols + c];
                }
            }
        }
    };
    match par {
        Par::Seq => dst.chunks_mut(TILE * rows).enumerate().for_each(tile_rows),
        Par::Rayon(_) => dst.par_chunks_mut(TILE * rows).enumerate().for_each(tile_rows),
    }
}

/// Every thread of the current rayon pool; only this one inside [`sequential`].
pub fn all_threads() -> Par {
    match SEQUENTIAL.get() {
        true => Par::Seq,
        false => Par::rayon(0),
    }
}

/// Runs `work` with its products on this thread alone: a batch shard of
/// [`crate::model::data_parallel`] runs beside the others, each on its own thread.
pub fn sequential<R>(work: impl FnOnce() -> R) -> R {
    /// Clears the flag however `work` ends.
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SEQUENTIAL.set(self.0);
        }
    }
    let _reset = Reset(SEQUENTIAL.replace(true));
    work()
}

/// Linear layer forward: `out [N, OC] = inp [N, IC] · w [IC, OC] + b [OC]`, the product in
/// `precision`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    precision: Precision,
) {
    // Start from the bias in every row, then accumulate the product on top of it.
    out.par_chunks_mut(oc).for_each(|row| row.copy_from_slice(b));
    precision.gemm(out, true, inp, false, w, false, n, ic, oc, all_threads());
}

/// Linear layer backward. With `out = inp · w + b`:
/// `dinp [N, IC] = dout · wᵀ` (overwritten), and unless the layer is frozen (`grads` None),
/// `grads` = (`dw [IC, OC] += inpᵀ · dout`, `db [OC] += Σ_rows dout`); products in `precision`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dinp: &mut [f32],
    grads: Option<(&mut [f32], &mut [f32])>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    precision: Precision,
) {
    let par = all_threads();
    precision.gemm(dinp, false, dout, false, w, true, n, oc, ic, par);
    let Some((dw, db)) = grads else { return };
    // faer multiplies by a transposed operand (inpᵀ, read down its columns) more slowly than by
    // the same matrix stored transposed, row by row. A transposed copy costs a pass over inp,
    // which large layers (2¹⁹ weights and up) win back and small ones do not (README,
    // Performance). bf16 products transpose as they pack.
    if precision == Precision::Bf16 {
        precision.gemm(dw, true, inp, true, dout, false, ic, n, oc, par);
    } else if ic * oc >= 1 << 19 {
        with_transposed(inp, n, ic, par, |inp_t| {
            gemm(dw, true, inp_t, false, dout, false, ic, n, oc, par)
        });
    } else {
        gemm(dw, true, inp, true, dout, false, ic, n, oc, par);
    }
    // Column sums, parallel over column blocks so that no two tasks write the same entry.
    const COLS_PER_TASK: usize = 64;
    db.par_chunks_mut(COLS_PER_TASK).enumerate().for_each(|(block, db)| {
        let cols = block * COLS_PER_TASK..block * COLS_PER_TASK + db.len();
        for row in dout.chunks_exact(oc) {
            for (d, &g) in db.iter_mut().zip(&row[cols.clone()]) {
                *d += g;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn gemm_matches_naive_in_every_layout() {
        let (m, k, n) = (5, 7, 3);
        let a = random_vec(m * k, 1);
        let b = random_vec(k * n, 2);
        let naive: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|p| a[i / n * k + p] * b[p * n + i % n]).sum())
            .collect();
        let transpose =
            |x: &[f32], r: usize, c: usize| -> Vec<f32> { (0..r * c).map(|i| x[(i % r) * c + i / r]).collect() };
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut out = vec![0.0; m * n];
            let lhs = if a_t { &at } else { &a };
            let rhs = if b_t { &bt } else { &b };
            gemm(&mut out, false, lhs, a_t, rhs, b_t, m, k, n, Par::Seq);
            for (x, y) in out.iter().zip(&naive) {
                assert!((x - y).abs() < 1e-5, "layout a_t={a_t} b_t={b_t}");
            }
        }
    }

    #[test]
    fn column_blocks_on_threads_give_the_sequential_product() {
        // Rows past the prompt kernel's (at most 64); 1000 columns: blocks of 512 and 488.
        let (m, k, n) = (73, 20, 1000);
        let (a, b) = (random_vec(m * k, 3), random_vec(k * n, 4));
        let mut sequential = random_vec(m * n, 5);
        let mut blocked = sequential.clone();
        gemm(&mut sequential, true, &a, false, &b, false, m, k, n, Par::Seq);
        let two = Par::Rayon(std::num::NonZeroUsize::new(2).unwrap());
        gemm(&mut blocked, true, &a, false, &b, false, m, k, n, two);
        assert_eq!(sequential, blocked);
    }

    #[test]
    fn transpose_moves_every_entry() {
        let two = Par::Rayon(std::num::NonZeroUsize::new(2).unwrap());
        for (rows, cols, par) in [(1, 1, Par::Seq), (37, 70, two), (64, 33, Par::Seq), (0, 5, two)] {
            let src = random_vec(rows * cols, 8);
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&mut dst, &src, rows, cols, par);
            for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}x{cols} at ({r}, {c})");
            }
        }
    }

    #[test]
    fn large_weight_gradients_through_a_transposed_copy_equal_the_direct_product() {
        let (n, ic, oc) = (6, 512, 1024); // ic·oc = 2¹⁹: inp is copied transposed
        let (inp, w, dout) = (random_vec(n * ic, 9), random_vec(ic * oc, 10), random_vec(n * oc, 11));
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], random_vec(ic * oc, 12), vec![0.0; oc]);
        let mut expected = dw.clone();
        linear_backward(
            &mut dinp,
            Some((&mut dw, &mut db)),
            &dout,
            &inp,
            &w,
            n,
            ic,
            oc,
            Precision::F32,
        );
        gemm(&mut expected, true, &inp, true, &dout, false, ic, n, oc, Par::Seq);
        for (x, y) in dw.iter().zip(&expected) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let (n, ic, oc) = (4, 5, 6);
        let inp = random_vec(n * ic, 3);
        let w = random_vec(ic * oc, 4);
        let b = random_vec(oc, 5);
        let forward = |inp: &[f32], w: &[f32], b: &[f32]| {
            let mut out = vec![0.0; n * oc];
            linear_forward(&mut out, inp, w, b, n, ic, oc, Precision::F32);
            out
        };
        let dout = random_vec(n * oc, 6);
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; ic * oc], vec![0.0; oc]);
        linear_backward(
            &mut dinp,
            Some((&mut dw, &mut db)),
            &dout,
            &inp,
            &w,
            n,
            ic,
            oc,
            Precision::F32,
        );
        check_gradient("linear dinp", &inp, &dinp, &dout, |x| forward(x, &w, &b));
        check_gradient("linear dw", &w, &dw, &dout, |x| forward(&inp, x, &b));
        check_gradient("linear db", &b, &db, &dout, |x| forward(&inp, &w, x));
    }
}
