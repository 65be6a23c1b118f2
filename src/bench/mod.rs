//! Throughput measurements: the training step and the forward pass on random tokens, and
//! generation (prefill time, decode tokens/s); medians over rounds ([`rounds`]) and the
//! comparison with the PyTorch peer ([`pytorch`]).
//! (Benchmarks print numbers; tests never assert on time.)

pub mod pytorch;
pub mod rounds;

pub use pytorch::{GenerateSummary, PytorchResult};
pub use rounds::{summarize_rounds, Comparison, Round, RoundsSummary};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generator, Sampling};
use crate::model::data_parallel::auto_shards;
use crate::model::{num_params, param_specs, DataParallel, Gpt};
use crate::ops::lowp::WeightDtype;
use crate::ops::matmul::Precision;
use crate::ops::{set_zero, sum_streams};
use crate::optim::{clip_factor, AdamW, AdamWConfig};
use crate::rng::Rng;
use rayon::prelude::*;
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
    /// Batch shards run side by side (see [`crate::model::data_parallel`]).
    pub shards: usize,
    /// The matrix products' precision (f32 where bf16 was asked for on a CPU without it).
    pub precision: Precision,
}

/// Which work one benchmark step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKind {
    /// forward + loss + backward + gradient clipping + AdamW update
    Train,
    /// forward + loss only
    Forward,
}

/// Runs `warmup` untimed and `steps` timed steps of `kind` on random tokens, the matrix
/// products in `precision` (as this CPU allows: [`Precision::on_this_cpu`]).
#[allow(clippy::too_many_arguments)]
pub fn bench_steps(
    config: Config,
    kind: BenchKind,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    precision: Precision,
) -> Result<BenchResult> {
    let precision = precision.on_this_cpu().0;
    let mut model = Gpt::new(config, 1337)?;
    let mut grads = model.new_gradients();
    let mut rng = Rng::new(42);
    let v = model.config.vocab_size;
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let mut optimizer = AdamW::new(AdamWConfig::default(), &param_specs(&model.config));
    // As `gpt2 train` does: small models run one batch shard per thread.
    let mut parallel = DataParallel::new(&model, auto_shards(model.params.len(), b), precision)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps.max(1) {
        let start = Instant::now();
        match kind {
            BenchKind::Train => {
                set_zero(&mut grads);
                parallel.forward_backward(&model, &mut grads, &tokens, b, t, &targets, None, 1.0)?;
                let scale = clip_factor(optimizer.grad_norm(&grads), 1.0);
                optimizer.step(&mut model.params, &grads, scale, 1e-4);
            }
            BenchKind::Forward => {
                parallel.loss(&model, &tokens, b, t, &targets)?;
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
        shards: parallel.shards(),
        precision,
    })
}

/// What the generation benchmark measured (medians over the timed runs).
#[derive(Debug, Clone, Serialize)]
pub struct GenerateBenchResult {
    /// Decode speed: new tokens per second after the prefill, batch 1.
    pub tokens_per_s: f64,
    /// Time to prefill the prompt (its last position's logits included), in milliseconds.
    pub prefill_ms: f64,
    /// Peak resident memory of the process so far, in MiB.
    pub peak_rss_mb: f64,
    /// Memory read bandwidth, GB/s: the median speed at which all threads sum the weights,
    /// measured just before each timed run (the host's bandwidth varies with its neighbours).
    pub read_gb_per_s: f64,
    /// The decode speed if a token cost only reading every weight once at that bandwidth
    /// (all but the position table: `read_gb_per_s / weight bytes`).
    pub bandwidth_bound_tokens_per_s: f64,
    /// `tokens_per_s / bandwidth_bound_tokens_per_s`.
    pub share_of_bound: f64,
    pub runs: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub params: usize,
    /// How the weight matrices were stored (f32, bf16, q8_0).
    pub dtype: &'static str,
    pub threads: usize,
}

/// Greedy generation of `new_tokens` after a random prompt of `prompt_tokens`, batch 1:
/// `warmup` untimed runs, then `runs` timed ones. A run's decode speed is (new_tokens - 1) /
/// the time after the prefill (the prefill's logits give the first new token), as
/// scripts/bench_pytorch.py measures Hugging Face `generate()`.
pub fn bench_generate(
    config: Config,
    dtype: WeightDtype,
    prompt_tokens: usize,
    new_tokens: usize,
    runs: usize,
    warmup: usize,
) -> Result<GenerateBenchResult> {
    if prompt_tokens == 0 || new_tokens < 2 || prompt_tokens.saturating_add(new_tokens) > config.n_positions {
        return Err(Error::Input(format!(
            "need prompt tokens >= 1, new tokens >= 2 and both together <= {} positions",
            config.n_positions
        )));
    }
    let model = Gpt::new(config, 1337)?.to_dtype(dtype)?;
    let mut rng = Rng::new(42);
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|_| rng.below(model.config.vocab_size) as u32)
        .collect();
    let options = GenerateOptions {
        max_new_tokens: new_tokens,
        sampling: Sampling::greedy(),
        ..Default::default()
    };
    let (mut prefill_ms, mut token_ms, mut read_gb_per_s) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + runs.max(1) {
        if i >= warmup {
            read_gb_per_s.push(read_bandwidth_gb_per_s(&weight_words(&model)));
        }
        let start = Instant::now();
        let mut generator = Generator::new(&model, &prompt, options.clone(), &mut rng)?;
        let prefilled = Instant::now();
        for token in generator.by_ref() {
            token?;
        }
        if i >= warmup {
            prefill_ms.push((prefilled - start).as_secs_f64() * 1e3);
            token_ms.push(prefilled.elapsed().as_secs_f64() * 1e3 / (new_tokens - 1) as f64);
        }
    }
    let tokens_per_s = 1e3 / median(&mut token_ms);
    let read_gb_per_s = median(&mut read_gb_per_s);
    let weight_bytes = model.weight_bytes() - 4 * model.config.n_positions * model.config.n_embd;
    let bandwidth_bound_tokens_per_s = read_gb_per_s * 1e9 / weight_bytes as f64;
    Ok(GenerateBenchResult {
        tokens_per_s,
        prefill_ms: median(&mut prefill_ms),
        peak_rss_mb: peak_rss_mb(),
        read_gb_per_s,
        bandwidth_bound_tokens_per_s,
        share_of_bound: tokens_per_s / bandwidth_bound_tokens_per_s,
        runs: token_ms.len(),
        prompt_tokens,
        new_tokens,
        params: num_params(&model.config),
        dtype: dtype.name(),
        threads: rayon::current_num_threads(),
    })
}

