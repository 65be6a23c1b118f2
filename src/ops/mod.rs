//! The numeric kernels of GPT-2. Each op's forward and backward sit side by side, with the
//! maths and the tensor shapes in comments; all buffers are row-major flat `f32` slices.
//!
//! Backward functions *accumulate* (`+=`) into parameter gradients, so gradient accumulation
//! over micro-batches is free; gradients of activations are written as the op documents.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attend_one;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod lm_head;
pub mod lora;
pub mod lowp;
pub mod matmul;
pub mod matmul_bf16;
pub mod matvec;
#[cfg(target_arch = "x86_64")]
pub mod prompt_f32;
pub mod residual;

use rayon::prelude::*;

/// e^x in f32, branch-free so that loops over slices vectorise (libm's expf does not).
/// Range reduction x = n·ln2 + r with |r| ≤ ln2/2, then Cephes' degree-6 polynomial for e^r
/// (relative error about 2e-7, like expf). Inputs are clamped to [-87, 88]: e^-87 ≈ 1.6e-38
/// stands in for smaller values (as good as 0 next to the 1 that every softmax row holds).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n built in the exponent bits. Adding 2^23 puts the integer n + 127 in the low mantissa
    // bits (no float-to-int conversion, which would keep the loop from vectorising).
    let biased = (n + 127.0 + 8_388_608.0).to_bits() & 0x7f_ffff;
    e_r * f32::from_bits(biased << 23)
}

/// tanh(x) = 1 - 2 / (e^{2x} + 1), through [`exp`]; vectorises like it.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Folds a slice in 16 independent lanes, then folds the lanes: a fixed order (so results are
/// reproducible bit for bit) that the compiler can turn into vector instructions, which a
/// single running float accumulator cannot be.
#[inline(always)]
fn fold_lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = f(*lane, x);
        }
    }
    lanes.iter().chain(tail).fold(init, |acc, &x| f(acc, x))
}

/// Largest element (-inf for an empty slice).
pub fn max(xs: &[f32]) -> f32 {
    fold_lanes(xs, f32::NEG_INFINITY, f32::max)
}

/// Σ term(x) over a slice, added in `L` independent lanes (the tail in the first lanes), then
/// the lanes added in order: a fixed order, so results are reproducible bit for bit, that the
/// compiler turns into vector instructions, which a single running sum (a chain of dependent
/// additions) is not.
#[inline(always)]
pub(crate) fn sum_lanes<T, const L: usize>(xs: &[f32], term: impl Fn(f32) -> T) -> T
where
    T: Copy + Default + std::ops::AddAssign + std::iter::Sum,
{
    let mut lanes = [T::default(); L];
    let chunks = xs.chunks_exact(L);
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += term(x);
    }
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += term(x);
        }
    }
    lanes.into_iter().sum()
}

/// Σ e^(x - shift): the softmax denominator, with shift = max(xs) for stability.
pub fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    sum_lanes::<f32, 16>(xs, |x| exp(x - shift))
}

/// Σ x.
pub fn sum(xs: &[f32]) -> f32 {
    sum_lanes::<f32, 16>(xs, |x| x)
}

/// Σ x², accumulated in f64 (a sum over 10⁸ gradient entries would lose digits in f32).
pub fn sum_squares_f64(xs: &[f32]) -> f64 {
    sum_streams::<f64, 16>(xs, |x| x as f64 * x as f64)
}

/// Sequential streams in which [`sum_streams`] reads a slice.
const STREAMS: usize = 8;

/// Σ term(x) like [`sum_lanes`], for slices read from memory rather than cache: the slice is
/// read as [`STREAMS`] equal parts side by side (the rest in lanes after them): a thread keeps
/// more reads in flight, and gets more memory bandwidth, from several sequential streams than
/// from one.
#[inline(always)]
pub(crate) fn sum_streams<T, const L: usize>(xs: &[f32], term: impl Fn(f32) -> T) -> T
where
    T: Copy + Default + std::ops::AddAssign + std::iter::Sum,
{
    let part = xs.len() / STREAMS / L * L;
    let (parts, rest) = xs.split_at(part * STREAMS);
    let mut streams: [_; STREAMS] = std::array::from_fn(|s| parts[s * part..][..part].chunks_exact(L));
    let mut lanes = [[T::default(); L]; STREAMS];
    for _ in 0..part / L {
        for (lanes, stream) in lanes.iter_mut().zip(streams.iter_mut()) {
            let chunk = stream.next().expect("part / L chunks in every stream");
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += term(x);
            }
        }
    }
    let mut total = lanes.into_iter().flatten().sum::<T>();
    total += sum_lanes::<T, L>(rest, term);
    total
}

/// Sets a buffer to zero on all threads of the pool, 256 KiB per task.
pub fn set_zero(xs: &mut [f32]) {
    xs.par_chunks_mut(1 << 16).for_each(|chunk| chunk.fill(0.0));
}

