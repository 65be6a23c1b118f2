//! The residual connection of a block's two branches: `out = x + branch(x)`.
//!
//! Its backward pass needs no code of its own: d(x + branch)/dx is the identity, so the
//! gradient of the stream reaches x unchanged and also flows into the branch, whose input
//! gradient the block then adds to it.

use rayon::prelude::*;

/// Forward, in place: `branch_out [N, C] ← x [N, C] + branch_out`.
pub fn residual_forward(branch_out: &mut [f32], x: &[f32]) {
    branch_out
        .par_chunks_mut(super::MIN_TASK_ELEMENTS)
        .zip(x.par_chunks(super::MIN_TASK_ELEMENTS))
        .for_each(|(out, x)| out.iter_mut().zip(x).for_each(|(o, &x)| *o += x));
}
