//! Measures the per-tensor statistics that a run logs in `param_stats.jsonl`
//! ([`crate::runlog::param_stats`]): of the weights, and of the last AdamW update, which is
//! recomputed from the optimizer's moments.

use crate::model::params::TensorSpec;
use crate::optim::AdamW;
use crate::runlog::param_stats::{Moments, ParamStatsRecord, TensorStats};
use rayon::prelude::*;

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
    fn the_update_and_its_ratio_of_known_tensors() {
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
}
