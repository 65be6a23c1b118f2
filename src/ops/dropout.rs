//! Inverted dropout: in training each activation is kept with probability 1-p and scaled by
//! 1/(1-p), so evaluation (no dropout) sees the same expected values.

use crate::rng::Rng;

/// Fills `mask` with 0 (dropped, probability p) or 1/(1-p) (kept), drawing from `rng` in order
/// so a seeded run is reproducible.
pub fn fill_mask(mask: &mut [f32], p: f32, rng: &mut Rng) {
    let keep_scale = 1.0 / (1.0 - p);
    for m in mask.iter_mut() {
        *m = if rng.uniform() < p { 0.0 } else { keep_scale };
    }
}

/// Forward and backward are the same product: `x ⊙ mask` (d(x ⊙ m)/dx = m).
pub fn apply_mask(x: &mut [f32], mask: &[f32]) {
    x.iter_mut().zip(mask).for_each(|(v, &m)| *v *= m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_preserves_the_mean() {
        let mut mask = vec![0.0; 100_000];
        fill_mask(&mut mask, 0.2, &mut Rng::new(1));
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f32 / mask.len() as f32;
        let mean = mask.iter().sum::<f32>() / mask.len() as f32;
        assert!(
            (kept - 0.8).abs() < 0.01 && (mean - 1.0).abs() < 0.01,
            "kept {kept} mean {mean}"
        );
    }
}