/// A zeroed buffer of `n` values whose memory is first touched by writes ([`set_zero`]). A
/// fresh allocation is mapped lazily: if its first touch were a read (as in `grad += …`), every
/// page would first map the kernel's shared zero page and then fault again, and make every
/// thread flush its TLB, on the first write: seconds of page faults in GPT-2's first step.
pub fn zeroed(n: usize) -> Vec<f32> {
    let mut xs = vec![0.0; n];
    set_zero(&mut xs);
    xs
}

/// Runs `work` on this thread's buffer in `cell`, `len` long: taken while in use (a nested call
/// gets a fresh one), grown to the largest asked for, never shrunk. Fresh buffers of megabytes
/// would cost a page fault and a page clearing per 4 KiB at every product.
pub(crate) fn with_thread_buffer<R>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    len: usize,
    work: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buffer = cell.take();
    buffer.resize(buffer.len().max(len), 0.0);
    let result = work(&mut buffer[..len]);
    cell.set(buffer);
    result
}

/// The threads a product split as `par` runs on.
pub(crate) fn thread_count(par: faer::Par) -> usize {
    match par {
        faer::Par::Seq => 1,
        faer::Par::Rayon(threads) => threads.get(),
    }
}

/// The fewest elements a rayon task of an elementwise or row-wise loop gets. Handing a task
/// to a worker and joining it costs microseconds (more when the worker has gone to sleep), the
/// time of some 10^4-10^5 elements of such work; a prompt's layers run a dozen of these loops
/// each, on a few rows. (Zen 5, 2 threads: a 16-token prefill 10-15% faster in bf16 and 4-12%
/// in f32 than with tasks of 8 rows or 4096 elements, a 64-token one as fast; 2^16 made those
/// of 64 tokens 2% slower, their GELU split three ways.)
pub(crate) const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// Rows of `width` elements per rayon task in row-parallel loops: at least 8, and at least
/// [`MIN_TASK_ELEMENTS`] elements; few enough to balance two to a few dozen cores in training.
pub(crate) fn rows_per_task(width: usize) -> usize {
    MIN_TASK_ELEMENTS.div_ceil(width.max(1)).max(8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_and_tanh_match_the_standard_library() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (ours, std) = (super::exp(x), x.exp());
            assert!((ours - std).abs() <= 4e-7 * std, "exp({x}): {ours} vs {std}");
            let (ours, std) = (super::tanh(x / 8.0), (x / 8.0).tanh());
            assert!((ours - std).abs() <= 3e-7, "tanh({}): {ours} vs {std}", x / 8.0);
            x += 0.0137;
        }
        let tiny = super::exp(-1000.0);
        assert!((0.0..1e-37).contains(&tiny) && super::exp(1000.0).is_finite());
    }

    #[test]
    fn sums_in_streams_and_lanes_add_every_element_once() {
        for n in [0, 1, 15, 127, 128, 129, 1000, 100_003] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
            let exact: f64 = xs.iter().map(|&x| x as f64 * x as f64).sum();
            assert_eq!(super::sum_squares_f64(&xs), exact, "n = {n}"); // integers: exact in f64
        }
    }

    #[test]
    fn zeroed_buffers_are_zero() {
        let mut xs = super::zeroed(200_000);
        assert!(xs.iter().all(|&x| x == 0.0));
        xs.iter_mut().for_each(|x| *x = 1.5);
        super::set_zero(&mut xs[1..]);
        assert!(xs[0] == 1.5 && xs[1..].iter().all(|&x| x == 0.0));
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::rng::Rng;

    pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Finite-difference check of a backward pass. With L(x) = Σ dout ⊙ f(x), the analytic
    /// gradient `grad` must equal dL/dx_i for every coordinate i, estimated from central
    /// differences D(h) = (L(x + h e_i) - L(x - h e_i)) / 2h by Richardson extrapolation,
    /// (4 D(h/2) - D(h)) / 3, which cancels D's h² error: at h = 1e-2 a strongly curved
    /// coordinate (a softmax near saturation) is otherwise off by far more than f32 noise.
    pub fn check_gradient(name: &str, x: &[f32], grad: &[f32], dout: &[f32], f: impl Fn(&[f32]) -> Vec<f32>) {
        assert_eq!(x.len(), grad.len(), "{name}: gradient length");
        let loss = |x: &[f32]| -> f64 { f(x).iter().zip(dout).map(|(&y, &d)| y as f64 * d as f64).sum() };
        let h = 1e-2f32;
        let mut x = x.to_vec();
        for i in 0..x.len() {
            let saved = x[i];
            let mut central = |h: f32| {
                x[i] = saved + h;
                let plus = loss(&x);
                x[i] = saved - h;
                let minus = loss(&x);
                x[i] = saved;
                (plus - minus) / (2.0 * h as f64)
            };
            let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
            let analytic = grad[i] as f64;
            let tolerance = 2e-3 + 1e-2 * analytic.abs().max(numeric.abs());
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{name}[{i}]: analytic {analytic} vs finite difference {numeric}"
            );
        }
    }
}
