//! Attention of one query per head against its cached keys and values: a decoding step.
//!
//! `s_j = q·k_j · scale` over the n visible keys, `p = softmax(s)`, `o = Σ_j p_j v_j`, and the
//! log-sum-exp of the scores. With one query there is nothing to tile: the keys are read once
//! for the scores, then the values once for O, straight from the cache in f32 or IEEE half
//! precision (widened in registers). Past a few hundred positions this reading is what a
//! decoding step waits for, so the half-precision cache of a low-precision model halves it.
//!
//! Kernels: AVX-512 where the CPU has it and hs is a multiple of 16 (GPT-2's is 64): four keys'
//! dot products at a time, then O's 64-value blocks held in registers over all values. The
//! attention sends a query here only then ([`reads_in_registers`]); the plain Rust kernels are
//! the reference the vector ones are tested against, and serve a direct call anywhere.

use super::lowp::half::f16_to_f32;

/// A KV cache's keys or values, [B, NH, P, hs], as it stores them.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [u16]),
}

impl<'a> KvRows<'a> {
    /// Elements held.
    pub(crate) fn len(self) -> usize {
        match self {
            KvRows::F32(x) => x.len(),
            KvRows::F16(x) => x.len(),
        }
    }

    /// Elements at..at + n: one head's first positions.
    pub(super) fn part(self, at: usize, n: usize) -> KvRows<'a> {
        match self {
            KvRows::F32(x) => KvRows::F32(&x[at..at + n]),
            KvRows::F16(x) => KvRows::F16(&x[at..at + n]),
        }
    }
}

/// Whether this CPU runs the vector kernels for heads of `hs` values, widening f16 in
/// registers: where it does not, a decoding step's query goes through the tiled attention
/// instead (faer's vector products), and a KV cache in f16 is not worth its widening.
pub fn reads_in_registers(hs: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        hs.is_multiple_of(16) && is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hs;
        false
    }
}

/// One query q [hs] against the first n rows of keys k and values v ([≥ n, hs] each): o [hs]
/// receives `softmax(q·kᵀ·scale)·v`; returns the scores' log-sum-exp. `scores` is scratch of
/// at least n values.
pub fn attend_one(o: &mut [f32], q: &[f32], k: KvRows, v: KvRows, n: usize, scale: f32, scores: &mut [f32]) -> f32 {
    let hs = q.len();
    assert!(n >= 1 && o.len() == hs && k.len() >= n * hs && v.len() >= n * hs);
    let s = &mut scores[..n];
    dots(s, q, k, hs);
    s.iter_mut().for_each(|x| *x *= scale);
    let m = super::max(s);
    s.iter_mut().for_each(|x| *x = super::exp(*x - m));
    let l = super::sum(s);
    weighted_rows(o, s, v, hs);
    o.iter_mut().for_each(|x| *x /= l);
    m + l.ln()
}

/// `out[j] = q · k_j` for the rows k_j of k, j < out.len().
fn dots(out: &mut [f32], q: &[f32], k: KvRows, hs: usize) {
    #[cfg(target_arch = "x86_64")]
    if reads_in_registers(hs) {
        // SAFETY: the CPU has AVX-512F; hs is a multiple of 16 and k holds out.len() rows.
        return unsafe {
            match k {
                KvRows::F32(k) => x86::dots(out, q, k),
                KvRows::F16(k) => x86::dots(out, q, k),
            }
        };
    }
    portable_dots(out, q, k, hs)
}

/// `o = Σ_j p_j · v_j` over the rows v_j of v, j < p.len().
fn weighted_rows(o: &mut [f32], p: &[f32], v: KvRows, hs: usize) {
    #[cfg(target_arch = "x86_64")]
    if reads_in_registers(hs) {
        // SAFETY: the CPU has AVX-512F; hs is a multiple of 16 and v holds p.len() rows.
        return unsafe {
            match v {
                KvRows::F32(v) => x86::weighted_rows(o, p, v),
                KvRows::F16(v) => x86::weighted_rows(o, p, v),
            }
        };
    }
    portable_weighted_rows(o, p, v, hs)
}

