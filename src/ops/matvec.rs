//! Matrix products with few rows (M <= [`SMALL_M`]): decoding one token per sequence.
//!
//! With M = 1 a product reads every weight once and does one multiply-add with it, so its
//! time is the time to stream the weights from memory. Each task owns a contiguous block of
//! [`WEIGHT_ROWS_PER_TASK`] weight rows and reads it as several sequential streams at once, one per
//! part of the block: one core keeps more reads in flight that way than with a single
//! stream. Tasks split the work the same way whatever the thread count, so results do not
//! depend on it.
//! - `w` stored [K, N] (a Conv1D weight, `y = x·W`): a task computes the partial product
//!   `x[:, rows] · W[rows, :]` [M, N]; the partials are then summed in order.
//! - `w` stored [N, K] (the tied LM head, `y = x·wteᵀ`, and `dout · wᵀ` in the backward pass
//!   of a linear layer with few rows): each row of w gives one output column, as M dot products.

use faer::Par;
use rayon::prelude::*;

/// Largest M that goes through these kernels rather than the general matrix multiply.
pub const SMALL_M: usize = 8;

/// Weight rows per task: 64 rows of a GPT-2 weight are 192-768 KiB of contiguous memory.
const WEIGHT_ROWS_PER_TASK: usize = 64;

/// Weight rows a task reads side by side: rows of a [K, N] weight (axpy) and of wte (dot
/// products; more would spill the partial sums out of registers).
const AXPY_STREAMS: usize = 8;
const DOT_STREAMS: usize = 4;

/// Vector lanes of the inner loops (the compiler maps them to SIMD registers).
const LANES: usize = 16;

/// Runs `task` on each chunk of `w`, on the rayon pool unless `par` is sequential; results in order.
fn map_chunks<T: Send>(w: &[f32], chunk: usize, par: Par, task: impl Fn(usize, &[f32]) -> T + Sync) -> Vec<T> {
    match par {
        Par::Seq => w.chunks(chunk).enumerate().map(|(i, c)| task(i, c)).collect(),
        _ => w.par_chunks(chunk).enumerate().map(|(i, c)| task(i, c)).collect(),
    }
}

/// The rows 0..rows of a block in the order the kernels read them: groups of S rows, one
/// from each 1/S of the block (i, q + i, 2q + i, ...), then the rows left over.
fn stream_order<const S: usize>(rows: usize) -> (impl Iterator<Item = [usize; S]>, std::ops::Range<usize>) {
    let q = rows / S;
    ((0..q).map(move |i| std::array::from_fn(|s| s * q + i)), S * q..rows)
}

/// `out [M, N] (=|+=) x [M, K] · w [K, N]`, w row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul_small_m(out: &mut [f32], accumulate: bool, x: &[f32], w: &[f32], m: usize, k: usize, n: usize, par: Par) {
    assert!(out.len() == m * n && x.len() == m * k && w.len() == k * n && m <= SMALL_M);
    let partials = map_chunks(w, WEIGHT_ROWS_PER_TASK * n, par, |task, w_rows| {
        // acc[j, :] = Σ_i x[j, k0 + i] · w[k0 + i, :] over this task's rows
        let rows = w_rows.len() / n;
        let row = |i: usize| &w_rows[i * n..(i + 1) * n];
        let mut acc = vec![0.0f32; m * n];
        for (acc_row, x_row) in acc.chunks_exact_mut(n).zip(x.chunks_exact(k)) {
            let x_row = &x_row[task * WEIGHT_ROWS_PER_TASK..][..rows];
            let (groups, rest) = stream_order::<AXPY_STREAMS>(rows);
            for group in groups {
                axpy(acc_row, group.map(|i| x_row[i]), group.map(row));
            }
            for i in rest {
                axpy(acc_row, [x_row[i]], [row(i)]);
            }
        }
        acc
    });
    if !accumulate {
        out.fill(0.0);
    }
    for partial in partials {
        out.iter_mut().zip(partial).for_each(|(o, p)| *o += p);
    }
}

