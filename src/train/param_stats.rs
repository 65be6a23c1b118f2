//! The parameter statistics log `param_stats.jsonl`: one line per evaluation with, for every
//! parameter tensor, the norm, mean and standard deviation of its weights and of the change the
//! last AdamW update made to them, and their ratio (the "update:data ratio").
//!
//! ```text
//! {"step":500,"tensors":[{"name":"wte.weight",
//!   "param":{"norm":11.3,"mean":-0.0012,"std":0.089},
//!   "update":{"norm":0.011,"mean":1.1e-6,"std":8.6e-5},"update_ratio":0.00097}, ...]}
//! ```

use super::jsonl::{null_as_nan, LogRecord};
use crate::model::params::TensorSpec;
use crate::optim::AdamW;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The log's file name in the run directory.
pub const FILE: &str = "param_stats.jsonl";

/// Values summed per chunk, in parallel; the chunks' sums are added in order, so the result
/// does not depend on the number of threads.
const CHUNK: usize = 1 << 16;

/// Norm, mean and standard deviation of a tensor's values `x_1..x_n`:
/// `norm = sqrt(Σ x²)`, `mean = Σ x / n`, `std = sqrt(Σ x² / n - mean²)` (the population std).
/// A diverged tensor's NaN or infinity is written as JSON `null` and read back as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    #[serde(deserialize_with = "null_as_nan")]
    pub norm: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub mean: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub std: f32,
}

impl Moments {
    /// The moments of `values` (sums in f64).
    pub fn of(values: impl IndexedParallelIterator<Item = f32>) -> Moments {
        let n = values.len() as f64;
        let partial_sums: Vec<(f64, f64)> = values
            .fold_chunks(
                CHUNK,
                || (0.0, 0.0),
                |(sum, sum_sq), x| (sum + x as f64, sum_sq + x as f64 * x as f64),
            )
            .collect();
        let (sum, sum_sq) = partial_sums
            .iter()
            .fold((0.0, 0.0), |(a, b), (sum, sum_sq)| (a + sum, b + sum_sq));
        let mean = sum / n;
        let variance = sum_sq / n - mean * mean; // may round below 0; NaN stays NaN
        Moments {
            norm: sum_sq.sqrt() as f32,
            mean: mean as f32,
            std: if variance < 0.0 { 0.0 } else { variance.sqrt() as f32 },
        }
    }
}

/// The statistics of one parameter tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    /// The Hugging Face name (`h.0.attn.c_attn.weight`).
    pub name: String,
    /// The weights `p`.
    pub param: Moments,
    /// The change `p_t - p_(t-1)` that the last AdamW update made (weight decay included);
    /// null before the first update.
    pub update: Option<Moments>,
    /// `update.std / param.std`: Karpathy's update:data ratio (his `(lr·grad).std() /
    /// param.std()`, with the actual AdamW update for lr·grad). Around 1e-3 is the usual
    /// healthy value; much less means the tensor barely learns, much more that it churns.
    /// Null without an update, or when the weights are all equal (std 0).
    pub update_ratio: Option<f32>,
}

/// One line of the log: the statistics after `step` updates, in the order of
/// [`crate::model::params::param_specs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamStatsRecord {
    pub step: usize,
    pub tensors: Vec<TensorStats>,
}

impl LogRecord for ParamStatsRecord {
    const WHAT: &'static str = "parameter statistics record";

    fn step(&self) -> usize {
        self.step
    }
}

/// The statistics of `params` (laid out by `specs`) after `step` updates. `last_update` is the
/// optimizer and the learning rate of its last update (None before the first): the update is
/// recomputed from the optimizer's moments ([`crate::optim::StepScalars::change`]), one
/// pass at evaluation time and no copy of the weights at every step.
pub fn measure(
    step: usize,
    specs: &[TensorSpec],
    params: &[f32],
    last_update: Option<(&AdamW, f32)>,
) -> ParamStatsRecord {
    let mut last_steps = last_update.and_then(|(optimizer, lr)| Some((optimizer, optimizer.last_step(lr)?)));
    let mut offset = 0;
    let tensors = specs
        .iter()
        .map(|spec| {
            let range = offset..offset + spec.numel();
            offset = range.end;
            let param = Moments::of(params[range.clone()].par_iter().copied());
            let update = last_steps.as_mut().map(|(optimizer, steps)| {
                let (tensor_range, step) = steps.next().expect("the optimizer has every tensor");
                debug_assert_eq!(tensor_range, range, "the optimizer follows the same layout");
                let (p, m, v) = (
                    &params[range.clone()],
                    &optimizer.m[range.clone()],
                    &optimizer.v[range.clone()],
                );
                Moments::of(
                    p.par_iter()
                        .zip(m.par_iter())
                        .zip(v.par_iter())
                        .map(|((&p, &m), &v)| step.change(p, m, v)),
                )
            });
            TensorStats {
                name: spec.name.clone(),
                param,
                update_ratio: update.filter(|_| param.std > 0.0).map(|u| u.std / param.std),
                update,
            }
        })
        .collect();
    ParamStatsRecord { step, tensors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;

    #[test]
    fn moments_and_the_update_ratio_of_known_tensors() {
        let m = Moments::of(vec![1.0f32, -1.0, 3.0, 1.0].into_par_iter());
        assert_eq!((m.norm, m.mean), (12f32.sqrt(), 1.0));
        assert!((m.std - 2f32.sqrt()).abs() < 1e-6, "{}", m.std);

        let specs = [
            TensorSpec {
                name: "w".into(),
                shape: vec![2, 2],
            },
            TensorSpec {
                name: "ln.weight".into(),
                shape: vec![2],
            },
        ];
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut optimizer = AdamW::new(config, &specs);
        let mut params = vec![1.0, -1.0, 2.0, 0.0, 1.0, 1.0];
        let first = measure(0, &specs, &params, None);
        assert!(first
            .tensors
            .iter()
            .all(|t| t.update.is_none() && t.update_ratio.is_none()));
        // After the first step every weight moves by lr against its gradient's sign.
        optimizer.step(&mut params, &[1.0, -1.0, 1.0, -1.0, 1.0, -1.0], 1.0, 0.1);
        let stats = measure(1, &specs, &params, Some((&optimizer, 0.1)));
        let w = &stats.tensors[0];
        let update = w.update.unwrap();
        assert!((update.norm - 0.2).abs() < 1e-6 && update.mean.abs() < 1e-7 && (update.std - 0.1).abs() < 1e-6);
        assert!((w.update_ratio.unwrap() - update.std / w.param.std).abs() < 1e-7);
        let ln = &stats.tensors[1];
        assert_eq!(ln.name, "ln.weight");
        assert!(ln.param.std > 0.0 && ln.update_ratio.is_some());
    }

    #[test]
    fn a_diverged_tensor_is_logged_and_read_back_as_nan() {
        let specs = [TensorSpec {
            name: "w".into(),
            shape: vec![2],
        }];
        let record = measure(3, &specs, &[f32::NAN, 1.0], None);
        let line = serde_json::to_string(&record).unwrap();
        let read: ParamStatsRecord = serde_json::from_str(&line).unwrap();
        assert!(read.tensors[0].param.norm.is_nan() && read.tensors[0].param.std.is_nan());
    }
}
