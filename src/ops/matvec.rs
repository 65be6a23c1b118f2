//! Matrix products with few rows (M <= [`SMALL_M`]): decoding one token per sequence.
//!
//! With M = 1 a product reads every weight once and does one multiply-add with it, so its
//! time is the time to stream the weights from memory. These kernels give each task a
//! contiguous run of the weight buffer, which the hardware prefetchers stream at full memory
//! bandwidth, and split the work the same way whatever the thread count (so results do not
//! depend on it):
//! - `w` stored [K, N] (a Conv1D weight, `y = x·W`): a task takes [`ROWS_PER_TASK`] rows of W
//!   and computes the partial product `x[:, rows] · W[rows, :]` [M, N]; the partials are then
//!   summed in order.
//! - `w` stored [N, K] (the tied LM head, `y = x·wteᵀ`): a task takes rows of wte, each row
//!   giving one output column as M dot products.

use faer::Par;
use rayon::prelude::*;

/// Largest M that goes through these kernels rather than the general matrix multiply.
pub const SMALL_M: usize = 8;

/// Weight rows per task: 64 rows of a GPT-2 weight are 192-768 KiB of contiguous memory.
const ROWS_PER_TASK: usize = 64;

/// Runs `task` on each chunk of `w`, on the rayon pool unless `par` is sequential; results in order.
fn map_chunks<T: Send>(w: &[f32], chunk: usize, par: Par, task: impl Fn(usize, &[f32]) -> T + Sync) -> Vec<T> {
    match par {
        Par::Seq => w.chunks(chunk).enumerate().map(|(i, c)| task(i, c)).collect(),
        _ => w.par_chunks(chunk).enumerate().map(|(i, c)| task(i, c)).collect(),
    }
}

/// `out [M, N] (=|+=) x [M, K] · w [K, N]`, w row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul_small_m(out: &mut [f32], accumulate: bool, x: &[f32], w: &[f32], m: usize, k: usize, n: usize, par: Par) {
    assert!(out.len() == m * n && x.len() == m * k && w.len() == k * n && m <= SMALL_M);
    let partials = map_chunks(w, ROWS_PER_TASK * n, par, |task, w_rows| {
        // acc[j, :] = Σ_i x[j, k0 + i] · w[k0 + i, :] over this task's rows
        let k0 = task * ROWS_PER_TASK;
        let mut acc = vec![0.0f32; m * n];
        for (i, w_row) in w_rows.chunks_exact(n).enumerate() {
            for (acc_row, x_row) in acc.chunks_exact_mut(n).zip(x.chunks_exact(k)) {
                let xi = x_row[k0 + i];
                acc_row
                    .iter_mut()
                    .zip(w_row)
                    .for_each(|(a, &wv)| *a = wv.mul_add(xi, *a));
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
    let blocks = map_chunks(w, ROWS_PER_TASK * k, par, |_, w_rows| {
        w_rows
            .chunks_exact(k)
            .flat_map(|w_row| x.chunks_exact(k).map(|x_row| dot(w_row, x_row)))
            .collect::<Vec<f32>>()
    });
    for (col, dots) in blocks.iter().flat_map(|b| b.chunks_exact(m)).enumerate() {
        for (row, &d) in dots.iter().enumerate() {
            let o = &mut out[row * n + col];
            *o = if accumulate { *o + d } else { d };
        }
    }
}

/// Σ a_i b_i with 32 independent partial sums, which the compiler keeps in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *s = x.mul_add(y, *s);
        }
    }
    acc.iter().sum::<f32>() + tail
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