/// Row j of `rows` [.., hs] as f32, value by value.
fn row_values(rows: KvRows<'_>, j: usize, hs: usize) -> impl Iterator<Item = f32> + '_ {
    let (f32s, f16s) = match rows {
        KvRows::F32(x) => (&x[j * hs..][..hs], &[][..]),
        KvRows::F16(x) => (&[][..], &x[j * hs..][..hs]),
    };
    f32s.iter().copied().chain(f16s.iter().map(|&h| f16_to_f32(h)))
}

fn portable_dots(out: &mut [f32], q: &[f32], k: KvRows, hs: usize) {
    for (j, s) in out.iter_mut().enumerate() {
        *s = q.iter().zip(row_values(k, j, hs)).map(|(a, b)| a * b).sum();
    }
}

fn portable_weighted_rows(o: &mut [f32], p: &[f32], v: KvRows, hs: usize) {
    o.fill(0.0);
    for (j, &p_j) in p.iter().enumerate() {
        o.iter_mut().zip(row_values(v, j, hs)).for_each(|(o, v)| *o += p_j * v);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// A stored element whose 16 consecutive values load as one f32 vector.
    pub trait Widen: Copy {
        /// # Safety
        /// The CPU has AVX-512F and `p` points at 16 readable values.
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Widen for f32 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }

    impl Widen for u16 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const u16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
    }

    /// Keys whose dot products one step of [`dots`] takes: four independent sums hide the
    /// latency of the multiply-adds and amortise the loads of q.
    const KEYS: usize = 4;

    /// [`super::dots`], hs = q.len() a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots<T: Widen>(out: &mut [f32], q: &[f32], k: &[T]) {
        let n = out.len();
        assert!(k.len() >= n * q.len() && q.len().is_multiple_of(16));
        let full = n / KEYS * KEYS;
        for j in (0..full).step_by(KEYS) {
            dots_of::<T, KEYS>(&mut out[j..j + KEYS], q, k, j);
        }
        for j in full..n {
            dots_of::<T, 1>(&mut out[j..j + 1], q, k, j);
        }
    }

    /// `out[u] = q · k_(j + u)` for the U keys from j on.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dots_of<T: Widen, const U: usize>(out: &mut [f32], q: &[f32], k: &[T], j: usize) {
        let hs = q.len();
        let mut acc = [_mm512_setzero_ps(); U];
        for d in (0..hs).step_by(16) {
            let q_d = _mm512_loadu_ps(q.as_ptr().add(d));
            for (u, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(q_d, T::load16(k.as_ptr().add((j + u) * hs + d)), *acc);
            }
        }
        for (out, acc) in out.iter_mut().zip(acc) {
            *out = _mm512_reduce_add_ps(acc);
        }
    }

    /// [`super::weighted_rows`], hs = o.len() a multiple of 16: O's values in blocks of 64
    /// (four vectors), each block summed in registers over all rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_rows<T: Widen>(o: &mut [f32], p: &[f32], v: &[T]) {
        let hs = o.len();
        assert!(v.len() >= p.len() * hs && hs.is_multiple_of(16));
        for c0 in (0..hs).step_by(64) {
            let vectors = ((hs - c0) / 16).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, &p_j) in p.iter().enumerate() {
                let p_j = _mm512_set1_ps(p_j);
                let row = v.as_ptr().add(j * hs + c0);
                for (u, acc) in acc.iter_mut().enumerate().take(vectors) {
                    *acc = _mm512_fmadd_ps(p_j, T::load16(row.add(16 * u)), *acc);
                }
            }
            for (u, acc) in acc.iter().enumerate().take(vectors) {
                _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * u), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lowp::half::f32_to_f16;
    use crate::ops::test_util::random_vec;

    /// (o, lse) in f64 from f32 keys and values.
    fn reference(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32) -> (Vec<f32>, f32) {
        let hs = q.len();
        let s: Vec<f64> = (0..n)
            .map(|j| (0..hs).map(|d| q[d] as f64 * k[j * hs + d] as f64).sum::<f64>() * scale as f64)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
        let o = (0..hs)
            .map(|d| (0..n).map(|j| (s[j] - m).exp() / l * v[j * hs + d] as f64).sum::<f64>() as f32)
            .collect();
        (o, (m + l.ln()) as f32)
    }

    /// Every kernel this CPU runs, and the portable one, against f64 arithmetic; a head size
    /// the vector kernels take (16, 64, 80: one block of O and a partial one) and one they do
    /// not (12); key counts around the step of four; keys and values in f32 and in f16.
    #[test]
    fn one_query_attends_as_the_reference_in_each_storage_and_kernel() {
        for hs in [12, 16, 64, 80] {
            for n in [1, 3, 4, 5, 37, 300] {
                let q = random_vec(hs, 1);
                let (k, v) = (random_vec(n * hs + 5, 2), random_vec(n * hs + 5, 3));
                let (k16, v16): (Vec<u16>, Vec<u16>) = (
                    k.iter().map(|&x| f32_to_f16(x)).collect(),
                    v.iter().map(|&x| f32_to_f16(x)).collect(),
                );
                let widen = |h: &[u16]| h.iter().map(|&h| f16_to_f32(h)).collect::<Vec<f32>>();
                let scale = 1.0 / (hs as f32).sqrt();
                for (keys, values, (k_ref, v_ref)) in [
                    (KvRows::F32(&k), KvRows::F32(&v), (k.clone(), v.clone())),
                    (KvRows::F16(&k16), KvRows::F16(&v16), (widen(&k16), widen(&v16))),
                ] {
                    let (o_ref, lse_ref) = reference(&q, &k_ref, &v_ref, n, scale);
                    let (mut o, mut scores) = (vec![0.0; hs], vec![0.0; n + 3]);
                    let lse = attend_one(&mut o, &q, keys, values, n, scale, &mut scores);
                    let err = o.iter().zip(&o_ref).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(
                        err < 1e-5 && (lse - lse_ref).abs() < 1e-5,
                        "hs {hs} n {n}: {err}, lse {lse} vs {lse_ref}"
                    );
                    // the portable kernels alone
                    let (mut dots, mut sum) = (vec![0.0; n], vec![0.0; hs]);
                    portable_dots(&mut dots, &q, keys, hs);
                    let mut fast = vec![0.0; n];
                    super::dots(&mut fast, &q, keys, hs);
                    let err = dots.iter().zip(&fast).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err < 1e-4, "hs {hs} n {n}: dots differ by {err}");
                    let p: Vec<f32> = (0..n).map(|j| 1.0 / (j + 1) as f32).collect();
                    portable_weighted_rows(&mut sum, &p, values, hs);
                    let mut fast = vec![0.0; hs];
                    weighted_rows(&mut fast, &p, values, hs);
                    let err = sum.iter().zip(&fast).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err < 1e-4, "hs {hs} n {n}: weighted rows differ by {err}");
                }
            }
        }
    }
}
