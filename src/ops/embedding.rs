//! Token + position embedding: `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`.

use rayon::prelude::*;

/// Forward. tokens: [B, T] (already checked < V); wte: [V, C]; wpe: [≥ pos0 + T, C]; out: [B, T, C].
/// `pos0` is the position of the first token (non-zero when decoding with a KV cache).
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize, pos0: usize) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(i, (row, &tok))| {
            let pos = pos0 + i % t;
            let (te, pe) = (&wte[tok as usize * c..][..c], &wpe[pos * c..][..c]);
            for ((o, &a), &p) in row.iter_mut().zip(te).zip(pe) {
                *o = a + p;
            }
        });
}

/// Backward: scatter-add each row of dout into the rows of wte and wpe it came from.
/// `dwte[tokens[b, t]] += dout[b, t]`, `dwpe[t] += Σ_b dout[b, t]` (no dwpe: wpe frozen).
pub fn embedding_backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    // Position rows are disjoint: one task per position, summing over the batch.
    if let Some(dwpe) = dwpe {
        dwpe[..t * c].par_chunks_mut(c).enumerate().for_each(|(pos, dp)| {
            for row in dout.chunks_exact(c).skip(pos).step_by(t) {
                dp.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
            }
        });
    }
    // Token rows may repeat, so this scatter runs in order (it is tiny next to the matmuls).
    for (row, &tok) in dout.chunks_exact(c).zip(tokens) {
        dwte[tok as usize * c..][..c]
            .iter_mut()
            .zip(row)
            .for_each(|(d, &g)| *d += g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn gradients_match_finite_differences_with_repeated_tokens() {
        let (v, t, c, b) = (5, 3, 4, 2);
        let tokens = [1u32, 4, 1, 1, 0, 2];
        let wte = random_vec(v * c, 1);
        let wpe = random_vec(t * c, 2);
        let dout = random_vec(b * t * c, 3);
        let forward = |wte: &[f32], wpe: &[f32]| {
            let mut out = vec![0.0; b * t * c];
            embedding_forward(&mut out, &tokens, wte, wpe, t, c, 0);
            out
        };
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        embedding_backward(&mut dwte, Some(&mut dwpe), &dout, &tokens, t, c);
        check_gradient("embedding dwte", &wte, &dwte, &dout, |x| forward(x, &wpe));
        check_gradient("embedding dwpe", &wpe, &dwpe, &dout, |x| forward(&wte, x));
    }
}
