//! Throughput measurements: the training step and the forward pass on random tokens.
//! (Benchmarks print numbers; tests never assert on time.)

use crate::config::Config;
use crate::error::Result;
use crate::model::{param_specs, Gpt};
use crate::ops::adamw::{AdamW, AdamWConfig};
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

/// What a benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Median wall time of one timed step, in milliseconds.
    pub step_ms_median: f64,
    /// Tokens per second at the median step time (B·T / step time).
    pub tokens_per_s: f64,
    /// Peak resident memory of the process so far, in MiB.
    pub peak_rss_mb: f64,
    pub steps: usize,
    pub batch_size: usize,
    pub block_size: usize,
    pub params: usize,
    pub threads: usize,
}

/// Which work one benchmark step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKind {
    /// forward + loss + backward + gradient clipping + AdamW update
    Train,
    /// forward + loss only
    Forward,
}

/// Runs `warmup` untimed and `steps` timed steps of `kind` on random tokens.
pub fn bench_steps(
    config: Config,
    kind: BenchKind,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
) -> Result<BenchResult> {
    let mut model = Gpt::new(config, 1337)?;
    let mut rng = Rng::new(42);
    let v = model.config.vocab_size;
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let mut optimizer = AdamW::new(AdamWConfig::default(), &param_specs(&model.config));
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps.max(1) {
        let start = Instant::now();
        match kind {
            BenchKind::Train => {
                model.zero_grad();
                model.forward(&tokens, b, t, Some(&targets), None)?;
                model.backward(1.0)?;
                optimizer.clip_grad_norm(&mut model.grads, 1.0);
                optimizer.step(&mut model.params, &model.grads, 1e-4);
            }
            BenchKind::Forward => {
                model.forward(&tokens, b, t, Some(&targets), None)?;
            }
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let step_ms_median = median(&mut times);
    Ok(BenchResult {
        step_ms_median,
        tokens_per_s: (b * t) as f64 / (step_ms_median / 1e3),
        peak_rss_mb: peak_rss_mb(),
        steps: times.len(),
        batch_size: b,
        block_size: t,
        params: model.params.len(),
        threads: rayon::current_num_threads(),
    })
}

/// Median of a non-empty list (sorts it).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (Linux: VmHWM; 0 where unknown).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