/// `out [M, N] (=|+=) x [M, K] · wᵀ`, w stored [N, K] row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul_small_m_t(
    out: &mut [f32],
    accumulate: bool,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    par: Par,
) {
    assert!(out.len() == m * n && x.len() == m * k && w.len() == n * k && m <= SMALL_M);
    // Each task fills its columns of out, transposed: [rows, M].
    let blocks = map_chunks(w, WEIGHT_ROWS_PER_TASK * k, par, |_, w_rows| {
        let rows = w_rows.len() / k;
        let row = |i: usize| &w_rows[i * k..(i + 1) * k];
        let mut dots_t = vec![0.0f32; rows * m];
        let (groups, rest) = stream_order::<DOT_STREAMS>(rows);
        // Each group of rows is read from memory once and reused from cache for every x row.
        for group in groups {
            for (j, x_row) in x.chunks_exact(k).enumerate() {
                for (i, d) in group.into_iter().zip(dots(group.map(row), x_row)) {
                    dots_t[i * m + j] = d;
                }
            }
        }
        for i in rest {
            for (j, x_row) in x.chunks_exact(k).enumerate() {
                dots_t[i * m + j] = dots([row(i)], x_row)[0];
            }
        }
        dots_t
    });
    for (col, dots) in blocks.iter().flat_map(|b| b.chunks_exact(m)).enumerate() {
        for (row, &d) in dots.iter().enumerate() {
            let o = &mut out[row * n + col];
            *o = if accumulate { *o + d } else { d };
        }
    }
}

/// `w · x + a`: one fused instruction on a CPU the build targets with FMA (`.cargo/config.toml`
/// asks for the building machine's); a multiply and an add otherwise, since `f32::mul_add`
/// without FMA is a slow library call.
#[inline(always)]
fn multiply_add(w: f32, x: f32, a: f32) -> f32 {
    if cfg!(target_feature = "fma") {
        w.mul_add(x, a)
    } else {
        w * x + a
    }
}

/// `acc += Σ_s x_s · w_s` over S rows read side by side.
fn axpy<const S: usize>(acc: &mut [f32], x: [f32; S], w: [&[f32]; S]) {
    let n = acc.len();
    let w = w.map(|w| &w[..n]); // equal lengths: no bounds checks in the loop, which vectorises
    for (j, a) in acc.iter_mut().enumerate() {
        *a = (0..S).fold(*a, |a, s| multiply_add(w[s][j], x[s], a));
    }
}

/// The S dot products w_s · x, side by side, each over LANES partial sums.
fn dots<const S: usize>(w: [&[f32]; S], x: &[f32]) -> [f32; S] {
    let mut acc = [[0.0f32; LANES]; S];
    let mut rows = w.map(|w| w.chunks_exact(LANES));
    let xs = x.chunks_exact(LANES);
    let x_tail = xs.remainder();
    for xc in xs {
        for (acc, row) in acc.iter_mut().zip(rows.iter_mut()) {
            let wc = row.next().expect("rows as long as x");
            for ((a, &wv), &xv) in acc.iter_mut().zip(wc).zip(xc) {
                *a = multiply_add(wv, xv, *a);
            }
        }
    }
    std::array::from_fn(|s| {
        let tail: f32 = rows[s].remainder().iter().zip(x_tail).map(|(a, b)| a * b).sum();
        acc[s].iter().sum::<f32>() + tail
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_vec;

    #[test]
    fn small_m_kernels_match_the_general_matmul() {
        // K and N cross task and vector-lane boundaries with remainders.
        for (m, k, n) in [(1, 1, 1), (1, 130, 77), (3, 200, 129), (SMALL_M, 65, 300)] {
            let x = random_vec(m * k, 1);
            let w = random_vec(k * n, 2);
            let start = random_vec(m * n, 3);
            for accumulate in [false, true] {
                let expected: Vec<f32> = (0..m * n)
                    .map(|i| {
                        let (row, col) = (i / n, i % n);
                        let product: f64 = (0..k).map(|p| x[row * k + p] as f64 * w[p * n + col] as f64).sum();
                        product as f32 + if accumulate { start[i] } else { 0.0 }
                    })
                    .collect();
                let w_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect(); // [N, K]
                for par in [Par::Seq, Par::rayon(0)] {
                    let mut out = start.clone();
                    matmul_small_m(&mut out, accumulate, &x, &w, m, k, n, par);
                    let mut out_t = start.clone();
                    matmul_small_m_t(&mut out_t, accumulate, &x, &w_t, m, k, n, par);
                    for (got, name) in [(&out, "w [K, N]"), (&out_t, "w [N, K]")] {
                        let err = got
                            .iter()
                            .zip(&expected)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0, f32::max);
                        assert!(
                            err < 1e-4,
                            "{name} m={m} k={k} n={n} accumulate={accumulate}: error {err}"
                        );
                    }
                }
            }
        }
    }
}
