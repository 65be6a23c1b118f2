//! AdamW with PyTorch's semantics: decoupled weight decay on the 2-D tensors only (the decay
//! groups), and global gradient-norm clipping. An optimizer may own only some ranges of the
//! parameters (ZeRO-1: each of N ranks keeps the moments of, and updates, its 1/N).

use crate::model::params::TensorSpec;
use crate::ops::{sum_squares_f64, zeroed};
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

/// The scalars of one AdamW update of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// `1 - lr·wd` for a tensor that decays, else 1.
    pub decay: f32,
    /// `lr / (1-β1ᵗ)`
    pub step_size: f32,
    /// `sqrt(1-β2ᵗ)`
    pub bias2_sqrt: f32,
    pub eps: f32,
}

impl StepScalars {
    /// The Adam part of the update, from the updated moments:
    /// `u = step_size · m / (sqrt(v) / bias2_sqrt + eps)`; the update is `p ← p·decay - u`.
    #[inline]
    pub fn adam(&self, m: f32, v: f32) -> f32 {
        self.step_size * m / (v.sqrt() / self.bias2_sqrt + self.eps)
    }

    /// The change `p - p_before` that the update made to a weight that is now `p`: from
    /// `p = p_before·decay - u`, it is `-(u + (1 - decay)·p) / decay`. Exact up to rounding, and
    /// it needs no copy of the weights from before the update.
    #[inline]
    pub fn change(&self, p: f32, m: f32, v: f32) -> f32 {
        -(self.adam(m, v) + (1.0 - self.decay) * p) / self.decay
    }
}

/// AdamW state: the two moments of the parameters it owns, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    /// First moment m of the owned ranges, one after another (all parameters: their layout).
    pub m: Vec<f32>,
    /// Second moment v, laid out as m.
    pub v: Vec<f32>,
    /// Number of updates done so far (t in the bias corrections).
    pub t: u64,
    /// Each tensor's range in the flat buffer, and whether weight decay applies to it:
    /// matrices and embeddings (2-D) decay; biases and LayerNorm parameters (1-D) do not.
    tensors: Vec<(Range<usize>, bool)>,
    /// The owned parts of the tensors: (range in the parameters, offset in m and v, decays).
    segments: Vec<(Range<usize>, usize, bool)>,
    /// Per-chunk partial sums of squares for the gradient norm (kept to avoid allocating).
    norm_partials: Vec<f64>,
}

impl AdamW {
    /// An optimizer of all the parameters laid out by `specs`.
    pub fn new(config: AdamWConfig, specs: &[TensorSpec]) -> Self {
        let total = specs.iter().map(TensorSpec::numel).sum();
        Self::shard(config, specs, std::slice::from_ref(&(0..total)))
    }

    /// An optimizer of the `owned` ranges of the parameters only: its moments are those ranges'
    /// one after another, and [`AdamW::step`] updates those ranges alone.
    pub fn shard(config: AdamWConfig, specs: &[TensorSpec], owned: &[Range<usize>]) -> Self {
        let mut offset = 0;
        let tensors: Vec<(Range<usize>, bool)> = specs
            .iter()
            .map(|s| {
                let range = offset..offset + s.numel();
                offset = range.end;
                (range, s.shape.len() >= 2)
            })
            .collect();
        let mut segments = Vec::new();
        let mut len = 0;
        for owned in owned {
            for (range, decays) in &tensors {
                let part = range.start.max(owned.start)..range.end.min(owned.end);
                if part.start < part.end {
                    segments.push((part.clone(), len + part.start - owned.start, *decays));
                }
            }
            len += owned.len();
        }
        AdamW {
            config,
            m: zeroed(len),
            v: zeroed(len),
            t: 0,
            tensors,
            segments,
            norm_partials: Vec::new(),
        }
    }

