//! Matrix products with few rows: decoding one token per sequence, or one per request of a
//! batch.
//!
//! With M = 1 a product reads every weight once and does one multiply-add with it, so its
//! time is the time to stream the weights from memory. Each task owns a contiguous block of
//! weight rows and reads it as several sequential streams at once, one per part of the block:
//! one core keeps more reads in flight that way than with a single stream, and long streams
//! keep the hardware prefetchers ahead. Tasks split the work the same way whatever the thread
//! count, so results do not depend on it.
//! - `w` stored [K, N] (a Conv1D weight, `y = x·W`; M <= [`SMALL_M`]): a task computes the
//!   partial product `x[:, rows] · W[rows, :]` [M, N]; the partials are then summed in order.
//!   A product splits into a multiple of [`MIN_TASKS`] tasks of at most about
//!   [`AXPY_TASK_BYTES`] (GPT-2 124M's layers: 4 or 8), so that 1, 2 or 4 threads share them
//!   evenly; a host of more threads uses no more than that many on each product (not measured
//!   there).
//! - `w` stored [N, K] (the tied LM head, `y = x·wteᵀ`, and `dout · wᵀ` in the backward pass
//!   of a linear layer with few rows; M <= [`SMALL_M_T`]): each row of w gives one output
//!   column, as M dot products, computed in tiles of [`DOT_STREAMS`] weight rows by
//!   [`DOT_X_ROWS`] rows of x: each weight loaded into a register serves two rows of x (with
//!   AVX2, the tile's 8 accumulators stay in registers; tiles of 4 by 4, 3 by 4, 6 by 2 and 8
//!   by 2 were slower on the 2-core Zen 4 host, and on GPT-2's LM head 16 rows cost about 3x
//!   one row, not 16x). One or two rows of x (decoding) read [`DECODE_DOT_STREAMS`] weight rows
//!   side by side instead, in tasks of about [`DECODE_DOT_TASK_BYTES`]. With AVX-512 the tiles
//!   run 16 lanes and two accumulators a dot product.

use faer::Par;
use rayon::prelude::*;

/// Largest M that goes through these kernels rather than the general matrix multiply, measured
/// against faer on GPT-2's layers (the best of 12 runs, 2-core Zen 4): for `w` stored [K, N]
/// (faster for 1-3 rows, even at 4, slower for 5-8: each row re-reads the weights from cache;
/// where the CPU has AVX-512 or AVX2, 4 rows and more go to [`super::prompt_f32`] first),
/// and for `w` stored [N, K] (faer reads that layout slowly; on GPT-2's LM head the tiles are
/// faster up to 32 rows).
pub const SMALL_M: usize = 4;
pub const SMALL_M_T: usize = 32;

/// Weight rows per task of a product with w stored [N, K] against more than two rows of x
/// (batched decoding, the backward pass): 64 rows of a GPT-2 weight are 192-768 KiB of
/// contiguous memory.
const WEIGHT_ROWS_PER_TASK: usize = 64;

/// At most the bytes of weights a task of a [K, N] product reads (see [`axpy_tasks`]). Before,
/// every task held 64 rows (12-48 tasks a GPT-2 product, 786 for the LM head): f32 decoding
/// with long tasks (these, and [`DECODE_DOT_TASK_BYTES`]) ran at 1.028x its speed (`gpt2 bench
/// generate --preset gpt2 --runs 3`, the two binaries alternating for 5 minutes on Zen 5:
/// medians of 19 pairs, memory at 44-54 GB/s; 1.05-1.07x in the two pairs at 72-82 GB/s).
const AXPY_TASK_BYTES: usize = 2 << 20;
/// About the bytes of weights a task of an [N, K] product against one or two rows of x
/// (decoding) reads, in at least [`MIN_TASKS`] tasks.
const DECODE_DOT_TASK_BYTES: usize = 3 << 20;
/// The fewest tasks a decoding product splits into (where it has as many rows), and what the
/// number of tasks of a [K, N] product is a multiple of: 1, 2 or 4 threads share them evenly.
const MIN_TASKS: usize = 4;

