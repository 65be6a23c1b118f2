//! Inverted dropout: in training each activation is kept with probability 1-p and scaled by
//! 1/(1-p), so evaluation (no dropout) sees the same expected values.

use crate::rng::Rng;

/// Dropout with probability `p`, its masks drawn from `rng`.
pub struct Dropout<'r> {
    pub p: f32,
    pub rng: &'r mut Rng,
}

impl Dropout<'_> {
    /// Fills `mask` with 0 (dropped, probability p) or 1/(1-p) (kept), drawing in order so
    /// that a seeded run is reproducible.
    pub fn fill_mask(&mut self, mask: &mut [f32]) {
        let keep_scale = 1.0 / (1.0 - self.p);
        for m in mask.iter_mut() {
            *m = if self.rng.uniform() < self.p { 0.0 } else { keep_scale };
        }
    }

    /// Forward: draws a fresh `mask` [N] and applies it, `x ← x ⊙ mask`.
    pub fn forward(&mut self, x: &mut [f32], mask: &mut [f32]) {
        self.fill_mask(mask);
        x.iter_mut().zip(mask.iter()).for_each(|(v, &m)| *v *= m);
    }
}

/// Backward of `y = x ⊙ mask`: dx = dy ⊙ mask, written into `scratch`; with no dropout (an
/// empty mask) y = x, and the gradient is `dy` itself.
pub fn dropout_backward<'a>(dy: &'a [f32], mask: &[f32], scratch: &'a mut [f32]) -> &'a [f32] {
    if mask.is_empty() {
        return dy;
    }
    scratch
        .iter_mut()
        .zip(dy.iter().zip(mask))
        .for_each(|(s, (&g, &m))| *s = g * m);
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_preserves_the_mean() {
        let mut mask = vec![0.0; 100_000];
        let mut rng = Rng::new(1);
        Dropout { p: 0.2, rng: &mut rng }.fill_mask(&mut mask);
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f32 / mask.len() as f32;
        let mean = mask.iter().sum::<f32>() / mask.len() as f32;
        assert!(
            (kept - 0.8).abs() < 0.01 && (mean - 1.0).abs() < 0.01,
            "kept {kept} mean {mean}"
        );
    }

    #[test]
    fn backward_multiplies_by_the_forward_mask() {
        let mut rng = Rng::new(3);
        let (mut x, mut mask) = (vec![1.0f32; 64], vec![0.0; 64]);
        Dropout { p: 0.5, rng: &mut rng }.forward(&mut x, &mut mask);
        let mut scratch = vec![0.0; 64];
        let dx = dropout_backward(&[2.0; 64], &mask, &mut scratch);
        for ((&dx, &y), &m) in dx.iter().zip(&x).zip(&mask) {
            assert_eq!((dx, y), (2.0 * m, m));
        }
        assert_eq!(dropout_backward(&[2.0; 4], &[], &mut []), &[2.0; 4]);
    }
}
