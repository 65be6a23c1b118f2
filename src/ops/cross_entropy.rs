//! Softmax cross-entropy over the vocabulary, with PyTorch's ignore index.
//!
//! For a row of logits z and target y: `loss = logsumexp(z) - z_y`; the loss of a batch is the
//! mean over the rows whose target is not [`IGNORE_INDEX`].

use super::rows_per_task;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A target equal to this is skipped (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// An error naming the first target that is neither in [0, v) nor [`IGNORE_INDEX`].
pub fn check_targets(targets: &[i32], v: usize) -> Result<()> {
    match targets
        .iter()
        .find(|&&y| y != IGNORE_INDEX && (y < 0 || y as usize >= v))
    {
        Some(&bad) => Err(Error::Input(format!(
            "target id {bad} is outside the vocabulary [0, {v})"
        ))),
        None => Ok(()),
    }
}

/// How many targets count towards the mean loss (those not [`IGNORE_INDEX`]).
pub fn counted_targets(targets: &[i32]) -> usize {
    targets.iter().filter(|&&y| y != IGNORE_INDEX).count()
}

/// Forward. logits: [N, V]; targets: [N]; lse: [N] receives logsumexp of each row (for the
/// backward pass), row_loss: [N] each row's loss (0 when ignored). Returns the mean loss over
/// counted rows (summed in order, so it is reproducible bit for bit) and the count.
pub fn cross_entropy_forward(
    lse: &mut [f32],
    row_loss: &mut [f32],
    logits: &[f32],
    targets: &[i32],
    v: usize,
) -> Result<(f32, usize)> {
    check_targets(targets, v)?;
    lse.par_iter_mut()
        .zip(row_loss.par_iter_mut())
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter())
        .with_min_len(rows_per_task(v))
        .for_each(|(((lse, loss), row), &y)| {
            let max = super::max(row);
            *lse = max + super::sum_exp(row, max).ln();
            *loss = if y == IGNORE_INDEX { 0.0 } else { *lse - row[y as usize] };
        });
    let total: f64 = row_loss.iter().map(|&l| l as f64).sum();
    let count = counted_targets(targets);
    let mean = if count == 0 { 0.0 } else { (total / count as f64) as f32 };
    Ok((mean, count))
}

/// Backward, in place: `logits` becomes `scale · dloss/dlogits` of the summed loss. For the
/// mean loss, scale = 1 / count. A counted row gets `dz = (softmax(z) - onehot(y)) · scale`;
/// an ignored row gets 0.
pub fn cross_entropy_backward_inplace(logits: &mut [f32], lse: &[f32], targets: &[i32], v: usize, scale: f32) {
    logits
        .par_chunks_mut(v)
        .zip(lse.par_iter())
        .zip(targets.par_iter())
        .with_min_len(rows_per_task(v))
        .for_each(|((row, &lse), &y)| {
            if y == IGNORE_INDEX {
                row.fill(0.0);
                return;
            }
            for z in row.iter_mut() {
                *z = super::exp(*z - lse) * scale;
            }
            row[y as usize] -= scale;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn gradient_matches_finite_differences_and_ignore_index_is_skipped() {
        let (n, v) = (4, 7);
        let logits = random_vec(n * v, 1);
        let targets = [3, IGNORE_INDEX, 0, 6];
        let loss_of = |z: &[f32]| {
            let (mut lse, mut rows) = (vec![0.0; n], vec![0.0; n]);
            vec![cross_entropy_forward(&mut lse, &mut rows, z, &targets, v).unwrap().0]
        };
        let (mut lse, mut rows) = (vec![0.0; n], vec![0.0; n]);
        let (_, count) = cross_entropy_forward(&mut lse, &mut rows, &logits, &targets, v).unwrap();
        assert_eq!(count, 3);
        let mut grad = logits.clone();
        cross_entropy_backward_inplace(&mut grad, &lse, &targets, v, 1.0 / count as f32);
        check_gradient("cross-entropy", &logits, &grad, &[1.0], loss_of);
    }

    #[test]
    fn uniform_logits_give_log_v_and_bad_targets_are_errors() {
        let (mut lse, mut rows) = (vec![0.0; 2], vec![0.0; 2]);
        let (loss, _) = cross_entropy_forward(&mut lse, &mut rows, &[0.0; 10], &[1, 4], 5).unwrap();
        assert!((loss - 5f32.ln()).abs() < 1e-6);
        assert!(cross_entropy_forward(&mut lse, &mut rows, &[0.0; 10], &[1, 5], 5).is_err());
    }
}