    /// One update at learning rate `lr` (the schedule's value for this step), in the order
    /// `torch.optim.AdamW` does it, with t the 1-based step and g = grads · `grad_scale` (the
    /// clipping factor of [`clip_factor`], applied here rather than in a pass of its own; the
    /// same f32 product, so the same result):
    /// `p ← p·(1 - lr·wd)` (decoupled decay, 2-D tensors only),
    /// `m ← m + (g - m)(1-β1)`, `v ← β2 v + (1-β2) g²`,
    /// `p ← p - (lr / (1-β1ᵗ)) · m / (sqrt(v) / sqrt(1-β2ᵗ) + eps)`.
    /// `grads` is laid out as the moments: the owned ranges' gradients one after another.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], grad_scale: f32, lr: f32) {
        self.t += 1;
        let (beta1, beta2) = (self.config.beta1, self.config.beta2);
        for (range, offset, decays) in &self.segments {
            let step = self.scalars(lr, *decays);
            let own = *offset..offset + range.len();
            params[range.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[own.clone()].par_chunks(CHUNK))
                .zip(
                    self.m[own.clone()]
                        .par_chunks_mut(CHUNK)
                        .zip(self.v[own].par_chunks_mut(CHUNK)),
                )
                .for_each(|((p, g), (m, v))| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let g = g * grad_scale;
                        *m += (g - *m) * (1.0 - beta1);
                        *v = *v * beta2 + (1.0 - beta2) * g * g;
                        *p = *p * step.decay - step.adam(*m, *v);
                    }
                });
        }
    }

    /// The scalars of update number `self.t` at learning rate `lr`, for a tensor that `decays` or not.
    fn scalars(&self, lr: f32, decays: bool) -> StepScalars {
        let c = self.config;
        StepScalars {
            decay: if decays { 1.0 - lr * c.weight_decay } else { 1.0 },
            step_size: (lr as f64 / (1.0 - (c.beta1 as f64).powi(self.t as i32))) as f32,
            bias2_sqrt: (1.0 - (c.beta2 as f64).powi(self.t as i32)).sqrt() as f32,
            eps: c.eps,
        }
    }

    /// For each tensor, its range in the flat buffer and the scalars of the last update, which
    /// was made at learning rate `lr`: with the moments `m`, `v` they give the change that
    /// update made to each weight ([`StepScalars::change`]). None before the first update.
    /// Only for an optimizer of all the parameters (the moments in their layout).
    pub fn last_step(&self, lr: f32) -> Option<impl Iterator<Item = (Range<usize>, StepScalars)> + '_> {
        (self.t > 0).then(|| {
            self.tensors
                .iter()
                .map(move |(range, decays)| (range.clone(), self.scalars(lr, *decays)))
        })
    }

    /// The global L2 norm of the gradient. Partial sums are added in a fixed order:
    /// reproducible bit for bit.
    pub fn grad_norm(&mut self, grads: &[f32]) -> f32 {
        grads
            .par_chunks(CHUNK)
            .map(sum_squares_f64)
            .collect_into_vec(&mut self.norm_partials);
        self.norm_partials.iter().sum::<f64>().sqrt() as f32
    }
}

/// Global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_` does it: the gradient is
/// scaled by `max_norm / (norm + 1e-6)` when that is below 1, else left alone (factor 1).
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        coef
    } else {
        1.0
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
        opt.step(&mut params, &grads, 1.0, 0.1);
        // After one step m̂ = g and v̂ = g², so each weight moves by lr·sign(g); decay 1 - 0.05.
        for (i, (&p, &g)) in params.iter().zip(&grads).enumerate() {
            let decayed = if i < 4 { 0.95 } else { 1.0 };
            assert!((p - (decayed - 0.1 * g.signum())).abs() < 1e-6, "param {i}: {p}");
        }
    }

    #[test]
    fn the_last_steps_change_is_recovered_from_the_moments() {
        let specs = [
            TensorSpec {
                name: "w".into(),
                shape: vec![2, 3],
            },
            TensorSpec {
                name: "b".into(),
                shape: vec![3],
            },
        ];
        let mut opt = AdamW::new(AdamWConfig::default(), &specs);
        assert!(opt.last_step(1e-2).is_none(), "no update yet");
        let mut params: Vec<f32> = (0..9).map(|i| 0.3 * i as f32 - 1.0).collect();
        for (t, lr) in [(1, 1e-2), (2, 3e-3), (3, 5e-2)] {
            let grads: Vec<f32> = (0..9).map(|i| ((i * 7 + t) % 5) as f32 - 2.0).collect();
            let before = params.clone();
            opt.step(&mut params, &grads, 1.0, lr);
            for (range, step) in opt.last_step(lr).unwrap() {
                for i in range {
                    let change = step.change(params[i], opt.m[i], opt.v[i]);
                    let actual = params[i] - before[i];
                    assert!(
                        (change - actual).abs() < 1e-6,
                        "step {t}, weight {i}: {change} vs {actual}"
                    );
                }
            }
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
        assert_eq!(opt.grad_norm(&[3.0, 4.0]), 5.0);
        assert!((clip_factor(5.0, 1.0) - 0.2).abs() < 1e-7);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(5.0, f32::INFINITY), 1.0);
    }

    #[test]
    fn shards_of_the_parameters_update_as_the_whole_does() {
        let specs = [
            TensorSpec {
                name: "w".into(),
                shape: vec![3, 3],
            },
            TensorSpec {
                name: "b".into(),
                shape: vec![3],
            },
        ];
        let mut whole = AdamW::new(AdamWConfig::default(), &specs);
        // Two shards whose ranges cut through both tensors, out of order.
        let owned = [vec![7..11, 0..2], vec![2..7, 11..12]];
        let mut shards = owned
            .clone()
            .map(|ranges| AdamW::shard(AdamWConfig::default(), &specs, &ranges));
        let mut params: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.5).collect();
        let mut sharded = params.clone();
        for t in 0..3 {
            let grads: Vec<f32> = (0..12).map(|i| ((i * 5 + t) % 7) as f32 - 3.0).collect();
            whole.step(&mut params, &grads, 0.5, 1e-2);
            for (shard, ranges) in shards.iter_mut().zip(&owned) {
                let own: Vec<f32> = ranges.iter().flat_map(|r| grads[r.clone()].to_vec()).collect();
                shard.step(&mut sharded, &own, 0.5, 1e-2);
            }
            assert_eq!(params, sharded, "step {t}");
        }
    }
}