/// Weight rows a task reads side by side: rows of a [K, N] weight (axpy) and of wte (dot
/// products, each against [`DOT_X_ROWS`] rows of x at once; more would spill the partial sums
/// out of registers). The row updates took 8 streams on 4 KiB pages; on huge pages
/// ([`crate::memory::HugePageAlloc`]) 2 decode fastest (Zen 5, `gpt2 bench generate --preset
/// gpt2 --runs 3` alternating: 102.8-103.5 tokens/s against 98.2-99.7 with 8 and 101.6-102.1
/// with 4 when memory read at 55 GB/s, 150.2-152.1 against 134.9-139.8 with 8 at 82-87 GB/s;
/// 1 stream 82-96).
const AXPY_STREAMS: usize = 2;
const DOT_STREAMS: usize = 4;
const DOT_X_ROWS: usize = 2;
/// Weight rows read side by side against one or two rows of x: on AVX-512 a probe streamed
/// GPT-2's LM head against one row reading 2 weight rows side by side in 0.85x the time of
/// reading 4 (1 weight row: 0.90x; Zen 5, alternating runs, medians of 31). The AVX2 tiles
/// read it as fast with 2 as with 4 there.
const DECODE_DOT_STREAMS: usize = 2;

/// Accumulators of each dot product in the AVX-512 tiles.
#[cfg(target_arch = "x86_64")]
const ACCUMULATORS: usize = 2;

/// Vector lanes of the inner loops (the compiler maps them to SIMD registers).
const LANES: usize = 16;

/// The instructions this CPU's dot-product tiles run on (for `gpt2 info`).
pub fn dot_kernel_name() -> &'static str {
    DotKernel::best().name()
}

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

/// How many tasks a [K, N] product of `bytes` of weights splits into: about
/// [`AXPY_TASK_BYTES`] each, a multiple of 4.
fn axpy_tasks(bytes: usize) -> usize {
    bytes.div_ceil(AXPY_TASK_BYTES).max(1).next_multiple_of(MIN_TASKS)
}

