//! The parameter statistics log `param_stats.jsonl`: one line per evaluation with, for every
//! parameter tensor, the norm, mean and standard deviation of its weights and of the change the
//! last AdamW update made to them, and their ratio (the "update:data ratio").
//!
//! ```text
//! {"step":500,"tensors":[{"name":"wte.weight",
//!   "param":{"norm":11.3,"mean":-0.0012,"std":0.089},
//!   "update":{"norm":0.011,"mean":1.1e-6,"std":8.6e-5},"update_ratio":0.00097}, ...]}
//! ```
//!
//! The trainer measures and writes them; `inspect evolution` reads them. Inspect's trace also
//! takes the [`Moments`] of activations.

use super::jsonl::{null_as_nan, LogRecord};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_of_known_values() {
        let m = Moments::of(vec![1.0f32, -1.0, 3.0, 1.0].into_par_iter());
        assert_eq!((m.norm, m.mean), (12f32.sqrt(), 1.0));
        assert!((m.std - 2f32.sqrt()).abs() < 1e-6, "{}", m.std);
    }

    #[test]
    fn a_diverged_tensor_is_logged_and_read_back_as_nan() {
        let record = ParamStatsRecord {
            step: 3,
            tensors: vec![TensorStats {
                name: "w".into(),
                param: Moments::of(vec![f32::NAN, 1.0].into_par_iter()),
                update: None,
                update_ratio: None,
            }],
        };
        let line = serde_json::to_string(&record).unwrap();
        let read: ParamStatsRecord = serde_json::from_str(&line).unwrap();
        assert!(read.tensors[0].param.norm.is_nan() && read.tensors[0].param.std.is_nan());
    }
}
