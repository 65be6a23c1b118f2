//! The LM head: the last step of GPT-2, from the final LayerNorm's output to one logit per
//! vocabulary entry. It is tied to the token embedding (Press & Wolf, 2017): GPT-2 has no output
//! matrix of its own, the logit of token i is the dot product with wte's row i, and there is no bias.

use super::matmul::{all_threads, Precision};

/// Forward: `logits [N, V] = x [N, C] · wteᵀ`, the token embedding wte [V, C] read transposed.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_forward(logits: &mut [f32], x: &[f32], wte: &[f32], n: usize, c: usize, v: usize, precision: Precision) {
    precision.gemm(logits, false, x, false, wte, true, n, c, v, all_threads());
}

/// Backward. With `logits = x · wteᵀ`: `dx [N, C] = dlogits · wte` (overwritten),
/// `dwte [V, C] += dlogitsᵀ · x` (None: wte is frozen), added to what the embedding's own backward adds;
/// products in `precision`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_backward(
    dx: &mut [f32],
    dwte: Option<&mut [f32]>,
    dlogits: &[f32],
    x: &[f32],
    wte: &[f32],
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) {
    let par = all_threads();
    precision.gemm(dx, false, dlogits, false, wte, false, n, v, c, par);
    if let Some(dwte) = dwte {
        precision.gemm(dwte, true, dlogits, true, x, false, v, n, c, par);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn gradients_match_finite_differences() {
        let (n, c, v) = (3, 4, 7);
        let (x, wte, dlogits) = (random_vec(n * c, 1), random_vec(v * c, 2), random_vec(n * v, 3));
        let forward = |x: &[f32], wte: &[f32]| {
            let mut logits = vec![0.0; n * v];
            lm_head_forward(&mut logits, x, wte, n, c, v, Precision::F32);
            logits
        };
        let (mut dx, mut dwte) = (vec![0.0; n * c], vec![0.0; v * c]);
        lm_head_backward(&mut dx, Some(&mut dwte), &dlogits, &x, &wte, n, c, v, Precision::F32);
        check_gradient("lm head dx", &x, &dx, &dlogits, |x| forward(x, &wte));
        check_gradient("lm head dwte", &wte, &dwte, &dlogits, |w| forward(&x, w));
    }
}