/// `out [M, N] (=|+=) x [M, K] · w [K, N]`, w row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul_small_m(out: &mut [f32], accumulate: bool, x: &[f32], w: &[f32], m: usize, k: usize, n: usize, par: Par) {
    assert!(out.len() == m * n && x.len() == m * k && w.len() == k * n && m <= SMALL_M);
    let rows_per_task = k.div_ceil(axpy_tasks(size_of_val(w))).max(1);
    let partials = map_chunks(w, rows_per_task * n, par, |task, w_rows| {
        // acc[j, :] = Σ_i x[j, k0 + i] · w[k0 + i, :] over this task's rows
        let rows = w_rows.len() / n;
        let row = |i: usize| &w_rows[i * n..(i + 1) * n];
        let mut acc = vec![0.0f32; m * n];
        for (acc_row, x_row) in acc.chunks_exact_mut(n).zip(x.chunks_exact(k)) {
            let x_row = &x_row[task * rows_per_task..][..rows];
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
    assert!(out.len() == m * n && x.len() == m * k && w.len() == n * k && m <= SMALL_M_T);
    let kernel = DotKernel::best();
    let decoding = m <= DOT_X_ROWS;
    let rows_per_task = match decoding {
        true => (DECODE_DOT_TASK_BYTES / (k * size_of::<f32>()).max(1)).clamp(1, (n / MIN_TASKS).max(1)),
        false => WEIGHT_ROWS_PER_TASK,
    };
    // Each task fills its columns of out, transposed: [rows, M].
    let blocks = map_chunks(w, rows_per_task * k, par, |_, w_rows| match decoding {
        true => task_dots::<DECODE_DOT_STREAMS>(kernel, w_rows, x, k),
        false => task_dots::<DOT_STREAMS>(kernel, w_rows, x, k),
    });
    for (col, dots) in blocks.iter().flat_map(|b| b.chunks_exact(m)).enumerate() {
        for (row, &d) in dots.iter().enumerate() {
            let o = &mut out[row * n + col];
            *o = if accumulate { *o + d } else { d };
        }
    }
}

/// The dots of one task's weight rows `w_rows` [rows, K] with every row of x [M, K], transposed:
/// [rows, M]; S weight rows read side by side.
fn task_dots<const S: usize>(kernel: DotKernel, w_rows: &[f32], x: &[f32], k: usize) -> Vec<f32> {
    let rows = w_rows.len() / k;
    let row = |i: usize| &w_rows[i * k..(i + 1) * k];
    let mut dots_t = vec![0.0f32; rows * (x.len() / k)];
    let (groups, rest) = stream_order::<S>(rows);
    // Each group of rows is read from memory once and reused from cache for every x row.
    for group in groups {
        dots_along_x(kernel, &mut dots_t, group, group.map(row), x);
    }
    for i in rest {
        dots_along_x(kernel, &mut dots_t, [i], [row(i)], x);
    }
    dots_t
}

/// `dots_t[at[s] * M + r] = w_s · x_r` for the S weight rows `w` (rows `at` of the block) and
/// every row r of x [M, K], [`DOT_X_ROWS`] rows of x at a time.
fn dots_along_x<const S: usize>(kernel: DotKernel, dots_t: &mut [f32], at: [usize; S], w: [&[f32]; S], x: &[f32]) {
    let k = w[0].len();
    let m = x.len() / k;
    let mut put = |r: usize, dots: [f32; S]| at.iter().zip(dots).for_each(|(&i, d)| dots_t[i * m + r] = d);
    let mut pairs = x.chunks_exact(DOT_X_ROWS * k);
    for (p, pair) in pairs.by_ref().enumerate() {
        let xs: [&[f32]; DOT_X_ROWS] = std::array::from_fn(|j| &pair[j * k..(j + 1) * k]);
        for (j, dots) in kernel.dots(w, xs).into_iter().enumerate() {
            put(p * DOT_X_ROWS + j, dots);
        }
    }
    for (j, x_row) in pairs.remainder().chunks_exact(k).enumerate() {
        let [dots] = kernel.dots(w, [x_row]);
        put(m - m % DOT_X_ROWS + j, dots);
    }
}

/// How this CPU computes a tile of dot products.
#[derive(Clone, Copy)]
enum DotKernel {
    /// 16 lanes with fused multiply-adds, two accumulators per dot product, all held in
    /// AVX-512 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 8 lanes with fused multiply-adds, the tile's partial sums held in AVX registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`LANES`] partial sums per dot product, left to the compiler to vectorise.
    Portable,
}

impl DotKernel {
    /// Every kernel this CPU runs, best first.
    fn available() -> impl Iterator<Item = Self> {
        let all = [
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512,
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2,
            DotKernel::Portable,
        ];
        all.into_iter().filter(|kernel| kernel.runs_here())
    }

    fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            DotKernel::Portable => true,
        }
    }

    fn best() -> Self {
        Self::available().next().expect("the portable kernel runs everywhere")
    }

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => "AVX-512",
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => "AVX2 + FMA",
            DotKernel::Portable => "portable",
        }
    }

    /// `out[r][s] = w_s · x_r`; every row as long as x_0.
    fn dots<const R: usize, const S: usize>(self, w: [&[f32]; S], x: [&[f32]; R]) -> [[f32; S]; R] {
        let k = x[0].len();
        assert!(w.iter().chain(&x).all(|row| row.len() == k));
        match self {
            // SAFETY: each is chosen only where the CPU has its features (runs_here), and
            // every row holds k values.
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => unsafe { avx512_dots(w, x) },
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => unsafe { avx2_dots(w, x) },
            DotKernel::Portable => x.map(|x| dots(w, x)),
        }
    }
}