/// What decoding reads, as f32 words: the f32 buffer, and the bytes of the low-precision
/// matrices (read as f32 only to time the memory).
fn weight_words(model: &Gpt) -> Vec<&[f32]> {
    let mut parts = vec![model.params.as_slice()];
    for bytes in model.lowp.iter().flat_map(|lowp| lowp.stored()) {
        // SAFETY: every bit pattern is an f32; align_to leaves unaligned ends out.
        let (_, words, _) = unsafe { bytes.align_to::<f32>() };
        parts.push(words);
    }
    parts
}

/// GB/s at which the threads of the pool read the `parts` once, each its share of each part as
/// several sequential streams (as the decoding kernels of [`crate::ops::matvec`] do): the
/// ceiling of a product that reads every weight once.
fn read_bandwidth_gb_per_s(parts: &[&[f32]]) -> f64 {
    let start = Instant::now();
    let mut bytes = 0;
    for data in parts.iter().filter(|data| !data.is_empty()) {
        let share = data.len().div_ceil(rayon::current_num_threads());
        let total: f32 = data
            .par_chunks(share)
            .map(|chunk| sum_streams::<f32, 16>(chunk, |x| x))
            .sum();
        std::hint::black_box(total);
        bytes += std::mem::size_of_val(*data);
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_benchmark_relates_decode_speed_to_the_bandwidth_bound() {
        let config = Config::new(97, 32, 48, 2, 4);
        let weight_bytes = 4 * (crate::model::num_params(&config) - 32 * 48);
        let r = bench_generate(config, WeightDtype::F32, 4, 8, 3, 1).unwrap();
        assert_eq!((r.runs, r.prompt_tokens, r.new_tokens), (3, 4, 8));
        assert!(r.tokens_per_s > 0.0 && r.read_gb_per_s > 0.0);
        let bound = r.read_gb_per_s * 1e9 / weight_bytes as f64;
        assert!((r.bandwidth_bound_tokens_per_s / bound - 1.0).abs() < 1e-9);
        assert!((r.share_of_bound - r.tokens_per_s / bound).abs() < 1e-9 * r.share_of_bound);
        let too_long = bench_generate(Config::new(97, 32, 48, 2, 4), WeightDtype::F32, 30, 8, 1, 0);
        assert!(matches!(too_long, Err(Error::Input(_))));
    }
}
