//! LayerNorm over the channel dimension: `out = (x - mean) / sqrt(var + eps) * w + b`.

use super::ROWS_PER_TASK;
use rayon::prelude::*;

/// Forward. inp, out: [N, C]; w, b: [C]; mean, rstd: [N] are kept for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
    eps: f32,
) {
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .zip(inp.par_chunks(c))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((out, (mean, rstd)), x)| {
            let m = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() / c as f32; // biased, as PyTorch
            let s = 1.0 / (var + eps).sqrt();
            for (((o, &xi), &wi), &bi) in out.iter_mut().zip(x).zip(w).zip(b) {
                *o = (xi - m) * s * wi + bi;
            }
            *mean = m;
            *rstd = s;
        });
}

/// Backward. With x̂ = (x - mean) · rstd and g = dout ⊙ w:
/// `dinp += rstd · (g - mean(g) - x̂ · mean(g ⊙ x̂))`, `dw += Σ_rows dout ⊙ x̂`, `db += Σ_rows dout`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
    c: usize,
) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((dx, dy), x), (&m, &s))| {
            let (mut g_mean, mut gx_mean) = (0.0f32, 0.0f32);
            for ((&dyi, &xi), &wi) in dy.iter().zip(x).zip(w) {
                let g = dyi * wi;
                g_mean += g;
                gx_mean += g * (xi - m) * s;
            }
            g_mean /= c as f32;
            gx_mean /= c as f32;
            for (((dxi, &dyi), &xi), &wi) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                *dxi += s * (dyi * wi - g_mean - (xi - m) * s * gx_mean);
            }
        });
    // Parameter gradients: parallel over column blocks, each task summing over all rows.
    const COLS_PER_TASK: usize = 64;
    dw.par_chunks_mut(COLS_PER_TASK)
        .zip(db.par_chunks_mut(COLS_PER_TASK))
        .enumerate()
        .for_each(|(block, (dw, db))| {
            let c0 = block * COLS_PER_TASK;
            for ((dy, x), (&m, &s)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
                for (j, (dwj, dbj)) in dw.iter_mut().zip(db.iter_mut()).enumerate() {
                    let col = c0 + j;
                    *dwj += dy[col] * (x[col] - m) * s;
                    *dbj += dy[col];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn layernorm_gradients_match_finite_differences() {
        let (n, c) = (3, 70); // 70 columns: crosses a column-block boundary
        let inp = random_vec(n * c, 1);
        let w = random_vec(c, 2);
        let b = random_vec(c, 3);
        let forward = |inp: &[f32], w: &[f32], b: &[f32]| {
            let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut mean, &mut rstd, inp, w, b, c, 1e-5);
            (out, mean, rstd)
        };
        let (_, mean, rstd) = forward(&inp, &w, &b);
        let dout = random_vec(n * c, 4);
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dinp, &mut dw, &mut db, &dout, &inp, &mean, &rstd, &w, c);
        check_gradient("layernorm dinp", &inp, &dinp, &dout, |x| forward(x, &w, &b).0);
        check_gradient("layernorm dw", &w, &dw, &dout, |x| forward(&inp, x, &b).0);
        check_gradient("layernorm db", &b, &db, &dout, |x| forward(&inp, &w, x).0);
    }
}
