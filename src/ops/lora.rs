//! LoRA (Hu et al., 2021) beside a linear layer, as Hugging Face PEFT computes it for GPT-2:
//!
//! ```text
//! y [N, OC] = x W + b  +  s · drop(x) Aᵀ Bᵀ        A [r, IC], B [OC, r], s = alpha / r
//! ```
//!
//! W and b stay frozen; only A and B learn. A and B are stored as PEFT stores them (the
//! `nn.Linear` layout, [out, in]), so adapter files are read and written unchanged. The dropout
//! applies to the adapter's input only, as PEFT's `lora_dropout` does; the caller passes the
//! dropped input `x̃ = x ⊙ mask` (or x itself without dropout).

use super::matmul::{all_threads, gemm};

/// One low-rank pair: A [r, IC] and B [OC, r].
pub struct LowRank<S> {
    pub a: S,
    pub b: S,
}

/// The shape of one adapted linear layer: N rows, IC → OC features, rank r, scale s = alpha/r.
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    pub n: usize,
    pub ic: usize,
    pub oc: usize,
    pub r: usize,
    pub scale: f32,
}

/// Forward: `h [N, r] = s · x̃ Aᵀ` (kept for the backward pass), then `out [N, OC] += h Bᵀ`,
/// on top of the frozen layer's `x W + b`.
pub fn lora_forward(out: &mut [f32], h: &mut [f32], x: &[f32], w: &LowRank<&[f32]>, s: LoraShape) {
    let par = all_threads();
    gemm(h, false, x, false, w.a, true, s.n, s.ic, s.r, par);
    h.iter_mut().for_each(|v| *v *= s.scale);
    gemm(out, true, h, false, w.b, true, s.n, s.r, s.oc, par);
}

/// Backward. With `h = s · x̃ Aᵀ` and `out += h Bᵀ`:
/// `dB [OC, r] += doutᵀ h`, `dh [N, r] = s · dout B` (into `dh`), `dA [r, IC] += dhᵀ x̃`, and
/// `dx [N, IC] += (dh A) ⊙ mask`: added to the frozen layer's `dout Wᵀ`, which `dx` holds.
/// `mask` = (the dropout mask [N, IC], scratch [N, IC]), or None without dropout.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: &mut [f32],
    g: &mut LowRank<&mut [f32]>,
    dh: &mut [f32],
    mask: Option<(&[f32], &mut [f32])>,
    dout: &[f32],
    x: &[f32],
    h: &[f32],
    w: &LowRank<&[f32]>,
    s: LoraShape,
) {
    let par = all_threads();
    gemm(g.b, true, dout, true, h, false, s.oc, s.n, s.r, par);
    gemm(dh, false, dout, false, w.b, false, s.n, s.oc, s.r, par);
    dh.iter_mut().for_each(|v| *v *= s.scale);
    gemm(g.a, true, dh, true, x, false, s.r, s.n, s.ic, par);
    match mask {
        None => gemm(dx, true, dh, false, w.a, false, s.n, s.r, s.ic, par),
        Some((mask, scratch)) => {
            gemm(scratch, false, dh, false, w.a, false, s.n, s.r, s.ic, par);
            for ((d, &g), &m) in dx.iter_mut().zip(scratch.iter()).zip(mask) {
                *d += g * m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    /// The adapter's own output `s · (x ⊙ mask) Aᵀ Bᵀ` (the frozen layer's part has its own test).
    fn forward(x: &[f32], mask: &[f32], a: &[f32], b: &[f32], s: LoraShape) -> Vec<f32> {
        let dropped: Vec<f32> = x.iter().zip(mask).map(|(x, m)| x * m).collect();
        let (mut out, mut h) = (vec![0.0; s.n * s.oc], vec![0.0; s.n * s.r]);
        lora_forward(&mut out, &mut h, &dropped, &LowRank { a, b }, s);
        out
    }

    #[test]
    fn forward_adds_the_scaled_low_rank_product() {
        let s = LoraShape {
            n: 3,
            ic: 4,
            oc: 5,
            r: 2,
            scale: 1.5,
        };
        let (x, a, b) = (random_vec(12, 1), random_vec(8, 2), random_vec(10, 3));
        let out = forward(&x, &[1.0; 12], &a, &b, s);
        for (i, &y) in out.iter().enumerate() {
            let (row, o) = (i / s.oc, i % s.oc);
            let expected: f32 = (0..s.r)
                .map(|k| b[o * s.r + k] * (0..s.ic).map(|j| x[row * s.ic + j] * a[k * s.ic + j]).sum::<f32>())
                .sum();
            assert!((y - s.scale * expected).abs() < 1e-5, "{y} vs {}", s.scale * expected);
        }
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_dropout() {
        let s = LoraShape {
            n: 4,
            ic: 6,
            oc: 5,
            r: 3,
            scale: 2.0,
        };
        let (x, a, b, dout) = (
            random_vec(24, 4),
            random_vec(18, 5),
            random_vec(15, 6),
            random_vec(20, 7),
        );
        let dropout_mask: Vec<f32> = (0..24).map(|i| if i % 3 == 0 { 0.0 } else { 1.25 }).collect();
        for mask in [None, Some(dropout_mask)] {
            let mask_or_ones = mask.clone().unwrap_or_else(|| vec![1.0; 24]);
            let dropped: Vec<f32> = x.iter().zip(&mask_or_ones).map(|(x, m)| x * m).collect();
            let w = LowRank { a: &a[..], b: &b[..] };
            let mut h = vec![0.0; s.n * s.r];
            lora_forward(&mut [0.0; 20], &mut h, &dropped, &w, s);
            let (mut dx, mut da, mut db, mut dh) = (vec![0.0; 24], vec![0.0; 18], vec![0.0; 15], vec![0.0; 12]);
            let mut scratch = [0.0; 24];
            let mut g = LowRank {
                a: &mut da[..],
                b: &mut db[..],
            };
            let mask_and_scratch = mask.as_deref().map(|m| (m, &mut scratch[..]));
            lora_backward(&mut dx, &mut g, &mut dh, mask_and_scratch, &dout, &dropped, &h, &w, s);
            let m = &mask_or_ones;
            check_gradient("lora dx", &x, &dx, &dout, |x| forward(x, m, &a, &b, s));
            check_gradient("lora dA", &a, &da, &dout, |a| forward(&x, m, a, &b, s));
            check_gradient("lora dB", &b, &db, &dout, |b| forward(&x, m, &a, b, s));
        }
    }
}
