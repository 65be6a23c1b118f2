//! AdamW with PyTorch's semantics, and global gradient-norm clipping.

use crate::model::params::TensorSpec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// AdamW hyper-parameters (PyTorch's names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// nanoGPT's defaults.
    fn default() -> Self {
        AdamWConfig {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

const CHUNK: usize = 8192;

/// AdamW state: the two moments in the parameter layout, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    /// First moment m, same layout as the parameters.
    pub m: Vec<f32>,
    /// Second moment v, same layout as the parameters.
    pub v: Vec<f32>,
    /// Number of updates done so far (t in the bias corrections).
    pub t: u64,
    /// Each tensor's range in the flat buffer, and whether weight decay applies to it:
    /// matrices and embeddings (2-D) decay; biases and LayerNorm parameters (1-D) do not.
    tensors: Vec<(Range<usize>, bool)>,
    /// Per-chunk partial sums of squares for the gradient norm (kept to avoid allocating).
    norm_partials: Vec<f64>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, specs: &[TensorSpec]) -> Self {
        let mut offset = 0;
        let tensors = specs
            .iter()
            .map(|s| {
                let range = offset..offset + s.numel();
                offset = range.end;
                (range, s.shape.len() >= 2)
            })
            .collect();
        AdamW {
            config,
            m: vec![0.0; offset],
            v: vec![0.0; offset],
            t: 0,
            tensors,
            norm_partials: Vec::new(),
        }
    }

    /// One update at learning rate `lr` (the schedule's value for this step), in the order
    /// `torch.optim.AdamW` does it, with t the 1-based step:
    /// `p ← p·(1 - lr·wd)` (decoupled decay, 2-D tensors only),
    /// `m ← m + (g - m)(1-β1)`, `v ← β2 v + (1-β2) g²`,
    /// `p ← p - (lr / (1-β1ᵗ)) · m / (sqrt(v) / sqrt(1-β2ᵗ) + eps)`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let c = self.config;
        let bias1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bias1) as f32;
        let bias2_sqrt = (1.0 - (c.beta2 as f64).powi(self.t as i32)).sqrt() as f32;
        for (range, decays) in &self.tensors {
            let decay_factor = if *decays { 1.0 - lr * c.weight_decay } else { 1.0 };
            params[range.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[range.clone()].par_chunks(CHUNK))
                .zip(
                    self.m[range.clone()]
                        .par_chunks_mut(CHUNK)
                        .zip(self.v[range.clone()].par_chunks_mut(CHUNK)),
                )
                .for_each(|((p, g), (m, v))| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        *p *= decay_factor;
                        *m += (g - *m) * (1.0 - c.beta1);
                        *v = *v * c.beta2 + (1.0 - c.beta2) * g * g;
                        *p -= step_size * *m / (v.sqrt() / bias2_sqrt + c.eps);
                    }
                });
        }
    }

    /// The global L2 norm of the gradient; if it exceeds `max_norm`, scales the gradient by
    /// `max_norm / (norm + 1e-6)` as `torch.nn.utils.clip_grad_norm_` does. Returns the norm
    /// before clipping. Partial sums are added in a fixed order: reproducible bit for bit.
    pub fn clip_grad_norm(&mut self, grads: &mut [f32], max_norm: f32) -> f32 {
        grads
            .par_chunks(CHUNK)
            .map(|g| g.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
            .collect_into_vec(&mut self.norm_partials);
        let norm = self.norm_partials.iter().sum::<f64>().sqrt() as f32;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            grads
                .par_chunks_mut(CHUNK)
                .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr_and_decays_only_matrices() {
        let specs = [
            TensorSpec {
                name: "w".into(),
                shape: vec![2, 2],
            },
            TensorSpec {
                name: "b".into(),
                shape: vec![2],
            },
        ];
        let config = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 0.0,
            weight_decay: 0.5,
        };
        let mut opt = AdamW::new(config, &specs);
        let mut params = vec![1.0; 6];
        let grads = [2.0, -3.0, 0.5, 1.0, 4.0, -1.0];
        opt.step(&mut params, &grads, 0.1);
        // After one step m̂ = g and v̂ = g², so each weight moves by lr·sign(g); decay 1 - 0.05.
        for (i, (&p, &g)) in params.iter().zip(&grads).enumerate() {
            let decayed = if i < 4 { 0.95 } else { 1.0 };
            assert!((p - (decayed - 0.1 * g.signum())).abs() < 1e-6, "param {i}: {p}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            &[TensorSpec {
                name: "w".into(),
                shape: vec![2],
            }],
        );
        let mut g = vec![3.0, 4.0];
        assert_eq!(opt.clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.3, 0.4];
        opt.clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
