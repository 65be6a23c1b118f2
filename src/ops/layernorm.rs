//! LayerNorm over the channel dimension: `out = (x - mean) / sqrt(var + eps) * w + b`.

use super::rows_per_task;
use rayon::prelude::*;

/// Independent partial sums per row reduction (see [`super::sum_lanes`]).
const LANES: usize = 16;

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
        .with_min_len(rows_per_task(c))
        .for_each(|((out, (mean, rstd)), x)| {
            let m = super::sum(x) / c as f32;
            let var = super::sum_lanes::<f32, LANES>(x, |v| (v - m) * (v - m)) / c as f32; // biased, as PyTorch
            let s = 1.0 / (var + eps).sqrt();
            for (((o, &xi), &wi), &bi) in out.iter_mut().zip(x).zip(w).zip(b) {
                *o = (xi - m) * s * wi + bi;
            }
            *mean = m;
            *rstd = s;
        });
}

/// Backward. With x̂ = (x - mean) · rstd and g = dout ⊙ w:
/// `dinp += rstd · (g - mean(g) - x̂ · mean(g ⊙ x̂))`, and unless the LayerNorm is frozen
/// (`grads` None), `grads` = (`dw += Σ_rows dout ⊙ x̂`, `db += Σ_rows dout`).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    grads: Option<(&mut [f32], &mut [f32])>,
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
        .with_min_len(rows_per_task(c))
        .for_each(|(((dx, dy), x), (&m, &s))| {
            // Σ g and Σ g·x̂ in LANES lanes each, as in [`super::sum_lanes`], so that they vectorise.
            let (mut g_lanes, mut gx_lanes) = ([0.0f32; LANES], [0.0f32; LANES]);
            let mut add = |dy: &[f32], x: &[f32], w: &[f32]| {
                let lanes = g_lanes.iter_mut().zip(gx_lanes.iter_mut());
                for ((((g_lane, gx_lane), &dyi), &xi), &wi) in lanes.zip(dy).zip(x).zip(w) {
                    let g = dyi * wi;
                    *g_lane += g;
                    *gx_lane += g * (xi - m) * s;
                }
            };
            let (dys, xs, ws) = (dy.chunks_exact(LANES), x.chunks_exact(LANES), w.chunks_exact(LANES));
            add(dys.remainder(), xs.remainder(), ws.remainder());
            dys.zip(xs).zip(ws).for_each(|((dy, x), w)| add(dy, x, w));
            let g_mean = g_lanes.iter().sum::<f32>() / c as f32;
            let gx_mean = gx_lanes.iter().sum::<f32>() / c as f32;
            for (((dxi, &dyi), &xi), &wi) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                *dxi += s * (dyi * wi - g_mean - (xi - m) * s * gx_mean);
            }
        });
    // Parameter gradients: parallel over column blocks, each task summing over all rows.
    let Some((dw, db)) = grads else { return };
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
        layernorm_backward(&mut dinp, Some((&mut dw, &mut db)), &dout, &inp, &mean, &rstd, &w, c);
        check_gradient("layernorm dinp", &inp, &dinp, &dout, |x| forward(x, &w, &b).0);
        check_gradient("layernorm dw", &w, &dw, &dout, |x| forward(&inp, x, &b).0);
        check_gradient("layernorm db", &b, &db, &dout, |x| forward(&inp, &w, x).0);
    }
}