/// The tile of [`DotKernel::dots`] on AVX2: 8 lanes of R·S partial sums, then each one's total
/// plus the products past the last multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dots<const R: usize, const S: usize>(w: [&[f32]; S], x: [&[f32]; R]) -> [[f32; S]; R] {
    use std::arch::x86_64::*;
    let k = x[0].len();
    let full = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); S]; R];
    for i in (0..full).step_by(8) {
        let wv: [__m256; S] = std::array::from_fn(|s| _mm256_loadu_ps(w[s].as_ptr().add(i)));
        for r in 0..R {
            let xv = _mm256_loadu_ps(x[r].as_ptr().add(i));
            for s in 0..S {
                acc[r][s] = _mm256_fmadd_ps(wv[s], xv, acc[r][s]);
            }
        }
    }
    let sums = super::lowp::lane_sums(&acc);
    std::array::from_fn(|r| {
        std::array::from_fn(|s| sums[r][s] + w[s][full..].iter().zip(&x[r][full..]).map(|(a, b)| a * b).sum::<f32>())
    })
}

/// The tile of [`DotKernel::dots`] on AVX-512: R·S dot products, each in [`ACCUMULATORS`] of
/// 16 lanes (values 32i..32i+15 in the first, 32i+16..32i+31 in the second), then each one's
/// total plus the products past the last multiple of 32. Two accumulators give a tile of one
/// or two dot products (decoding) enough independent chains of FMAs that their latency does
/// not hold back the loads; every tile shape sums in the same order, so a row's dot products
/// come out the same, bit for bit, whatever the other rows of x beside it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_dots<const R: usize, const S: usize>(w: [&[f32]; S], x: [&[f32]; R]) -> [[f32; S]; R] {
    use std::arch::x86_64::*;
    const U: usize = ACCUMULATORS;
    let k = x[0].len();
    let full = k / (16 * U) * (16 * U);
    let mut acc = [[[_mm512_setzero_ps(); S]; R]; U];
    for i in (0..full).step_by(16 * U) {
        for (u, acc) in acc.iter_mut().enumerate() {
            let at = i + 16 * u;
            let wv: [__m512; S] = std::array::from_fn(|s| _mm512_loadu_ps(w[s].as_ptr().add(at)));
            for r in 0..R {
                let xv = _mm512_loadu_ps(x[r].as_ptr().add(at));
                for s in 0..S {
                    acc[r][s] = _mm512_fmadd_ps(wv[s], xv, acc[r][s]);
                }
            }
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|s| {
            let tail: f32 = w[s][full..].iter().zip(&x[r][full..]).map(|(a, b)| a * b).sum();
            let total = acc
                .iter()
                .fold(_mm512_setzero_ps(), |t, acc| _mm512_add_ps(t, acc[r][s]));
            _mm512_reduce_add_ps(total) + tail
        })
    })
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

    /// x [M, K] · w [K, N] in f64, `start` added when accumulating.
    fn naive(x: &[f32], w: &[f32], start: &[f32], accumulate: bool, m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                let product: f64 = (0..k).map(|p| x[row * k + p] as f64 * w[p * n + col] as f64).sum();
                product as f32 + if accumulate { start[i] } else { 0.0 }
            })
            .collect()
    }

    fn max_error(got: &[f32], expected: &[f32]) -> f32 {
        got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn small_m_kernels_match_the_general_matmul() {
        // K and N cross task, tile and vector-lane boundaries with remainders; M odd and even.
        let shapes = [
            (1, 1, 1),
            (1, 130, 77),
            (2, 77, 130),
            (3, 200, 129),
            (SMALL_M, 65, 300),
            (SMALL_M_T, 13, 70),
        ];
        for (m, k, n) in shapes {
            let x = random_vec(m * k, 1);
            let w = random_vec(k * n, 2);
            let start = random_vec(m * n, 3);
            let w_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect(); // [N, K]
            for accumulate in [false, true] {
                let expected = naive(&x, &w, &start, accumulate, m, k, n);
                for par in [Par::Seq, Par::rayon(0)] {
                    if m <= SMALL_M {
                        let mut out = start.clone();
                        matmul_small_m(&mut out, accumulate, &x, &w, m, k, n, par);
                        let err = max_error(&out, &expected);
                        assert!(
                            err < 1e-4,
                            "w [K, N] m={m} k={k} n={n} accumulate={accumulate}: error {err}"
                        );
                    }
                    let mut out_t = start.clone();
                    matmul_small_m_t(&mut out_t, accumulate, &x, &w_t, m, k, n, par);
                    let err = max_error(&out_t, &expected);
                    assert!(
                        err < 1e-4,
                        "w [N, K] m={m} k={k} n={n} accumulate={accumulate}: error {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn results_depend_neither_on_the_thread_count_nor_on_the_other_rows() {
        // Bit for bit: sequential against the pool, and each row of x alone against the batch.
        let (k, n) = (100, 300);
        let w = random_vec(k * n, 6);
        for m in [1, 2, 3, SMALL_M, 7, SMALL_M_T] {
            let x = random_vec(m * k, 7);
            let run = |m: usize, x: &[f32], par: Par| {
                let mut out_t = vec![0.0; m * n];
                matmul_small_m_t(&mut out_t, false, x, &w, m, k, n, par);
                // the same values read as w [K, N]
                let mut out = vec![0.0; m * n];
                if m <= SMALL_M {
                    matmul_small_m(&mut out, false, x, &w, m, k, n, par);
                }
                (out_t, out)
            };
            let pooled = run(m, &x, Par::rayon(0));
            assert_eq!(run(m, &x, Par::Seq), pooled, "m={m}: sequential and pooled differ");
            for (r, x_row) in x.chunks_exact(k).enumerate() {
                let (alone_t, alone) = run(1, x_row, Par::rayon(0));
                assert_eq!(
                    alone_t,
                    pooled.0[r * n..(r + 1) * n],
                    "m={m}: [N, K] row {r} alone differs"
                );
                if m <= SMALL_M {
                    assert_eq!(
                        alone,
                        pooled.1[r * n..(r + 1) * n],
                        "m={m}: [K, N] row {r} alone differs"
                    );
                }
            }
        }
    }

    #[test]
    fn every_dot_kernel_matches_the_f64_dots_on_odd_shapes() {
        let kernels: Vec<DotKernel> = DotKernel::available().collect();
        // M rows of x against 4 rows of w: whole tiles of two x rows and one left over; K
        // shorter than a vector, a multiple of one or two, and with tails of 1-31.
        for (m, k) in [(1, 3), (2, 8), (3, 16), (2, 63), (5, 77), (4, 768)] {
            let x = random_vec(m * k, 4);
            let w = random_vec(DOT_STREAMS * k, 5);
            let rows: [&[f32]; DOT_STREAMS] = std::array::from_fn(|s| &w[s * k..(s + 1) * k]);
            let expected: Vec<f32> = (0..DOT_STREAMS * m)
                .map(|i| {
                    let (s, r) = (i / m, i % m);
                    (0..k).map(|p| w[s * k + p] as f64 * x[r * k + p] as f64).sum::<f64>() as f32
                })
                .collect();
            for &kernel in &kernels {
                let mut dots_t = vec![f32::NAN; DOT_STREAMS * m];
                dots_along_x(kernel, &mut dots_t, [0, 1, 2, 3], rows, &x);
                let err = max_error(&dots_t, &expected);
                assert!(err < 1e-4, "m={m} k={k}: error {err}");
            }
        }
    }
}
